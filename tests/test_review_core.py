"""Adversarial review of the core (docs/internals.md, "Failure classes"), on every backend.

Each test here is a claim of docs/internals.md that an adversarial review of the first
v2 core found broken (all fixed since); its docstring names the claim and the state that
was lost.

Interrupts are placed where CPython really runs a Python signal handler: right after a
call of a C function returns (the interpreter checks for pending signals there, so a
handler that raises ``KeyboardInterrupt`` makes the exception appear at that point of
the caller). :class:`SignalAt` raises ``KeyboardInterrupt`` at the *n*-th such point of
the given functions; each test sweeps *n* over every point, so it covers "between any
two bytecodes where a signal can land" (docs/internals.md#signals-between-bytecodes).
"""

from __future__ import annotations

import dis
import inspect
import itertools
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterable
from types import CodeType, FrameType, TracebackType
from typing import Any

import pytest

import danga
from danga import READ
from danga._registry import Registry
from danga._waker import Waker
from danga.loop import Loop
from danga.testing import run_until
from danga_helpers import Recorder, nb_pair

_CALL_OPS = {"CALL", "CALL_KW", "CALL_FUNCTION_EX", "CALL_FUNCTION", "CALL_METHOD"}

# The compiled core (docs/internals.md#compiled-core) has no bytecode to interrupt and no
# frames to trace: there a pending signal handler runs only where the compiled code calls
# Python code, a subset of the points these tests sweep on the pure core, which CI runs
# as well (DANGA_PURE=1).
needs_bytecode = pytest.mark.skipif(
    not inspect.isfunction(Registry.flush),
    reason="the compiled core has no bytecode to interrupt; the pure run (DANGA_PURE=1) "
           "sweeps these points")


class SignalAt:
    """Raise KeyboardInterrupt at the *n*-th point, in frames of *functions*, where a
    C call has just returned (where CPython runs pending signal handlers). ``fired``
    says whether there was an *n*-th point."""

    def __init__(self, functions: Iterable[Callable[..., Any]], n: int) -> None:
        self.codes: dict[CodeType, set[int]] = {}
        for fn in functions:
            assert inspect.isfunction(fn), f"{fn!r} has no bytecode to interrupt"
            code = fn.__code__
            self.codes[code] = {i.offset for i in dis.get_instructions(code)
                                if i.opname in _CALL_OPS}
        self.n = n
        self.seen = 0
        self.fired = False
        self.py_calls = 0  # Python frames entered: a Python callee is not a C call
        self.last: dict[int, tuple[int, int]] = {}

    def _global(self, frame: FrameType, event: str, arg: Any) -> Any:
        self.py_calls += 1
        if frame.f_code in self.codes:
            frame.f_trace_opcodes = True
            frame.f_trace_lines = False
            return self._local
        return None

    def _local(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event != "opcode" or self.fired:
            return self._local
        key = id(frame)
        prev = self.last.get(key)
        self.last[key] = (frame.f_lasti, self.py_calls)
        if prev is not None and prev[0] in self.codes[frame.f_code] and (
                prev[1] == self.py_calls):
            self.seen += 1
            if self.seen == self.n:
                self.fired = True
                raise KeyboardInterrupt(f"signal after C call #{self.n}")
        return self._local

    def __enter__(self) -> SignalAt:
        self._previous = sys.gettrace()  # coverage's tracer, when CI measures
        sys.settrace(self._global)
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> bool:
        sys.settrace(self._previous)  # give the tracer back (else coverage stops here)
        return t is KeyboardInterrupt and self.fired


def sweep(functions: Iterable[Callable[..., Any]], limit: int = 200) -> Iterable[SignalAt]:
    """SignalAt(functions, 1), (functions, 2), ... until one has no such point."""
    functions = list(functions)
    for n in itertools.count(1):
        assert n < limit, "the sweep never ends"
        point = SignalAt(functions, n)
        yield point
        if not point.fired:
            return


def _close_all(*socks: socket.socket) -> None:
    for s in socks:
        s.close()


# -- 1. KeyboardInterrupt right after dirty.popitem() in Registry.flush ----------------


@needs_bytecode
def test_signal_anywhere_in_flush_loses_no_change(poller_cls):
    """docs/internals.md#interrupted-interest-flush: "A change leaves the pending set
    only once the backend has applied it". A signal handler raising right after
    ``dirty.popitem()`` returns (before the ``try``) drops the popped change: that
    connection's ``watch_read(True)`` never reaches the kernel and its data is never
    delivered, however often the loop runs again."""
    for point in sweep([Registry.flush]):
        lp = danga.Loop(poller_cls)
        pairs = [nb_pair() for _ in range(3)]
        try:
            objs = [Recorder(a, loop=lp) for a, _ in pairs]
            lp.run_once(0)
            for obj in objs:
                obj.on["read"] = lambda o: o.read(100)
                obj.watch_read(True)
            for _, b in pairs:
                b.send(b"x")
            with point:
                lp.run_once(0)
            try:
                run_until(lp, lambda objs=objs: all("read" in o.log for o in objs),
                          timeout=1.0)
            except AssertionError:
                pytest.fail(f"a signal after C call #{point.n} of flush() lost a watch "
                            f"change (events per connection: {[len(o.log) for o in objs]})")
        finally:
            lp.close()
            for a, b in pairs:
                _close_all(a, b)


# -- 2. KeyboardInterrupt in Waker.drain between recv() and pending = False ------------


@needs_bytecode
def test_signal_in_drain_never_loses_a_later_wakeup(poller_cls):
    """docs/internals.md#lost-wakeup: a call_soon_threadsafe() from another thread
    while the loop sleeps wakes it. A signal handler raising in ``Waker.drain()``
    after ``recv()`` consumed the byte but before ``pending = False`` leaves
    ``pending`` set with an empty pipe: every later wake() is "coalesced" into nothing
    and the loop sleeps through every change from other threads (stop() included)."""
    for point in sweep([Waker.drain]):
        lp = danga.Loop(poller_cls)
        try:
            lp.wakeup()  # one byte outstanding: the next poll drains it
            with point:
                lp.run_once(0)
            lp.run_once(0)
            assert _woken_by_a_thread(lp), (f"a signal after C call #{point.n} of drain() "
                                            "made the loop sleep through a "
                                            "call_soon_threadsafe()")
        finally:
            lp.close()


# -- 3. KeyboardInterrupt in Waker.run_calls between popleft() and the call ------------


@needs_bytecode
def test_signal_in_run_calls_loses_no_call(poller_cls):
    """docs/internals.md#signals-between-bytecodes ("the change is recorded so that the
    next run finishes or redoes it"). ``Waker.run_calls`` pops a call and then calls
    it: a signal handler raising right after ``popleft()`` returns drops that call for
    ever. When the call is a signal delivery (``SignalHandlers._deliver``), its
    ``_scheduled`` flag stays set and no signal callback of that loop ever runs again
    (test_signal_delivery_survives_an_interrupted_run_calls)."""
    for point in sweep([Waker.run_calls]):
        lp = danga.Loop(poller_cls)
        try:
            ran: list[int] = []
            for i in range(3):
                lp.call_soon_threadsafe(ran.append, i)
            with point:
                lp.run_once(0)
            for _ in range(3):
                lp.run_once(0)
            assert sorted(ran) == [0, 1, 2], (
                f"a signal after C call #{point.n} of run_calls() lost a call: {ran}")
        finally:
            lp.close()


@needs_bytecode
@pytest.mark.xdist_group("process-global")
@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="needs POSIX signals")
def test_signal_delivery_survives_an_interrupted_run_calls(poller_cls):
    """The consequence of the lost call above for signals: after one KeyboardInterrupt
    landing right after the delivery call was popped, SIGUSR1 callbacks never run
    again (``SignalHandlers._scheduled`` stays True, so the handler never queues a
    delivery again). Runs in a forked child (process-wide signal state)."""
    from danga.testing.suite import in_child

    def child() -> int:
        lp = danga.Loop(poller_cls)
        got: list[int] = []
        lp.add_signal_handler(signal.SIGUSR1, got.append, 1)
        os.kill(os.getpid(), signal.SIGUSR1)  # handler ran: a delivery is queued
        # The third C call of run_calls() is popleft(): the signal lands right after it.
        with SignalAt([Waker.run_calls], 3):
            lp.run_once(0)
        os.kill(os.getpid(), signal.SIGUSR1)
        for _ in range(5):
            lp.run_once(0)
        return len(got)

    assert in_child(child) >= 1, "SIGUSR1 was never delivered again"


@needs_bytecode
@pytest.mark.xdist_group("process-global")
@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="needs POSIX signals")
def test_signal_anywhere_in_delivery_loses_no_signal(poller_cls):
    """docs/internals.md#signals-between-bytecodes for ``SignalHandlers._deliver``: it
    clears ``_scheduled`` first, then pops each recorded signal and calls its callback.
    A KeyboardInterrupt after a ``pending.pop()`` loses that signal; one after the
    first callback leaves the other recorded signals with no delivery queued, so they
    wait for some later signal. Runs in a forked child (process-wide signal state)."""
    from danga._signals import SignalHandlers
    from danga.testing.suite import in_child

    def child() -> list[str]:
        lost = []
        for point in sweep([SignalHandlers._deliver]):
            lp = danga.Loop(poller_cls)
            got: set[int] = set()
            for sig in (signal.SIGUSR1, signal.SIGUSR2):
                lp.add_signal_handler(sig, got.add, sig)
            os.kill(os.getpid(), signal.SIGUSR1)
            os.kill(os.getpid(), signal.SIGUSR2)
            with point:
                lp.run_once(0)
            for _ in range(3):
                lp.run_once(0)
            if got != {signal.SIGUSR1, signal.SIGUSR2}:
                lost.append(f"after C call #{point.n}: delivered {sorted(got)}")
            lp.close()
        return lost

    assert in_child(child) == []


# -- 4. KeyboardInterrupt inside Socket.close() ----------------------------------------


@needs_bytecode
def test_signal_anywhere_in_close_still_closes(poller_cls):
    """docs/internals.md#signals-between-bytecodes and #deferred-close-exceptions.
    ``Socket.close()`` sets ``closed = True`` first (in ``_shut``), then unregisters and
    queues the real close (``Loop._detach``). A signal handler raising in between
    leaves an object that says it is closed (so a second close() does nothing), is
    still in ``descriptor_map`` and in the kernel for ever, and whose socket is never
    closed: the peer never sees EOF (and, once the socket object is collected, poll and
    select report a dead fd for ever)."""
    targets = [danga.Socket.close, danga.Socket._shut, Loop._detach, Registry.detach,
               Registry._unwatch]
    for point in sweep(targets):
        lp = danga.Loop(poller_cls)
        a, b = nb_pair()
        try:
            obj = Recorder(a, loop=lp)
            obj.watch_read(True)
            lp.run_once(0)
            obj._wbuf = __import__("collections").deque([b"q"])  # a queued write
            obj.write_buf_size = 1
            fd = obj.fd
            with point:
                obj.close("test")
            obj.close("again")  # a program that saw the KeyboardInterrupt retries
            for _ in range(2):
                lp.run_once(0)
            where = f"a signal after C call #{point.n} of close()"
            assert fd not in lp.descriptor_map, f"{where}: the object was never reaped"
            assert fd not in lp._registry.kernel, f"{where}: fd {fd} is still watched"
            assert a.fileno() == -1, f"{where}: the socket was never closed"
        finally:
            lp.close()
            _close_all(a, b)


# -- 5. A stranger's file registered for a dead object ---------------------------------


def _swap_in_stranger(obj: danga.Socket) -> tuple[socket.socket, socket.socket]:
    """Close obj's file behind danga's back and put a stranger's socket under its number
    (as a library closing fds and opening new ones does); returns the stranger's pair,
    with data waiting for the stranger."""
    c, d = nb_pair()
    os.dup2(c.fileno(), obj.fd)
    d.send(b"the stranger's data")
    return c, d


def test_a_change_interrupted_then_fd_reused_never_registers_the_stranger(poller_cls):
    """docs/internals.md#fd-closed-behind-dangas-back: danga never registers a number
    again on a dead object's behalf. After an interrupted flush the kernel mask is
    UNKNOWN (-1); ``want & ~UNKNOWN`` is 0, so flush() skips the identity check and
    re-registers the number, now a stranger's file: the dead object's event_read runs
    on the stranger's data (on epoll, which keeps no identity, there is no check at
    all)."""
    lp = danga.Loop(poller_cls)
    a, b = nb_pair()
    try:
        obj = Recorder(a, loop=lp)
        lp.run_once(0)
        obj.watch_read(True)
        real = lp.backend.modify

        def modify(fd: int, old: int, new: int) -> None:
            real(fd, old, new)
            raise KeyboardInterrupt  # the signal lands after the system call

        lp.backend.modify = modify  # type: ignore[method-assign]
        with pytest.raises(KeyboardInterrupt):
            lp.run_once(0)
        lp.backend.modify = real  # type: ignore[method-assign]
        c, d = _swap_in_stranger(obj)
        for _ in range(3):
            lp.run_once(0)
        assert "read" not in obj.log, "the dead object was handed the stranger's file"
        assert obj.closed
        assert d.fileno() >= 0 and os.fstat(obj.fd)  # the stranger's fd is left open
        _close_all(c, d)
    finally:
        lp.close()
        _close_all(a, b)


def test_fd_reused_before_the_first_flush_never_registers_the_stranger(poller_cls):
    """The same claim for a registration that has not reached the kernel yet (the
    kernel mask is 0, so flush() skips the identity check): a Socket made, its number
    closed and reused behind danga's back before the next iteration, is registered
    with the stranger's file and reads its data."""
    lp = danga.Loop(poller_cls)
    a, b = nb_pair()
    try:
        obj = Recorder(a, loop=lp)
        obj.watch_read(True)
        c, d = _swap_in_stranger(obj)
        for _ in range(3):
            lp.run_once(0)
        assert "read" not in obj.log, "the dead object was handed the stranger's file"
        assert obj.closed
        _close_all(c, d)
    finally:
        lp.close()
        _close_all(a, b)


@pytest.mark.xdist_group("process-global")
def test_fork_rebuild_never_registers_a_strangers_file(poller_cls):
    """docs/internals.md#fork and #fd-closed-behind-dangas-back: a forked child that
    closes an inherited fd and opens a new file under its number (daemons close
    inherited fds) before its first iteration gets the stranger's file registered for
    the dead object by the rebuild (``Registry.rebuild`` re-arms every kernel entry
    without checking the file's identity)."""
    from danga.testing.suite import in_child

    lp = danga.Loop(poller_cls)
    a, b = nb_pair()
    try:
        obj = Recorder(a, loop=lp)
        obj.watch_read(True)
        lp.run_once(0)

        def child() -> dict[str, Any]:
            c, d = _swap_in_stranger(obj)
            for _ in range(3):
                lp.run_once(0)
            return {"read": "read" in obj.log, "closed": obj.closed}

        assert in_child(child) == {"read": False, "closed": True}
    finally:
        lp.close()
        _close_all(a, b)


@needs_bytecode
def test_kernel_mask_is_known_after_an_interrupted_change(poller_cls):
    """Sanity for the UNKNOWN path (held): after the interrupted change is redone the
    kernel mask is the wanted one again."""
    lp = danga.Loop(poller_cls)
    a, b = nb_pair()
    try:
        obj = Recorder(a, loop=lp)
        lp.run_once(0)
        obj.watch_read(True)
        with SignalAt([Registry.flush], 2):
            lp.run_once(0)
        lp.run_once(0)
        assert lp._registry.kernel[obj.fd] & READ
    finally:
        lp.close()
        _close_all(a, b)


@pytest.mark.xdist_group("process-global")
@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="needs POSIX signals")
def test_child_forked_with_a_delivery_queued_still_gets_signals(poller_cls):
    """docs/internals.md#fork: the child "drops the calls other threads had queued".
    It drops the signal delivery that a signal handler of the main thread queued
    too, but ``SignalHandlers._scheduled`` stays True: no signal callback ever runs in
    the child (a prefork worker forked between a signal and its delivery never sees
    its SIGTERM/SIGHUP callbacks). Runs in forked children (process-wide state)."""
    from danga.testing.suite import in_child

    def process() -> int:
        lp = danga.Loop(poller_cls)
        got: list[int] = []
        lp.add_signal_handler(signal.SIGUSR1, got.append, 1)
        os.kill(os.getpid(), signal.SIGUSR1)  # a delivery is queued, not yet run

        def worker() -> int:
            os.kill(os.getpid(), signal.SIGUSR1)  # the worker's own signal
            for _ in range(3):
                lp.run_once(0)
            return len(got)

        return int(in_child(worker))

    assert in_child(process) >= 1, "the forked child never ran a signal callback"


# -- 6. KeyboardInterrupt in the timers' run -------------------------------------------


@needs_bytecode
def test_signal_anywhere_in_the_timers_run_loses_no_timer(poller_cls):
    """docs/internals.md#signals-between-bytecodes and TimerHeap.run_due's own promise
    ("the due timers not yet run stay scheduled"). ``_fire_due`` pops a timer and only
    then marks it fired and calls it: a signal handler raising right after
    ``popleft()`` returns drops a live timer: it never fires, and ``loop.timers()`` no
    longer counts it."""
    from danga.timers import TimerHeap

    targets = [TimerHeap.run_due, TimerHeap._pop_due, TimerHeap._take_sorted,
               TimerHeap._fire_due]
    for point in sweep(targets):
        lp = danga.Loop(poller_cls)
        try:
            fired: list[int] = []
            for i in range(4):
                lp.add_timer(-1.0 + i / 100, fired.append, i)
            with point:
                lp.run_once(0)
            for _ in range(3):
                lp.run_once(0)
            assert sorted(fired) == [0, 1, 2, 3], (
                f"a signal after C call #{point.n} of the timers' run lost a timer: "
                f"fired {fired}, loop.timers() = {lp.timers()}")
        finally:
            lp.close()


# -- 7. KeyboardInterrupt in the write queue's flush -----------------------------------


class _Writer(danga.Socket):
    def event_read(self) -> None:
        self.read(65536)


@needs_bytecode
def test_signal_anywhere_in_the_queue_flush_keeps_the_stream(poller_cls):
    """docs/internals.md#signals-between-bytecodes for the write queue. ``_flush``
    sends (``send``/``sendmsg``), and only then trims what the kernel took from the
    queue: a signal handler raising right after the send returns leaves the sent
    bytes queued, so the next flush sends them again and the peer reads a corrupted
    stream (bytes duplicated). The invariant: the peer reads a prefix of the stream,
    all of it unless the object was closed (closing is the honest answer when the
    count the kernel returned is lost)."""
    payload = bytes(range(256)) * 1024 * 2  # 512 KiB, a recognisable pattern
    chunks = [payload[i:i + 65536] for i in range(0, len(payload), 65536)]
    for point in sweep([danga.Socket._flush]):
        lp = danga.Loop(poller_cls)
        a, b = nb_pair()
        try:
            obj = _Writer(a, loop=lp)
            for chunk in chunks:
                obj.write(chunk)
            assert obj.write_buf_size, "the kernel took everything: nothing is queued"
            got = bytearray()

            def pump(got: bytearray = got, b: socket.socket = b) -> bool:
                try:
                    while True:
                        data = b.recv(1 << 20)
                        if not data:
                            return True
                        got.extend(data)
                except BlockingIOError:
                    return len(got) >= len(payload)

            pump()
            with point:
                lp.run_once(0)  # event_write: the queue's flush
            run_until(lp, lambda pump=pump, obj=obj: obj.closed or (
                pump() and not obj.write_buf_size), timeout=5.0)
            pump()
            assert payload.startswith(bytes(got)) and (obj.closed or got == payload), (
                f"a signal after C call #{point.n} of the write queue's flush corrupted "
                f"the stream: {len(got)} bytes received for {len(payload)} sent")
        finally:
            lp.close()
            _close_all(a, b)


# -- 8. The dead wakeup channel, when it cannot be rebuilt at once ---------------------


def _woken_by_a_thread(lp: Loop) -> bool:
    """Whether a call_soon_threadsafe() from another thread wakes *lp* sleeping in
    run_once(3.0) (the poll returns events, instead of nothing after 3 s)."""
    entered = threading.Event()
    real_poll = lp.backend.poll
    results: list[Any] = []

    def poll(timeout: float | None) -> Any:
        entered.set()
        out = real_poll(timeout)
        results.append(out)
        return out

    lp.backend.poll = poll  # type: ignore[method-assign]

    def other_thread() -> None:
        assert entered.wait(5.0)
        lp.call_soon_threadsafe(lambda: None)

    t = threading.Thread(target=other_thread)
    t.start()
    try:
        lp.run_once(3.0)
    finally:
        t.join()
        lp.backend.poll = real_poll  # type: ignore[method-assign]
    return bool(results[-1])


def test_dead_wakeup_channel_is_rebuilt_after_a_failed_rebuild(poller_cls, monkeypatch):
    """docs/internals.md#self-pipe-full-or-eof: a dead channel is rebuilt. If the
    rebuild fails once (EMFILE: the process is out of fds, the usual moment for a
    library to close fds behind danga's back), ``Loop._drain_waker`` has already
    unregistered and closed the old pair: the OSError escapes from the dispatch, and
    no later iteration tries again. The loop has no wakeup channel for ever: every
    call_soon_threadsafe()/stop() from another thread is slept through."""
    import errno

    lp = danga.Loop(poller_cls)
    try:
        os.close(lp._waker.write_fd)  # the write end closed behind danga's back: EOF
        real = socket.socketpair
        calls = []

        def socketpair(*args: Any) -> Any:
            calls.append(1)
            if len(calls) == 1:
                raise OSError(errno.EMFILE, "Too many open files")
            return real(*args)

        monkeypatch.setattr(socket, "socketpair", socketpair)
        try:
            lp.run_once(0)
        except OSError:
            pass  # the first rebuild may fail; the loop must try again later
        for _ in range(3):
            lp.run_once(0)
        assert _woken_by_a_thread(lp), "the loop lost its wakeup channel for ever"
    finally:
        lp.close()


@needs_bytecode
def test_signal_anywhere_in_read_leaves_no_gap_in_the_stream(poller_cls):
    """The read side of the same failure: ``read()`` calls ``recv`` and returns its
    data; a signal handler raising right after ``recv`` returns throws the bytes away.
    A program that goes on (it catches KeyboardInterrupt, or runs the loop again)
    reads the stream with a hole in it, silently. The invariant: what the object reads
    is a prefix of the stream, unless the object was closed."""
    payload = bytes(range(256)) * 16
    for point in sweep([danga.Socket.read, danga.Socket._read_general]):
        lp = danga.Loop(poller_cls)
        a, b = nb_pair()
        try:
            obj = _Writer(a, loop=lp)
            b.sendall(payload[:1000])
            got = bytearray()
            with point:
                got += obj.read(100) or b""
            b.sendall(payload[1000:])
            while not obj.closed and len(got) < len(payload):
                data = obj.read(100)
                if not data:
                    break
                got += data
            assert obj.closed or bytes(got) == payload[:len(got)], (
                f"a signal after C call #{point.n} of read() left a hole in the stream "
                "the object reads")
        finally:
            lp.close()
            _close_all(a, b)
