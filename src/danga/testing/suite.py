"""The backend conformance suite: the Poller protocol, tested directly on every backend.

Run it against one installed backend with ``danga check --backend NAME`` or
``pytest -p danga.testing --danga-backend NAME`` (with no test path, the plugin collects
this file). danga's own tests run it on every available backend from
``tests/backends/test_conformance.py``.

Every test uses the ``poller`` (or ``poller_cls``) fixture, so it runs once per backend of
the matrix. The tests are grouped (``danga_group``) as ``danga check`` reports them:
registration, readiness, hangup, errors, timeouts, signals, fork, files, pipes, close,
scale. A backend that legitimately differs is a strict expected failure
(``danga_xfail``), never a skip. Tests that change process-wide state (signal handlers,
fork, RLIMIT_NOFILE) share the xdist group ``process-global``.

Poller API v2: the core passes the true ``old`` mask, validates every fd at registration
(closed fds, regular files and directories, fds above ``max_fd``) and clamps waits; the
tests call the poller the way the core does, and check the fd validation through a
``danga.Loop`` over the backend. What a backend declares (``max_fd``, ``err_hup``,
``embeddable``: :func:`danga.poller.capabilities`) is read, never its name: a backend
that cannot report ERR/HUP says ``err_hup = False`` and is held to that instead.

Nothing here asserts an upper bound on time: the machines that run it are noisy. Lower
bounds (``poll(0.2)`` waits at least 0.2 s) are the protocol's promise.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ..poller import (
    ALL_EVENTS,
    ERR,
    HUP,
    READ,
    WRITE,
    FdOutOfRange,
    Poller,
    UnsupportedFileType,
    capabilities,
)

__all__ = [
    "TestClose",
    "TestErrors",
    "TestFiles",
    "TestFork",
    "TestHangup",
    "TestPipes",
    "TestReadiness",
    "TestRegistration",
    "TestScale",
    "TestSignals",
    "TestTimeouts",
    "pairs",
    "pipe",
    "sockpair",
]

Pair = tuple[socket.socket, socket.socket]

_WIN = sys.platform == "win32"
# Windows' select accepts sockets only and Windows has no fork, setitimer or rlimits:
# those cases are strict expected failures there (they must fail, visibly).
_POSIX_ONLY = pytest.mark.xfail(_WIN, strict=True, reason="needs POSIX (pipes, fork, "
                                "setitimer, rlimits or directories)")
_PROCESS_GLOBAL = pytest.mark.xdist_group("process-global")

#: How long a "becomes ready" wait may take before the test fails (not a timing claim).
DEADLINE = 5.0


def group(name: str) -> pytest.MarkDecorator:
    """The marker that puts a test into a ``danga check`` group."""
    return pytest.mark.danga_group(name)


# -- fixtures --------------------------------------------------------------------------


@pytest.fixture
def sockpair() -> Iterator[Pair]:
    """A connected non-blocking socket pair (a, b), closed afterwards."""
    pairs: list[Pair] = []
    yield _new_pair(pairs)
    _close_all(pairs)


@pytest.fixture
def pairs() -> Iterator[Callable[[], Pair]]:
    """A factory of connected non-blocking socket pairs, all closed afterwards."""
    made: list[Pair] = []
    yield lambda: _new_pair(made)
    _close_all(made)


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    """A non-blocking pipe (read fd, write fd); whatever is still open is closed after."""
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    yield r, w
    for fd in (r, w):
        with contextlib.suppress(OSError):
            os.close(fd)


def _new_pair(made: list[Pair]) -> Pair:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    made.append((a, b))
    return a, b


def _close_all(made: list[Pair]) -> None:
    for a, b in made:
        a.close()
        b.close()


# -- helpers ---------------------------------------------------------------------------


def events(p: Poller, timeout: float | None = 0) -> dict[int, int]:
    """One poll as {fd: mask}, checking the protocol's shape: one entry per fd, masks
    non-empty and made of READ|WRITE|ERR|HUP only."""
    got = p.poll(timeout)
    assert isinstance(got, list), f"poll() must return a list, got {type(got).__name__}"
    fds = [fd for fd, _ in got]
    assert len(fds) == len(set(fds)), f"one (fd, mask) entry per fd expected, got {got}"
    for fd, mask in got:
        assert isinstance(fd, int) and isinstance(mask, int), got
        assert mask, f"an empty mask was reported for fd {fd}: {got}"
        assert not mask & ~ALL_EVENTS, f"unknown bits {mask & ~ALL_EVENTS:#x} for fd {fd}"
    return dict(got)


def wait_for(p: Poller, fd: int, bits: int, deadline: float = DEADLINE) -> int:
    """Poll until *fd* is reported with any of *bits*; its mask. Fails after *deadline*."""
    end = time.monotonic() + deadline
    while True:
        left = end - time.monotonic()
        mask = events(p, max(0.0, min(left, 0.5))).get(fd, 0)
        if mask & bits:
            return mask
        if left <= 0:
            pytest.fail(f"fd {fd} was not reported with {bits:#x} within {deadline}s")


def fill(sock: socket.socket) -> None:
    """Send until the socket's buffer is full."""
    chunk = b"x" * 65536
    with contextlib.suppress(BlockingIOError):
        while True:
            sock.send(chunk)


def drain(sock: socket.socket) -> bytes:
    """Receive everything available now."""
    got = bytearray()
    with contextlib.suppress(BlockingIOError):
        while True:
            data = sock.recv(65536)
            if not data:
                break
            got += data
    return bytes(got)


def recv_wait(sock: socket.socket, n: int) -> bytes:
    """Receive up to *n* bytes, waiting up to DEADLINE for them."""
    sock.settimeout(DEADLINE)
    try:
        return sock.recv(n)
    finally:
        sock.setblocking(False)


@contextlib.contextmanager
def nofile_at_least(n: int) -> Iterator[None]:
    """Raise RLIMIT_NOFILE's soft limit to *n* (within the hard limit) for the block.

    Fails (never skips) if the hard limit is too low.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < n:
        if hard != resource.RLIM_INFINITY and hard < n:
            pytest.fail(f"RLIMIT_NOFILE hard limit {hard} < {n}: raise it to run this test")
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@contextlib.contextmanager
def itimer(handler: Callable[[int, Any], Any], delay: float,
           interval: float = 0.0) -> Iterator[None]:
    """SIGALRM *handler* fired by ``setitimer`` after *delay* (then every *interval*).

    The previous SIGALRM handler and timer (pytest-timeout's, for one) are restored
    afterwards, with the time that was left on the timer.
    """
    old_handler = signal.signal(signal.SIGALRM, handler)
    old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, delay, interval)
    started = time.monotonic()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        if old_delay:
            left = max(old_delay - (time.monotonic() - started), 0.001)
            signal.setitimer(signal.ITIMER_REAL, left, old_interval)


def in_child(fn: Callable[[], Any]) -> Any:
    """Run *fn* in a forked child and return its JSON-able result (or fail the test
    with the child's traceback). The child never returns into pytest: it ``_exit``\\ s."""
    r, w = os.pipe()
    with warnings.catch_warnings():  # "multi-threaded fork" (3.12+): the child only polls
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            os.close(r)
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            signal.alarm(30)  # never outlive a stuck test
            try:
                out = {"ok": True, "result": fn()}
            except BaseException:
                out = {"ok": False, "error": traceback.format_exc()}
            os.write(w, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(w)
    chunks = []
    while True:
        data = os.read(r, 65536)
        if not data:
            break
        chunks.append(data)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"child status {status}"
    out = json.loads(b"".join(chunks) or b'{"ok": false, "error": "child wrote nothing"}')
    if not out["ok"]:
        pytest.fail(f"in the forked child:\n{out['error']}")
    return out["result"]


# -- registration ----------------------------------------------------------------------


@group("registration")
class TestRegistration:
    def test_register_modify_remove(self, poller: Poller, sockpair: Pair) -> None:
        a, b = sockpair
        fd = b.fileno()
        poller.modify(fd, 0, READ)
        assert fd not in events(poller), "nothing to read yet"
        a.send(b"x")
        assert wait_for(poller, fd, READ) & READ
        poller.modify(fd, READ, WRITE)  # readable still, but only WRITE is wanted now
        mask = events(poller).get(fd, 0)
        assert mask & WRITE and not mask & READ, f"{mask:#x}"
        poller.modify(fd, WRITE, READ | WRITE)
        assert events(poller).get(fd, 0) & (READ | WRITE) == READ | WRITE
        poller.modify(fd, READ | WRITE, 0)
        assert fd not in events(poller), "removed, yet reported"

    def test_watch_nothing_after_removal(self, poller: Poller, sockpair: Pair) -> None:
        a, b = sockpair
        fd = b.fileno()
        poller.modify(fd, 0, READ)
        a.send(b"x")
        assert wait_for(poller, fd, READ)
        poller.modify(fd, READ, 0)
        assert fd not in events(poller), "removed, yet reported"
        a.close()  # even a hang-up must not wake a watcher of nothing with READ/WRITE
        assert not events(poller).get(fd, 0) & (READ | WRITE)

    def test_err_hup_only_interest(self, poller: Poller, sockpair: Pair) -> None:
        # The core registers a new Socket with ERR|HUP (never requested, always
        # reported) until it watches read or write: that must be accepted, report no
        # READ/WRITE, and turn into READ later.
        a, b = sockpair
        fd = b.fileno()
        poller.modify(fd, 0, ERR | HUP)
        a.send(b"x")
        assert not events(poller, 0.05).get(fd, 0) & (READ | WRITE)
        poller.modify(fd, ERR | HUP, READ | ERR | HUP)
        assert wait_for(poller, fd, READ) & READ
        poller.modify(fd, READ | ERR | HUP, 0)
        assert fd not in events(poller)

    def test_registration_after_removal(self, poller: Poller, sockpair: Pair) -> None:
        a, b = sockpair
        fd = b.fileno()
        for _ in range(3):
            poller.modify(fd, 0, READ | WRITE)
            assert wait_for(poller, fd, WRITE) & WRITE
            poller.modify(fd, READ | WRITE, 0)
            assert fd not in events(poller)
        a.send(b"x")
        poller.modify(fd, 0, READ)
        assert wait_for(poller, fd, READ) & (READ | WRITE) == READ

    def test_many_registrations_on_one_poller(self, poller: Poller, pairs: Any) -> None:
        ends = [pairs() for _ in range(8)]
        for _, b in ends:
            poller.modify(b.fileno(), 0, READ)
        for a, _ in ends[::2]:
            a.send(b"x")
        want = {b.fileno() for _, b in ends[::2]}
        end = time.monotonic() + DEADLINE
        got: set[int] = set()
        while got != want and time.monotonic() < end:
            got = {fd for fd, m in events(poller, 0.1).items() if m & READ}
        assert got == want


# -- readiness -------------------------------------------------------------------------


@group("readiness")
class TestReadiness:
    def test_readable(self, poller: Poller, sockpair: Pair) -> None:
        a, b = sockpair
        poller.modify(b.fileno(), 0, READ)
        assert b.fileno() not in events(poller)
        a.send(b"ping")
        assert wait_for(poller, b.fileno(), READ) & READ
        assert b.recv(10) == b"ping"
        assert b.fileno() not in events(poller), "drained, yet still readable"

    def test_writable(self, poller: Poller, sockpair: Pair) -> None:
        a, b = sockpair
        poller.modify(a.fileno(), 0, WRITE)
        assert wait_for(poller, a.fileno(), WRITE) & WRITE
        fill(a)
        assert not events(poller).get(a.fileno(), 0) & WRITE, "full, yet writable"
        end = time.monotonic() + DEADLINE
        while not events(poller).get(a.fileno(), 0) & WRITE:
            drain(b)
            assert time.monotonic() < end, "drained, yet never writable again"

    def test_level_triggered(self, poller: Poller, sockpair: Pair) -> None:
        a, b = sockpair
        poller.modify(b.fileno(), 0, READ)
        a.send(b"12")
        assert wait_for(poller, b.fileno(), READ)
        assert b.recv(1) == b"1"
        assert events(poller).get(b.fileno(), 0) & READ, "1 byte left: readable again"
        assert events(poller).get(b.fileno(), 0) & READ, "still readable, still reported"
        assert b.recv(1) == b"2"
        assert b.fileno() not in events(poller)

    def test_read_and_write_in_one_entry(self, poller: Poller, pairs: Any) -> None:
        # kqueue returns one kevent per filter: the backend merges them and sizes its
        # buffer by filters, so every fd comes back whole in a single poll.
        ends = [pairs() for _ in range(4)]
        for a, b in ends:
            poller.modify(b.fileno(), 0, READ | WRITE)
            a.send(b"x")
        for _, b in ends:
            wait_for(poller, b.fileno(), READ)
        got = events(poller)
        for _, b in ends:
            assert got.get(b.fileno(), 0) & (READ | WRITE) == READ | WRITE, got

    def test_poll_none_returns_ready_fd(self, poller: Poller, sockpair: Pair) -> None:
        a, _ = sockpair
        poller.modify(a.fileno(), 0, WRITE)
        assert events(poller, None).get(a.fileno(), 0) & WRITE

    def test_other_fds_unaffected_by_interest_changes(self, poller: Poller,
                                                      pairs: Any) -> None:
        (a1, b1), (a2, b2) = pairs(), pairs()
        poller.modify(b1.fileno(), 0, READ)
        poller.modify(b2.fileno(), 0, READ)
        a1.send(b"x")
        a2.send(b"x")
        wait_for(poller, b1.fileno(), READ)
        poller.modify(b1.fileno(), READ, 0)
        got = events(poller)
        assert b1.fileno() not in got and got.get(b2.fileno(), 0) & READ


# -- hangup ----------------------------------------------------------------------------


@group("hangup")
class TestHangup:
    def test_peer_close(self, poller: Poller, sockpair: Pair) -> None:
        a, b = sockpair
        poller.modify(b.fileno(), 0, READ)
        a.close()
        mask = wait_for(poller, b.fileno(), READ | HUP)
        assert mask & (READ | HUP)
        assert b.recv(10) == b""

    def test_peer_close_reaches_write_watcher(self, poller: Poller, sockpair: Pair) -> None:
        a, b = sockpair
        poller.modify(b.fileno(), 0, WRITE)
        wait_for(poller, b.fileno(), WRITE)
        a.close()
        # Some bit must come (HUP, ERR or WRITE, where send then fails): never silence.
        assert wait_for(poller, b.fileno(), WRITE | HUP | ERR)

    def test_half_close(self, poller: Poller, sockpair: Pair) -> None:
        a, b = sockpair
        poller.modify(b.fileno(), 0, READ | WRITE)
        a.shutdown(socket.SHUT_WR)
        mask = wait_for(poller, b.fileno(), READ)
        assert mask & READ and mask & WRITE, f"readable and still writable: {mask:#x}"
        assert b.recv(10) == b""
        b.send(b"pong")  # the other direction still works
        assert recv_wait(a, 10) == b"pong"

    @pytest.mark.danga_requires("err_hup", reason="the backend declares err_hup = False: "
                                "a reset shows only as readable")
    def test_reset_reports_err_or_hup(self, poller: Poller, sockpair: Pair) -> None:
        # What err_hup = True promises the core: event_err/event_hup can run.
        import struct

        a, b = socket.socketpair(socket.AF_INET if _WIN else socket.AF_UNIX)
        try:
            poller.modify(b.fileno(), 0, READ)
            a.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            a.close()
            assert wait_for(poller, b.fileno(), ERR | HUP) & (ERR | HUP)
        finally:
            a.close()
            b.close()

    def test_hangup_is_level_triggered(self, poller: Poller, sockpair: Pair) -> None:
        a, b = sockpair
        poller.modify(b.fileno(), 0, READ)
        a.close()
        first = wait_for(poller, b.fileno(), READ | HUP)
        again = events(poller).get(b.fileno(), 0)
        assert again & (READ | HUP), f"reported once ({first:#x}), then forgotten"


# -- errors ----------------------------------------------------------------------------


@group("errors")
class TestErrors:
    def test_fd_closed_behind_the_back(self, poller: Poller, pairs: Any) -> None:
        (_a1, b1), (a2, b2) = pairs(), pairs()
        gone, alive = b1.fileno(), b2.fileno()
        poller.modify(gone, 0, READ)
        poller.modify(alive, 0, READ)
        b1.close()  # the poller is not told
        a2.send(b"x")
        for _ in range(3):  # poll never raises, the other fd keeps being reported
            got = events(poller, DEADLINE)
            assert got.get(alive, 0) & READ, got
            # Stateless primitives (poll, select) see the number and must say ERR;
            # epoll and kqueue forget a closed file: nothing. Never READ or WRITE alone.
            assert got.get(gone, ERR) & ERR, f"ERR or nothing for the closed fd: {got}"
        poller.modify(gone, READ, 0)  # removing it succeeds silently
        got = events(poller)
        assert gone not in got and got.get(alive, 0) & READ

    def test_remove_closed_fd_then_reuse_number(self, poller: Poller, pairs: Any) -> None:
        a, b = pairs()
        fd = b.fileno()
        poller.modify(fd, 0, READ)
        b.close()
        poller.modify(fd, READ, 0)
        a.close()
        # The number is free; the next socket probably gets it. Either way it must work.
        a2, b2 = pairs()
        for sock in (a2, b2):
            poller.modify(sock.fileno(), 0, READ)
        assert not {a2.fileno(), b2.fileno()} & set(events(poller))
        a2.send(b"x")
        assert wait_for(poller, b2.fileno(), READ)
        assert a2.fileno() not in events(poller)

    @pytest.mark.danga_requires("binds_open_files", strict=False, reason="the backend "
                                "declares binds_open_files = False (always safe): the core "
                                "keeps file identities")
    def test_change_for_a_reused_number_fails(self, poller: Poller, pairs: Any) -> None:
        # What binds_open_files = True promises the core: after the file registered
        # under a number is closed and the number names another file, a change of that
        # registration fails (ENOENT) instead of registering the stranger's file.
        _a, b = pairs()
        fd = b.fileno()
        poller.modify(fd, 0, READ)
        b.close()
        c, _d = pairs()
        if c.fileno() != fd:
            os.dup2(c.fileno(), fd)
        try:
            with pytest.raises(OSError):
                poller.modify(fd, READ, READ | WRITE)
            assert fd not in events(poller)
        finally:
            if c.fileno() != fd:
                os.close(fd)

    def test_loop_refuses_closed_fd(self, loop: Any, pairs: Any) -> None:
        # Poller API v2: the core validates at registration, the same on every backend.
        import errno

        import danga

        _a, b = pairs()
        fd = os.dup(b.fileno())
        os.close(fd)  # a number that is certainly closed (until someone reuses it)
        with pytest.raises(OSError) as info:
            danga.Socket(_Closed(fd), loop=loop)
        assert info.value.errno == errno.EBADF
        with pytest.raises(OSError) as info:
            loop.other_fds[fd] = lambda mask: None
        assert info.value.errno == errno.EBADF
        assert fd not in loop.other_fds and fd not in loop.descriptor_map


class _Closed:
    """An object whose fileno() names a closed fd (what a Socket must refuse)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        raise AssertionError("danga must not close an fd it refused")


# -- timeouts --------------------------------------------------------------------------


@group("timeouts")
class TestTimeouts:
    def test_timeout_with_nothing_registered(self, poller: Poller) -> None:
        start = time.monotonic()
        assert poller.poll(0.2) == []
        assert time.monotonic() - start >= 0.2, "poll(0.2) returned early"

    def test_timeout_with_idle_fd(self, poller: Poller, sockpair: Pair) -> None:
        poller.modify(sockpair[1].fileno(), 0, READ)
        start = time.monotonic()
        assert poller.poll(0.15) == []
        assert time.monotonic() - start >= 0.15, "poll(0.15) returned early"

    def test_tiny_timeout_rounds_up(self, poller: Poller, sockpair: Pair) -> None:
        poller.modify(sockpair[1].fileno(), 0, READ)
        for timeout in (0.0004, 0.0015):
            start = time.monotonic()
            assert poller.poll(timeout) == []
            assert time.monotonic() - start >= timeout, f"poll({timeout}) returned early"

    def test_zero_timeout_does_not_block(self, poller: Poller, sockpair: Pair) -> None:
        poller.modify(sockpair[1].fileno(), 0, READ)
        start = time.monotonic()
        assert poller.poll(0) == []
        assert time.monotonic() - start < 10, "poll(0) blocked"  # generous: noisy hosts

    def test_ready_fd_returns_before_timeout(self, poller: Poller, sockpair: Pair) -> None:
        a, b = sockpair
        poller.modify(b.fileno(), 0, READ)
        a.send(b"x")
        assert events(poller, 30).get(b.fileno(), 0) & READ


# -- signals ---------------------------------------------------------------------------


class _Interrupt(Exception):
    pass


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise _Interrupt


@group("signals")
@_PROCESS_GLOBAL
@_POSIX_ONLY
class TestSignals:
    @pytest.mark.parametrize("registered", [False, True], ids=["empty", "idle-fd"])
    def test_handler_that_raises_propagates(self, poller: Poller, sockpair: Pair,
                                            registered: bool) -> None:
        if registered:
            poller.modify(sockpair[1].fileno(), 0, READ)
        with itimer(_raise_interrupt, 0.05), pytest.raises(_Interrupt):
            poller.poll(30)
        poller.modify(sockpair[1].fileno(), READ if registered else 0, WRITE)
        assert wait_for(poller, sockpair[1].fileno(), WRITE)  # still usable after

    @pytest.mark.parametrize("registered", [False, True], ids=["empty", "idle-fd"])
    def test_handler_that_returns_keeps_waiting(self, poller: Poller, sockpair: Pair,
                                                registered: bool) -> None:
        if registered:
            poller.modify(sockpair[1].fileno(), 0, READ)
        calls = []
        with itimer(lambda s, f: calls.append(s), 0.03, 0.03):
            start = time.monotonic()
            assert poller.poll(0.3) == []
            elapsed = time.monotonic() - start
        assert calls, "the timer never fired: the test proves nothing"
        assert elapsed >= 0.3, f"interrupted poll(0.3) returned after {elapsed:.3f}s"

    def test_handler_that_makes_fd_ready(self, poller: Poller, sockpair: Pair) -> None:
        a, b = sockpair
        poller.modify(b.fileno(), 0, READ)
        calls = []

        def handler(signum: int, frame: Any) -> None:
            calls.append(signum)
            a.send(b"x")

        with itimer(handler, 0.05):
            got = events(poller, 30)
        assert calls == [signal.SIGALRM]
        assert got.get(b.fileno(), 0) & READ, got


# -- fork ------------------------------------------------------------------------------


@group("fork")
@_PROCESS_GLOBAL
@_POSIX_ONLY
class TestFork:
    def test_child_registrations_do_not_leak(self, poller: Poller,
                                             poller_cls: type[Poller], pairs: Any) -> None:
        a, b = pairs()
        poller.modify(b.fileno(), 0, READ)

        def child() -> list[int]:
            poller.close()  # the child's copy: the parent's poller must not notice
            mine = poller_cls()
            c, d = socket.socketpair()
            e, f = socket.socketpair()
            for sock in (d, f):
                mine.modify(sock.fileno(), 0, READ | WRITE)
            c.send(b"x")
            e.send(b"x")
            got = wait_for(mine, d.fileno(), READ)
            assert got & WRITE
            return [d.fileno(), f.fileno()]

        child_fds = in_child(child)
        assert len(child_fds) == 2
        got = events(poller)
        assert set(got) <= {b.fileno()}, f"the child's registrations leaked: {got}"
        a.send(b"x")
        got = events(poller, DEADLINE)
        assert set(got) == {b.fileno()} and got[b.fileno()] & READ, got

    def test_child_builds_its_own_poller(self, poller_cls: type[Poller]) -> None:
        def child() -> dict[str, int]:
            p = poller_cls()
            try:
                a, b = socket.socketpair()
                p.modify(b.fileno(), 0, READ)
                before = events(p).get(b.fileno(), 0)
                a.send(b"12")
                mask = wait_for(p, b.fileno(), READ)
                b.recv(1)
                again = events(p).get(b.fileno(), 0)
                return {"before": before, "mask": mask, "again": again}
            finally:
                p.close()

        out = in_child(child)
        assert out["before"] == 0 and out["mask"] & READ and out["again"] & READ, out

    def test_loop_used_in_child_does_not_leak(self, loop: Any, pairs: Any) -> None:
        # The core's half of the fork story: a Loop used in the child rebuilds its
        # poller there, so the child's watches never reach the parent's kernel object.
        import danga

        a, b = pairs()
        seen: list[bytes] = []

        class Reader(danga.Socket):
            def event_read(self) -> None:
                data = self.read(100)
                seen.append(data or b"")

        r = Reader(b, loop=loop)
        r.watch_read(True)
        loop.run_once(0)

        def child() -> int:
            c, d = socket.socketpair()
            d.setblocking(False)
            child_reader = Reader(d, loop=loop)
            child_reader.watch_read(True)
            c.send(b"child")
            end = time.monotonic() + DEADLINE
            while b"child" not in seen and time.monotonic() < end:
                loop.run_once(0.1)
            assert b"child" in seen, "the loop does not work in the forked child"
            return d.fileno()

        child_fd = in_child(child)
        got = events(loop.backend)
        assert child_fd not in got or child_fd in loop.descriptor_map, (
            f"the child's registration of fd {child_fd} reached the parent: {got}")
        a.send(b"parent")
        end = time.monotonic() + DEADLINE
        while b"parent" not in seen and time.monotonic() < end:
            loop.run_once(0.1)
        assert seen == [b"parent"], seen


# -- files -----------------------------------------------------------------------------


@group("files")
class TestFiles:
    def test_regular_file_is_refused(self, loop: Any, pairs: Any) -> None:
        import danga

        seen: list[int] = []

        class Reader(danga.Socket):
            def event_read(self) -> None:
                seen.append(len(self.read(10) or b""))

        a, b = pairs()
        other = Reader(b, loop=loop)
        other.watch_read(True)
        with tempfile.TemporaryFile() as f:
            with pytest.raises(UnsupportedFileType) as info:
                danga.Socket(f, loop=loop)
            assert isinstance(info.value, OSError) and "regular file" in str(info.value)
            with pytest.raises(UnsupportedFileType):
                loop.other_fds[f.fileno()] = lambda mask: None
            assert f.fileno() not in loop.descriptor_map
            assert f.fileno() not in loop.other_fds
        a.send(b"x")  # the loop and its other socket still work
        end = time.monotonic() + DEADLINE
        while not seen and time.monotonic() < end:
            loop.run_once(0.1)
        assert seen == [1]

    @_POSIX_ONLY
    def test_directory_is_refused(self, loop: Any, tmp_path: Any) -> None:
        fd = os.open(tmp_path, os.O_RDONLY)
        try:
            with pytest.raises(UnsupportedFileType):
                loop.other_fds[fd] = lambda mask: None
            assert fd not in loop.other_fds
        finally:
            os.close(fd)


# -- pipes -----------------------------------------------------------------------------


@group("pipes")
@_POSIX_ONLY
class TestPipes:
    def test_pipe_readable_and_writable(self, poller: Poller,
                                        pipe: tuple[int, int]) -> None:
        r, w = pipe
        poller.modify(r, 0, READ)
        poller.modify(w, 0, WRITE)
        got = events(poller, DEADLINE)
        assert r not in got and got.get(w, 0) & WRITE, got
        os.write(w, b"x")
        assert wait_for(poller, r, READ) & READ
        assert os.read(r, 10) == b"x"
        assert r not in events(poller)

    def test_pipe_level_triggered(self, poller: Poller, pipe: tuple[int, int]) -> None:
        r, w = pipe
        poller.modify(r, 0, READ)
        os.write(w, b"12")
        wait_for(poller, r, READ)
        assert os.read(r, 1) == b"1"
        assert events(poller).get(r, 0) & READ

    def test_pipe_writer_closed(self, poller: Poller, pipe: tuple[int, int]) -> None:
        r, w = pipe
        poller.modify(r, 0, READ)
        os.close(w)
        assert wait_for(poller, r, READ | HUP) & (READ | HUP)
        assert os.read(r, 10) == b""

    def test_pipe_reader_closed(self, poller: Poller, pipe: tuple[int, int]) -> None:
        r, w = pipe
        poller.modify(w, 0, WRITE)
        os.close(r)
        assert wait_for(poller, w, WRITE | ERR | HUP)
        with pytest.raises(BrokenPipeError):
            os.write(w, b"x")

    def test_pipe_full_is_not_writable(self, poller: Poller, pipe: tuple[int, int]) -> None:
        r, w = pipe
        poller.modify(w, 0, WRITE)
        with contextlib.suppress(BlockingIOError):
            while True:
                os.write(w, b"x" * 65536)
        assert not events(poller).get(w, 0) & WRITE
        end = time.monotonic() + DEADLINE
        while not events(poller).get(w, 0) & WRITE:
            with contextlib.suppress(BlockingIOError):
                os.read(r, 1 << 20)
            assert time.monotonic() < end


# -- close -----------------------------------------------------------------------------


@group("close")
class TestClose:
    def test_methods_raise_after_close(self, poller_cls: type[Poller],
                                       sockpair: Pair) -> None:
        p = poller_cls()
        fd = sockpair[1].fileno()
        p.modify(fd, 0, READ)
        p.close()
        for call in (lambda: p.modify(fd, READ, 0), lambda: p.modify(fd, 0, WRITE),
                     lambda: p.modify(fd, READ, WRITE), lambda: p.poll(0),
                     lambda: p.poll(0.01), lambda: p.poll(None)):
            with pytest.raises(RuntimeError):
                call()

    def test_close_is_idempotent(self, poller_cls: type[Poller]) -> None:
        p = poller_cls()
        p.close()
        p.close()
        with pytest.raises(RuntimeError):
            p.poll(0)

    def test_close_leaves_registered_fds_open(self, poller_cls: type[Poller],
                                              sockpair: Pair) -> None:
        a, b = sockpair
        p = poller_cls()
        p.modify(b.fileno(), 0, READ)
        p.close()
        a.send(b"x")  # danga never closes an fd it does not own
        assert recv_wait(b, 10) == b"x"

    def test_new_poller_after_close(self, poller_cls: type[Poller], sockpair: Pair) -> None:
        a, b = sockpair
        p = poller_cls()
        p.modify(b.fileno(), 0, READ)
        p.close()
        q = poller_cls()
        try:
            q.modify(b.fileno(), 0, READ)
            a.send(b"x")
            assert wait_for(q, b.fileno(), READ)
        finally:
            q.close()

    def test_probe_and_declarations(self, poller_cls: type[Poller]) -> None:
        from ..poller import SUPPORTED_API_VERSIONS

        poller_cls.probe()  # it is in the matrix, so it must work here
        assert isinstance(poller_cls.name, str) and poller_cls.name
        assert isinstance(poller_cls.priority, int)
        assert poller_cls.api_version in SUPPORTED_API_VERSIONS
        capabilities(poller_cls)  # raises TypeError for badly typed declarations
        p = poller_cls()
        try:
            assert isinstance(p, Poller)
        finally:
            p.close()

    @pytest.mark.danga_requires("embeddable", reason="the backend declares embeddable = "
                                "False: it has no fileno() another loop could watch")
    def test_embeddable_means_a_pollable_fileno(self, poller_cls: type[Poller],
                                                sockpair: Pair) -> None:
        # A backend that declares embeddable = True has a fileno() that another loop can
        # watch: readable exactly when this poller has an event to report.
        p: Any = poller_cls()
        try:
            fd = p.fileno()
            a, b = sockpair
            p.modify(b.fileno(), 0, READ)
            assert not select.select([fd], [], [], 0)[0], "readable with nothing pending"
            a.send(b"x")
            assert select.select([fd], [], [], DEADLINE)[0], "an event did not show"
        finally:
            p.close()


# -- scale -----------------------------------------------------------------------------


@group("scale")
@_PROCESS_GLOBAL
@_POSIX_ONLY
class TestScale:
    @pytest.mark.danga_requires(max_fd=2100, reason="the backend declares a max_fd below "
                                "2100 (select: FD_SETSIZE); test_high_fd checks the refusal")
    def test_many_fds(self, poller: Poller) -> None:
        n = 2000  # registered fds: 1000 socket pairs, both ends
        with nofile_at_least(n + 256):
            made: list[Pair] = []
            try:
                for _ in range(n // 2):
                    _new_pair(made)
                for a, b in made:
                    poller.modify(a.fileno(), 0, READ | WRITE)
                    poller.modify(b.fileno(), 0, READ | WRITE)
                got = events(poller, DEADLINE)
                assert len(got) == n, f"one poll must return every ready fd: {len(got)}/{n}"
                assert all(m & WRITE for m in got.values())
                for a, _ in made:
                    a.send(b"x")
                got = events(poller, DEADLINE)
                assert len(got) == n
                readable = {fd for fd, m in got.items() if m & READ}
                assert readable == {b.fileno() for _, b in made}
                for _, b in made[::2]:
                    poller.modify(b.fileno(), READ | WRITE, 0)
                got = events(poller, DEADLINE)
                assert len(got) == n - n // 4
            finally:
                _close_all(made)

    def test_high_fd(self, poller: Poller, poller_cls: type[Poller], loop: Any,
                     pairs: Any) -> None:
        # No limit declared: a high fd works. A declared max_fd: the core refuses higher
        # fds at registration with FdOutOfRange, and no other fd is disturbed.
        import fcntl

        max_fd = capabilities(poller_cls).max_fd
        with nofile_at_least(2048):
            a, b = pairs()
            low_a, low_b = pairs()
            poller.modify(low_b.fileno(), 0, READ)
            high = fcntl.fcntl(b.fileno(), fcntl.F_DUPFD, 1500)
            try:
                if max_fd is not None and high >= max_fd:
                    with pytest.raises(FdOutOfRange) as info:
                        loop.other_fds[high] = lambda mask: None
                    assert str(high) in str(info.value)
                    assert high not in loop.other_fds
                else:
                    poller.modify(high, 0, READ)
                low_a.send(b"x")
                a.send(b"y")
                got = events(poller, DEADLINE)
                assert got.get(low_b.fileno(), 0) & READ, f"other fds disturbed: {got}"
                if max_fd is None or high < max_fd:
                    assert wait_for(poller, high, READ) & READ
                    poller.modify(high, READ, 0)
                assert events(poller).get(low_b.fileno(), 0) & READ
            finally:
                os.close(high)

    def test_fd_numbers_are_not_reused_wrongly(self, poller: Poller, pairs: Any) -> None:
        # Register, remove and re-register many short-lived sockets: the kernel reuses
        # numbers, and no stale interest may survive a removal.
        for _ in range(50):
            a, b = pairs()
            poller.modify(b.fileno(), 0, READ)
            a.send(b"x")
            assert wait_for(poller, b.fileno(), READ)
            poller.modify(b.fileno(), READ, 0)
            a.close()
            b.close()
        assert events(poller) == {}
