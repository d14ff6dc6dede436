"""Small helpers shared by the Socket/Loop behaviour tests (not a test module).

Everything here works through the public Socket/Loop API with real sockets; the spies
wrap the *instance* attributes ``loop.backend.modify`` / ``loop.backend.poll``, which
the loop looks up on each use.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import danga

DEADLINE = 5.0


def watch_flags(obj: danga.Socket) -> str:
    """The "R"/"W" flags that as_string() shows (Danga's {event_watch} & POLLIN|POLLOUT)."""
    text = obj.as_string()
    return text[text.index("(") + 1:text.index(")")]


def nb_pair() -> tuple[socket.socket, socket.socket]:
    """An AF_UNIX socketpair whose second end (the test's peer) is non-blocking too."""
    a, b = socket.socketpair()
    b.setblocking(False)
    return a, b


def tcp_pair(family: int = socket.AF_INET) -> tuple[socket.socket, socket.socket]:
    """(client, accepted server end) over loopback on an ephemeral port."""
    host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    with socket.socket(family, socket.SOCK_STREAM) as lsn:
        lsn.bind((host, 0))
        lsn.listen(1)
        cli = socket.socket(family, socket.SOCK_STREAM)
        cli.connect(lsn.getsockname()[:2])
        srv, _ = lsn.accept()
    return cli, srv


def have_ipv6() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def drain(sock: socket.socket) -> bytes:
    """Everything readable now from a non-blocking peer (up to EOF or a reset)."""
    out = bytearray()
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except (BlockingIOError, ConnectionResetError):
            return bytes(out)
        if not chunk:
            return bytes(out)
        out += chunk


def shrink(sock: socket.socket) -> None:
    """Make the kernel buffers small so that a few writes fill them."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)


def fill(obj: danga.Socket, chunk: int = 65536) -> int:
    """Write b"f"s through *obj* until write() queues; returns how many bytes were given
    to write() (sent or queued), i.e. the stream offset where the next write's data lands.

    Raises AssertionError if the kernel never pushes back."""
    total = 0
    for _ in range(10_000):
        ok = obj.write(b"f" * chunk)
        total += chunk
        if not ok:
            return total
    raise AssertionError("the socket never filled up")


def collect(loop: danga.Loop, peer: socket.socket, want: int,
            timeout: float = DEADLINE) -> bytes:
    """Run *loop* while reading *peer* until *want* bytes arrived."""
    got = bytearray()

    def enough() -> bool:
        got.extend(drain(peer))
        return len(got) >= want

    from danga.testing import run_until
    run_until(loop, enough, timeout)
    return bytes(got)


def fd_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError as exc:
        assert exc.errno == errno.EBADF
        return False
    return True


class Spy:
    """Counts (and records) calls of ``loop.backend.modify`` and ``loop.backend.poll``.

    ``inject`` is a list of (fd, mask) events that replace those fds' entries in the next
    poll's result (once), to drive the core's dispatch with bits a backend cannot
    produce (select has no ERR/HUP)."""

    def __init__(self, loop: danga.Loop, *, fast: bool = False) -> None:
        self.loop = loop
        self.modifies: list[tuple[int, int, int]] = []
        self.timeouts: list[float | None] = []
        self.events: list[list[tuple[int, int]]] = []
        self.inject: list[tuple[int, int]] = []
        self.fast = fast  # record the wanted timeout but poll with 0 (keeps tests quick)
        backend = loop.backend
        real_modify: Callable[[int, int, int], None] = backend.modify
        real_poll: Callable[[float | None], list[tuple[int, int]]] = backend.poll

        def modify(fd: int, old: int, new: int) -> None:
            self.modifies.append((fd, old, new))
            real_modify(fd, old, new)

        def poll(timeout: float | None) -> list[tuple[int, int]]:
            self.timeouts.append(timeout)
            events = list(real_poll(0 if self.fast else timeout))
            if self.inject:
                faked = {fd for fd, _ in self.inject}
                events = [ev for ev in events if ev[0] not in faked] + self.inject
                self.inject = []
            self.events.append(events)
            return events

        backend.modify = modify  # type: ignore[method-assign]
        backend.poll = poll  # type: ignore[method-assign]


class Recorder(danga.Socket):
    """A Socket that logs its events in ``self.log`` (a list shared by tests)."""

    def __init__(self, sock: Any, *, loop: danga.Loop, log: list[Any] | None = None,
                 name: str = "") -> None:
        super().__init__(sock, loop=loop)
        self.log = [] if log is None else log
        self.name = name
        self.on: dict[str, Callable[[Recorder], Any]] = {}

    def _hit(self, what: str) -> None:
        self.log.append((self.name, what) if self.name else what)
        action = self.on.get(what)
        if action is not None:
            action(self)

    def event_read(self) -> None:
        self._hit("read")

    def event_write(self) -> None:
        self._hit("write")

    def event_err(self) -> None:
        self._hit("err")

    def event_hup(self) -> None:
        self._hit("hup")


def monotonic_deadline(seconds: float = DEADLINE) -> Callable[[], bool]:
    end = time.monotonic() + seconds
    return lambda: time.monotonic() > end
