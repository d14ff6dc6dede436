"""Registration: the descriptor map, ERR|HUP-only interest, batched watch changes,
duplicate fds, and wrapping pipes and other fileno() objects (on every backend)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import pytest

import danga
from danga import ERR, HUP, READ, WRITE
from danga.testing import run_until
from danga_helpers import Recorder, Spy, nb_pair, watch_flags


def test_constructing_registers_with_err_hup_only(loop):
    a, b = nb_pair()
    spy = Spy(loop)
    obj = Recorder(a, loop=loop)
    assert loop.descriptor_map == {a.fileno(): obj}
    assert loop.descriptor_map[obj.fd] is obj
    assert obj.fd == a.fileno() and obj.sock is a and obj.loop is loop
    assert obj.closed is False and obj.write_buf_size == 0
    # Registration is batched like any interest change: nothing until the loop polls,
    # then one registration with the kernel, asking for ERR|HUP only.
    assert spy.modifies == []
    loop.run_once(0)
    assert spy.modifies == [(a.fileno(), 0, ERR | HUP)]
    assert watch_flags(obj) == ""
    # Readable data does not reach a fresh object: it watches neither read nor write.
    b.send(b"x")
    loop.run_once(0.05)
    assert obj.log == []
    obj.watch_read(True)
    run_until(loop, lambda: obj.log)
    assert obj.log[0] == "read"
    b.close()


def test_socket_sets_non_blocking_itself(loop):
    a, b = socket.socketpair()
    assert a.getblocking()
    Recorder(a, loop=loop)
    assert not a.getblocking()
    b.close()


def test_watch_changes_cost_no_syscall_when_nothing_changes(loop):
    a, b = nb_pair()
    obj = Recorder(a, loop=loop)
    loop.run_once(0)  # the registration itself
    spy = Spy(loop)
    # Unchanged watches: nothing to flush.
    obj.watch_read(False)
    obj.watch_write(False)
    loop.run_once(0)
    assert spy.modifies == []
    # On and off within one iteration: no system call either.
    obj.watch_read(True)
    obj.watch_write(True)
    obj.watch_read(False)
    obj.watch_write(False)
    loop.run_once(0)
    assert spy.modifies == []
    # A real change: exactly one modify, just before the poll, even if asked twice.
    obj.watch_read(True)
    obj.watch_read(True)
    assert spy.modifies == []  # batched: nothing yet
    loop.run_once(0)
    assert spy.modifies == [(obj.fd, ERR | HUP, ERR | HUP | READ)]
    obj.watch_read(True)
    loop.run_once(0)
    assert len(spy.modifies) == 1
    obj.watch_write(True)
    loop.run_once(0)
    assert spy.modifies[-1] == (obj.fd, ERR | HUP | READ, ERR | HUP | READ | WRITE)
    assert watch_flags(obj) == "RW"
    b.close()


def test_second_live_object_on_same_fd_raises(loop):
    a, b = nb_pair()
    first = Recorder(a, loop=loop)
    with pytest.raises(ValueError, match=f"fd {a.fileno()} is already owned"):
        Recorder(a, loop=loop)
    assert loop.descriptor_map[a.fileno()] is first
    # A stolen socket may be wrapped again at once.
    sock = first.steal_socket()
    second = Recorder(sock, loop=loop)
    assert loop.descriptor_map[sock.fileno()] is second
    b.close()


def test_closed_or_fileless_objects_are_refused(loop):
    with pytest.raises(TypeError, match="fileno"):
        danga.Socket(42, loop=loop)
    s = socket.socket()
    s.close()
    with pytest.raises(ValueError, match="closed"):
        danga.Socket(s, loop=loop)
    assert loop.descriptor_map == {}


class _FdObject:
    """Any object with fileno(): the raw-fd case (pipes are read with os.read)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self.closed = False

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self._fd)


class PipeReader(danga.Socket):
    def __init__(self, sock, *, loop):
        super().__init__(sock, loop=loop)
        self.got = bytearray()
        self.eof = False
        self.watch_read(True)

    def event_read(self):
        data = self.read(4096)
        if data is None:
            self.eof = True
            self.close("eof")
        elif data:
            self.got += data


def test_wrapping_pipes_reads_and_writes(loop):
    r, w = os.pipe()
    assert os.get_blocking(r) and os.get_blocking(w)
    reader = PipeReader(_FdObject(r), loop=loop)
    writer = danga.Socket(os.fdopen(w, "wb", buffering=0), loop=loop)
    assert not os.get_blocking(r) and not os.get_blocking(w)
    assert writer.write(b"through ") is True
    assert writer.write(bytearray(b"a pipe")) is True
    run_until(loop, lambda: bytes(reader.got) == b"through a pipe")
    writer.close()
    # A pipe's hang-up is HUP on epoll/poll (default event_hup closes) and EOF on select.
    run_until(loop, lambda: reader.closed)
    assert reader.close_reason in ("eof", "event_hup")
    loop.run_once(0)
    assert loop.descriptor_map == {}
    assert writer.sock is None


def test_pipe_write_fills_and_flushes(loop):
    r, w = os.pipe()
    writer = danga.Socket(_FdObject(w), loop=loop)
    os.set_blocking(r, False)
    queued = False
    for _ in range(1000):
        if not writer.write(b"p" * 65536):
            queued = True
            break
    assert queued and writer.write_buf_size > 0
    assert "W" in watch_flags(writer)

    got = bytearray()

    def drained() -> bool:
        try:
            while True:
                chunk = os.read(r, 1 << 20)
                if not chunk:
                    break
                got.extend(chunk)
        except BlockingIOError:
            pass
        return writer.write_buf_size == 0

    run_until(loop, drained)
    assert "W" not in watch_flags(writer)  # danga's own watch is released
    assert set(got) == {ord("p")}
    os.close(r)


def test_fd_number_zero_works(danga_backend, poller_cls, tmp_path):
    """Danga warned "undef sock and/or fd" for fd 0 and never unregistered it."""
    script = textwrap.dedent(f"""
        import importlib, os, socket, sys
        sys.path[:0] = {sys.path!r}
        import danga
        mod = importlib.import_module({poller_cls.__module__!r})
        cls = getattr(mod, {poller_cls.__qualname__!r})
        loop = danga.Loop(cls)
        os.close(0)
        a, b = socket.socketpair()
        assert a.fileno() == 0, a.fileno()
        got = []
        class R(danga.Socket):
            def event_read(self):
                got.append(self.read(10))
        obj = R(a, loop=loop)
        obj.watch_read(True)
        b.send(b"zero")
        for _ in range(100):
            loop.run_once(0.05)
            if got:
                break
        assert got == [b"zero"], got
        obj.close()
        loop.run_once(0)
        assert 0 not in loop.descriptor_map
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=30, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_new_object_on_reused_fd_gets_no_stale_event(loop):
    """The first handler of a batch closes its brother and opens a new socket: the
    brother's queued event is skipped, and the new socket cannot have taken the
    brother's fd number (deferred close), so it gets no stale event (C4)."""
    a, b = nb_pair()
    c, d = nb_pair()
    log: list = []
    one = Recorder(a, loop=loop, log=log, name="one")
    two = Recorder(c, loop=loop, log=log, name="two")
    brothers = {one: two, two: one}
    keep: list = []

    def close_brother_and_reopen(me):
        if keep:
            return
        brother = brothers[me]
        brother.close()
        x, y = socket.socketpair()
        assert brother.fd not in (x.fileno(), y.fileno())
        new = Recorder(x, loop=loop, log=log, name="new")
        new.watch_read(True)
        y.send(b"3")
        keep.extend([brother, new, y])

    for obj in (one, two):
        obj.watch_read(True)
        obj.on["read"] = close_brother_and_reopen
    b.send(b"1")
    d.send(b"2")
    # Both are readable before the first poll, so they come in one batch.
    loop.run_once(1.0)
    assert len(log) == 1, log
    brother = keep[0]
    assert brother.closed and brother.name not in {n for n, _ in log}
    run_until(loop, lambda: ("new", "read") in log)
    assert [n for n, _ in log].count(brother.name) == 0
    b.close()
    d.close()
