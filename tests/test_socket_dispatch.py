"""Dispatch: read -> write -> err -> hup per fd, each skipped once the object is closed;
events of fds with no object; profiling (on every backend).

select cannot produce ERR or HUP, so the four-bit cases inject the event into the
backend's result (the loop's dispatch is what is under test); the rest are real events.
"""

from __future__ import annotations

import logging
import os

import pytest

from danga import ERR, HUP, READ, WRITE
from danga.testing import run_until
from danga_helpers import Recorder, Spy, fd_open, nb_pair

ALL = READ | WRITE | ERR | HUP


def test_real_read_and_write_in_order(loop):
    a, b = nb_pair()
    obj = Recorder(a, loop=loop)
    obj.watch_read(True)
    obj.watch_write(True)
    b.send(b"x")
    loop.run_once(1.0)
    assert obj.log[:2] == ["read", "write"]
    b.close()


def test_four_bits_dispatch_in_order(loop):
    a, b = nb_pair()
    obj = Recorder(a, loop=loop)
    obj.watch_read(True)
    obj.watch_write(True)
    spy = Spy(loop, fast=True)
    loop.run_once(0)  # flush the watches
    obj.log.clear()
    spy.inject = [(obj.fd, ALL)]
    loop.run_once(0)
    assert obj.log == ["read", "write", "err", "hup"]
    b.close()


@pytest.mark.parametrize("closer", ["read", "write", "err"])
def test_each_step_skipped_once_closed(loop, closer):
    a, b = nb_pair()
    obj = Recorder(a, loop=loop)
    obj.watch_read(True)
    obj.watch_write(True)
    spy = Spy(loop, fast=True)
    loop.run_once(0)
    obj.log.clear()
    obj.on[closer] = lambda me: me.close("done")
    spy.inject = [(obj.fd, ALL)]
    loop.run_once(0)
    order = ["read", "write", "err", "hup"]
    assert obj.log == order[: order.index(closer) + 1]
    b.close()


def test_bits_not_watched_are_not_dispatched(loop):
    """A mask is filtered by the object's interest (a stale WRITE after watch_write(0))."""
    a, b = nb_pair()
    obj = Recorder(a, loop=loop)
    spy = Spy(loop, fast=True)
    spy.inject = [(obj.fd, READ | WRITE)]
    loop.run_once(0)
    assert obj.log == []
    b.close()


def test_peer_close_reaches_the_object(loop):
    a, b = nb_pair()

    class Eof(Recorder):
        def event_read(self):
            super().event_read()
            if self.read(100) is None:
                self.close("eof")

    obj = Eof(a, loop=loop)
    obj.watch_read(True)
    b.close()
    run_until(loop, lambda: obj.closed)
    # epoll/poll may report READ|HUP: the read handler saw EOF and closed, so hup was
    # skipped; select reports readable only.
    assert obj.log == ["read"] and obj.close_reason == "eof"


def test_default_err_and_hup_close_the_object(loop):
    """Danga's base event_err/event_hup died; danga's close the object."""
    a, b = nb_pair()
    c, d = nb_pair()
    import danga
    one = danga.Socket(a, loop=loop)
    two = danga.Socket(c, loop=loop)
    spy = Spy(loop, fast=True)
    spy.inject = [(one.fd, ERR), (two.fd, HUP)]
    loop.run_once(0)
    assert one.closed and one.close_reason == "event_err"
    assert two.closed and two.close_reason == "event_hup"
    b.close()
    d.close()


def test_other_fd_gets_the_mask(loop):
    r, w = os.pipe()
    got = []
    loop.add_other_fds({r: got.append})
    os.write(w, b"x")
    run_until(loop, lambda: got)
    assert got[0] & READ == READ
    assert got[0] & ~(READ | HUP) == 0
    loop.set_other_fds({})
    os.close(r)
    os.close(w)


def test_unowned_fd_registration_removed_and_fd_not_closed(loop, caplog):
    """Deleting a descriptor-map entry by hand (Perlbal after steal_socket) leaves a
    registration nothing owns: its event is dropped with a debug log, the registration
    removed, and the fd is never closed (Danga POSIX::close'd it)."""
    a, b = nb_pair()
    obj = Recorder(a, loop=loop)
    obj.watch_read(True)
    loop.run_once(0)
    del loop.descriptor_map[obj.fd]
    spy = Spy(loop)
    b.send(b"x")
    caplog.set_level(logging.DEBUG, logger="danga")
    run_until(loop, lambda: spy.modifies)
    assert spy.modifies == [(a.fileno(), READ | ERR | HUP, 0)]
    assert any("nothing owns it" in r.getMessage() and r.levelno == logging.DEBUG
               for r in caplog.records)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert obj.log == []
    assert fd_open(a.fileno()) and a.fileno() != -1
    # Still readable, never reported again: the registration is gone.
    for _ in range(3):
        loop.run_once(0.01)
    assert sum(1 for ev in spy.events for fd, _ in ev if fd == a.fileno()) == 1
    assert a.recv(10) == b"x"
    a.close()
    b.close()


@pytest.mark.parametrize("mode", ["events", "errhup"])
def test_profiling_keys_and_counts(loop, mode):
    a, b = nb_pair()

    class Prof(Recorder):
        def event_read(self):
            super().event_read()
            self.read(100)

        def event_write(self):
            super().event_write()
            self.watch_write(False)

    obj = Prof(a, loop=loop)
    assert loop.profiling_data() == {}
    assert loop.enable_profiling() is True
    if mode == "events":
        obj.watch_read(True)
        obj.watch_write(True)
        b.send(b"x")
        run_until(loop, lambda: "read" in obj.log and "write" in obj.log)
        data = loop.profiling_data()
        assert set(data) == {"Prof-read", "Prof-write"}
        assert data["Prof-read"][2] == obj.log.count("read")
        assert data["Prof-write"][2] == 1
    else:
        spy = Spy(loop, fast=True)
        spy.inject = [(obj.fd, ERR | HUP)]
        loop.run_once(0)
        data = loop.profiling_data()
        assert set(data) == {"Prof-err", "Prof-hup"}
        assert data["Prof-err"][2] == data["Prof-hup"][2] == 1
    for user, system, calls in data.values():
        assert isinstance(user, float) and isinstance(system, float)
        assert user >= 0 and system >= 0 and isinstance(calls, int)
    assert loop.profiling_data() is data  # the live dict
    # Disabling keeps the data and stops counting.
    before = {k: v[2] for k, v in data.items()}
    loop.disable_profiling()
    obj.watch_read(True)
    b.send(b"y")
    n = obj.log.count("read")
    run_until(loop, lambda: obj.log.count("read") > n)
    assert {k: v[2] for k, v in data.items()} == before
    # Enabling again starts from scratch.
    loop.enable_profiling()
    assert loop.profiling_data() == {}
    b.close()


class _RawFd:
    """A raw fd with an honest close(): a second close of a reused number would show."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.closes = 0

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        self.closes += 1
        os.close(self.fd)


@pytest.mark.parametrize("touch", [False, True])
def test_fd_closed_behind_dangas_back_closes_its_object(loop, touch):
    """poll reports POLLNVAL (mapped to ERR), select fails EBADF; epoll and kqueue drop
    a closed fd silently, and the next watch change fails EBADF. In every case the object
    is closed once danga notices, the other sockets carry on, and danga never closes the
    fd number again (it may belong to someone else by then)."""
    a, b = nb_pair()
    c, d = nb_pair()
    raw = _RawFd(a.detach())
    obj = Recorder(raw, loop=loop)
    obj.watch_read(True)
    other = Recorder(c, loop=loop)
    other.watch_read(True)
    loop.run_once(0)
    os.close(raw.fd)  # behind danga's back
    if touch:
        obj.watch_write(True)
    d.send(b"for the other one")
    run_until(loop, lambda: "read" in other.log)
    if not obj.closed:
        obj.watch_write(not touch)  # epoll/kqueue never report it: a change notices
    run_until(loop, lambda: obj.closed)
    for _ in range(3):
        loop.run_once(0)
    assert raw.closes == 0
    assert obj.fd not in loop.descriptor_map
    b.close()
    d.close()
