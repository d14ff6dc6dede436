"""Shared helpers for the reliability matrix, imported by its tests.

Sizes: the default run is sized for CI (the whole suite stays under ~3 minutes on two
cores); ``DANGA_LONG=1`` runs the long sizes. See docs/reliability.md.
"""

from __future__ import annotations

import gc
import os
import socket
import sys
import weakref
from typing import Any

import hypothesis
import pytest

import danga

LONG = os.environ.get("DANGA_LONG", "").strip() not in ("", "0")

# hypothesis profiles: "danga-ci" (default) and "danga-long" (DANGA_LONG=1).
hypothesis.settings.register_profile(
    "danga-ci", max_examples=30, stateful_step_count=30, deadline=None,
    suppress_health_check=[hypothesis.HealthCheck.too_slow],
)
# Loaded explicitly by the tests that use them (settings(get_profile(...))), never
# process-wide: other people's hypothesis tests share the worker.
hypothesis.settings.register_profile(
    "danga-long", max_examples=300, stateful_step_count=60, deadline=None,
    suppress_health_check=[hypothesis.HealthCheck.too_slow],
)


def size(default: int, long: int) -> int:
    """*long* under DANGA_LONG=1, else *default*."""
    return long if LONG else default


def open_fds() -> set[int]:
    """The fd numbers open in this process now (Linux: /proc/self/fd)."""
    # listdir's own directory fd is in the listing but closed by the time we check it.
    names = os.listdir("/proc/self/fd") if os.path.isdir("/proc/self/fd") \
        else [str(n) for n in range(4096)]
    found = set()
    for name in names:
        try:
            os.fstat(int(name))
        except OSError:
            continue
        found.add(int(name))
    return found


def all_dead(refs: list[weakref.ref[Any]]) -> list[Any]:
    """Collect garbage and return the objects that are still alive."""
    gc.collect()
    return [r() for r in refs if r() is not None]


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """A connected TCP pair over 127.0.0.1."""
    lsock = socket.socket()
    try:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)
        a = socket.create_connection(lsock.getsockname())
        b, _ = lsock.accept()
    finally:
        lsock.close()
    return a, b


def recv_available(sock: socket.socket, limit: int = 1 << 20) -> bytes:
    """Whatever *sock* (non-blocking) has now, b"" if nothing, up to *limit* bytes."""
    out = bytearray()
    while len(out) < limit:
        try:
            chunk = sock.recv(min(65536, limit - len(out)))
        except BlockingIOError:
            break
        if not chunk:
            break
        out += chunk
    return bytes(out)


class Recorder(danga.Socket):
    """Reads everything, records events, and notes any callback on a closed object."""

    __slots__ = ("events", "got", "late")

    def __init__(self, sock: Any, *, loop: danga.Loop, read: bool = True) -> None:
        super().__init__(sock, loop=loop)
        self.events: list[str] = []
        self.got = bytearray()
        self.late: list[str] = []
        if read:
            self.watch_read(True)

    def _note(self, what: str) -> None:
        if self.closed:
            self.late.append(what)
        self.events.append(what)

    def event_read(self) -> None:
        self._note("read")
        data = self.read(65536)
        if data is None:
            self.close("eof")
        elif data:
            self.got += data

    def event_write(self) -> None:
        self._note("write")
        super().event_write()

    def event_err(self) -> None:
        self._note("err")
        super().event_err()

    def event_hup(self) -> None:
        self._note("hup")
        super().event_hup()


@pytest.fixture
def long_mode() -> bool:
    return LONG


def python() -> str:
    return sys.executable


PROFILE = "danga-long" if LONG else "danga-ci"


def report(line: str) -> None:
    """Print a figure, and append it to the file named by DANGA_RELIABILITY_FIGURES (so
    that figures survive pytest-xdist, which swallows the workers' output)."""
    print(f"\n{line}")
    path = os.environ.get("DANGA_RELIABILITY_FIGURES")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")
