"""Faults survived: peer resets, fds closed behind danga's back, the dup-then-close epoll
trap, fd reuse within one batch, exceptions in every kind of callback, and signals
arriving during poll(). Every test runs on every backend.

"No busy loop" is checked by counting loop iterations during a fixed idle span (a loop
that spins makes thousands; one that sleeps makes a handful) — a count, not a timing.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import struct
import threading
from typing import Any

import pytest
from reliability_helpers import Recorder, recv_available, tcp_pair

import danga
from danga.testing import run_until


def _no_exceptions(loop: danga.Loop) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda lp, ctx: seen.append(ctx))
    return seen


def _iterations_while_idle(loop: danga.Loop, span: float = 0.3) -> int:
    """Run the loop for *span* seconds (a timer stops it) and count its iterations."""
    count = [0]

    def counter(dmap: Any, other: Any) -> bool:
        count[0] += 1
        return True

    loop.set_post_loop_callback(counter)
    loop.add_timer(span, loop.stop)
    loop.run()
    loop.set_post_loop_callback(None)
    return count[0]


def _assert_echo_works(loop: danga.Loop, obj: Recorder, peer: socket.socket,
                       payload: bytes = b"still here") -> None:
    before = len(obj.got)
    peer.sendall(payload)
    run_until(loop, lambda: bytes(obj.got[before:]) == payload)


def _use_if_open(loop: danga.Loop, victim: Recorder) -> None:
    """epoll and kqueue drop a closed fd silently, so danga learns of it at the next use
    (a watch change or a write fails EBADF and closes the object); poll (POLLNVAL) and
    select (EBADF) report ERR at once and the object is already closed."""
    if not victim.closed:
        victim.watch_write(True)
        victim.write(b"x")
        loop.run_once(0)


def _rst(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


# -- peer reset ---------------------------------------------------------------------------

def test_peer_reset_mid_write(loop: danga.Loop) -> None:
    errors = _no_exceptions(loop)
    a, peer = tcp_pair()
    bystander, bpeer = tcp_pair()
    bpeer.setblocking(False)
    by = Recorder(bystander, loop=loop)
    writer = Recorder(a, loop=loop, read=False)
    writer.write(os.urandom(8 << 20))  # far more than the socket buffers hold
    assert writer.write_buf_size > 0
    loop.run_once(0)
    _rst(peer)
    loop.add_timer(10, loop.stop)  # a bound: the close ends the run long before
    loop.set_post_loop_callback(lambda d, o: not writer.closed)
    loop.run()  # nothing escapes run()
    assert writer.closed and writer.close_reason  # closed, with a reason
    assert writer.write_buf_size == 0
    assert writer.late == []
    assert errors == []
    _assert_echo_works(loop, by, bpeer)


def test_peer_reset_mid_read(loop: danga.Loop) -> None:
    errors = _no_exceptions(loop)
    a, peer = tcp_pair()
    bystander, bpeer = tcp_pair()
    bpeer.setblocking(False)
    by = Recorder(bystander, loop=loop)
    reader = Recorder(a, loop=loop)
    sent = os.urandom(50000)
    peer.sendall(sent)
    run_until(loop, lambda: len(reader.got) > 0)
    peer.sendall(sent)
    _rst(peer)  # the unread data is discarded and the connection reset
    loop.add_timer(10, loop.stop)
    loop.set_post_loop_callback(lambda d, o: not reader.closed)
    loop.run()
    assert reader.closed and reader.close_reason
    assert bytes(reader.got) == (sent + sent)[: len(reader.got)]  # a clean prefix
    assert reader.late == []
    assert errors == []
    _assert_echo_works(loop, by, bpeer)


# -- an fd closed behind danga's back -----------------------------------------------------

def test_fd_closed_behind_our_back(loop: danga.Loop) -> None:
    errors = _no_exceptions(loop)
    a, apeer = socket.socketpair()
    b, bpeer = socket.socketpair()
    bpeer.setblocking(False)
    victim = Recorder(a, loop=loop)
    other = Recorder(b, loop=loop)
    loop.run_once(0)
    fd = a.detach()  # the socket object forgets the number; danga still has it
    os.close(fd)  # the last reference: the peer sees the connection closed
    _assert_echo_works(loop, other, bpeer)  # the other socket carries on
    assert _iterations_while_idle(loop) < 100  # no busy loop
    _assert_echo_works(loop, other, bpeer, b"and again")
    _use_if_open(loop, victim)
    assert victim.closed or "err" in victim.events
    assert victim.late == []
    assert errors == []
    assert fd not in loop._registry.kernel
    assert _iterations_while_idle(loop) < 100


def test_dup_then_close_stale_registration(loop: danga.Loop,
                                           caplog: pytest.LogCaptureFixture) -> None:
    errors = _no_exceptions(loop)
    a, apeer = socket.socketpair()
    b, bpeer = socket.socketpair()
    bpeer.setblocking(False)
    victim = Recorder(a, loop=loop)
    other = Recorder(b, loop=loop)
    loop.run_once(0)
    dup = os.dup(a.fileno())  # the open file description outlives the number
    try:
        fd = a.detach()
        os.close(fd)
        apeer.sendall(b"x" * 100)  # epoll now reports fd forever and cannot remove it
        with caplog.at_level(logging.DEBUG, logger="danga"):
            iterations = _iterations_while_idle(loop)
        assert iterations < 100  # no busy loop: the stale registration was dealt with
        _use_if_open(loop, victim)
        assert victim.closed
        assert victim.late == []
        _assert_echo_works(loop, other, bpeer)
        assert errors == []
        assert _iterations_while_idle(loop) < 100
        if loop.backend.name == "epoll":
            assert any("rebuilt the epoll poller" in r.getMessage() for r in caplog.records)
    finally:
        os.close(dup)


# -- fd reuse within one batch ------------------------------------------------------------

class Killer(Recorder):
    """On its first read, steals its partner, closes the raw socket (freeing the number
    at once) and wraps a new socket that gets the same number."""

    __slots__ = ("partner", "spawned", "state")

    def event_read(self) -> None:
        super().event_read()
        st = self.state
        if st["done"]:
            return
        st["done"] = True
        victim = self.partner
        number = victim.fd
        raw = victim.steal_socket()
        raw.close()
        new, newpeer = socket.socketpair()
        assert new.fileno() == number, "the kernel did not reuse the number"
        st["new"] = Recorder(new, loop=self.loop)
        st["newpeer"] = newpeer


def test_fd_reuse_in_one_batch(loop: danga.Loop) -> None:
    errors = _no_exceptions(loop)
    a, apeer = socket.socketpair()
    b, bpeer = socket.socketpair()
    st: dict[str, Any] = {"done": False}
    x = Killer(a, loop=loop)
    y = Killer(b, loop=loop)
    x.partner, y.partner = y, x
    x.state = y.state = st
    loop.run_once(0)
    apeer.sendall(b"1")
    bpeer.sendall(b"2")  # both ready in the same batch: the first to run kills the other
    run_until(loop, lambda: st["done"])
    new = st["new"]
    assert new.events == []  # nothing from the old object's batch
    loop.run_once(0)
    assert new.events == []  # and nothing afterwards either: it has no data
    st["newpeer"].sendall(b"fresh")
    run_until(loop, lambda: bytes(new.got) == b"fresh")
    assert errors == []
    st["newpeer"].close()


# -- exceptions in every kind of callback -------------------------------------------------

class Boom(RuntimeError):
    pass


class Raiser(Recorder):
    __slots__ = ("raise_in", "raised")

    def _boom(self, where: str) -> None:
        self.raised.append(where)
        raise Boom(where)

    def event_read(self) -> None:
        if self.raise_in == "event_read":
            self._boom("event_read")
        if self.raise_in in ("event_err", "event_hup"):
            return  # leave the reset unread so that the error condition is dispatched
        super().event_read()

    def event_write(self) -> None:
        if self.raise_in == "event_write":
            self._boom("event_write")
        super().event_write()

    def event_err(self) -> None:
        self._note("err")
        if self.raise_in == "event_err":
            self._boom("event_err")
        # otherwise stay open, so that event_hup runs after it

    def event_hup(self) -> None:
        self._note("hup")
        if self.raise_in == "event_hup":
            self._boom("event_hup")
        self.close("event_hup")


# Which object the default handler closes: the Socket whose callback raised, else none.
OWNED = {"event_read", "event_write", "event_err", "event_hup", "queued write callable",
         "object post-loop"}


def _exception_isolated(loop: danga.Loop, kind: str, caplog: pytest.LogCaptureFixture,
                        wait: float = 5.0) -> None:
    bystander, bpeer = socket.socketpair()
    bpeer.setblocking(False)
    by = Recorder(bystander, loop=loop)
    raised: list[str] = []
    keep: list[Any] = []
    obj: Raiser | None = None

    def boom(*_: Any) -> Any:
        raised.append(kind)
        raise Boom(kind)

    if kind in OWNED:
        if kind in ("event_err", "event_hup"):
            a, peer = tcp_pair()
        else:
            a, peer = socket.socketpair()
        peer.setblocking(False)
        keep.append(peer)
        obj = Raiser(a, loop=loop, read=kind != "event_write")
        obj.raise_in, obj.raised = kind, raised
        if kind == "event_read":
            peer.sendall(b"go")
        elif kind == "event_write":
            obj.watch_write(True)
        elif kind in ("event_err", "event_hup"):
            loop.run_once(0)
            _rst(peer)
        elif kind == "queued write callable":
            obj.write(b"q" * (4 << 20))
            obj.write(boom)

            def drain() -> None:
                recv_available(peer)
                if not raised:
                    loop.add_timer(0.001, drain)

            loop.add_timer(0, drain)
        elif kind == "object post-loop":
            obj.set_post_loop_callback(boom)
    elif kind == "timer":
        loop.add_timer(0, boom)
    elif kind == "global post-loop":
        def once(dmap: Any, other: Any) -> bool:
            if not raised:
                boom()
            return True

        loop.set_post_loop_callback(once)
    elif kind == "other_fds":
        r, w = os.pipe()
        keep.extend([r, w])
        loop.add_other_fds({r: boom})
        os.write(w, b"!")
    elif kind == "on_accept":
        class BadListener(danga.Listener):
            def on_accept(self, conn: socket.socket, addr: Any) -> None:
                keep.append(conn)
                boom()

        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(8)
        listener = BadListener(lsock, loop=loop)
        keep.append(socket.create_connection(lsock.getsockname()))
    else:  # pragma: no cover
        raise AssertionError(kind)

    with caplog.at_level(logging.ERROR, logger="danga"):
        run_until(loop, lambda: bool(raised), timeout=wait)
        loop.run_once(0)
    assert raised[0] == kind
    assert any("exception in" in r.getMessage() and r.exc_info for r in caplog.records)
    if obj is not None:
        assert obj.closed and obj.close_reason == "exception"
        assert obj.late == []
    assert not by.closed
    _assert_echo_works(loop, by, bpeer)  # the loop carries on, others undisturbed
    if kind == "on_accept":
        assert not listener.closed  # one bad connection does not close the listener
        keep.append(socket.create_connection(lsock.getsockname()))
        run_until(loop, lambda: len(raised) == 2)
        assert listener.accepted == 2
    if kind == "on_accept":  # the accepted connections were closed: their peers see EOF
        accepted = [k for k in keep if isinstance(k, socket.socket) and k.fileno() == -1]
        assert len(accepted) == 2, keep
        for client in keep[0::2]:
            client.settimeout(5)
            assert client.recv(10) == b""
    if kind == "other_fds":
        # The default handler stopped watching the raising callback's fd (once), and
        # never closed it: it is not danga's.
        assert keep[-2] not in loop.other_fds
        os.fstat(keep[-2])
        os.close(keep[-1])
        os.close(keep[-2])
    for item in keep:
        if isinstance(item, socket.socket):
            item.close()


@pytest.mark.parametrize("kind", ["event_read", "event_write", "queued write callable",
                                  "timer", "object post-loop", "global post-loop",
                                  "other_fds", "on_accept"])
def test_exception_isolated(loop: danga.Loop, kind: str,
                            caplog: pytest.LogCaptureFixture) -> None:
    _exception_isolated(loop, kind, caplog)


@pytest.mark.parametrize("kind", ["event_err", "event_hup"])
@pytest.mark.danga_requires("err_hup", reason="the backend has no error or hang-up condition: "
                         "a reset shows as readable, so event_err/event_hup never run")
def test_exception_isolated_err_hup(loop: danga.Loop, kind: str,
                                    caplog: pytest.LogCaptureFixture) -> None:
    _exception_isolated(loop, kind, caplog, wait=2.0)


# -- signals during poll() ----------------------------------------------------------------

@pytest.mark.xdist_group("process-global")
def test_signals_during_poll_lose_nothing(loop: danga.Loop) -> None:
    got_signals = [0]
    old = signal.signal(signal.SIGUSR1, lambda *_: got_signals.__setitem__(0, got_signals[0] + 1))
    stop = threading.Event()
    a, peer = socket.socketpair()
    obj = Recorder(a, loop=loop)
    chunks = [os.urandom(100) for _ in range(40)]
    fired: list[int] = []
    pid = os.getpid()

    def pester() -> None:  # signals keep arriving while the loop sleeps in poll()
        while not stop.wait(0.002):
            os.kill(pid, signal.SIGUSR1)

    def feed() -> None:  # data arrives while the loop sleeps, between signals
        for chunk in chunks:
            if stop.wait(0.01):
                return
            peer.sendall(chunk)

    for i in range(20):
        loop.add_timer(0.02 * (i + 1), fired.append, i)
    threads = [threading.Thread(target=pester), threading.Thread(target=feed)]
    try:
        for t in threads:
            t.start()
        run_until(loop, lambda: len(fired) == 20 and len(obj.got) == 4000, timeout=20)
    finally:
        stop.set()
        for t in threads:
            t.join()
        signal.signal(signal.SIGUSR1, old)
    assert got_signals[0] > 10  # signals really did interrupt the waits
    assert fired == list(range(20))  # every timer, in deadline order
    assert bytes(obj.got) == b"".join(chunks)  # every event
    assert obj.late == []
    peer.close()
