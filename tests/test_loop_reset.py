"""reset(): forget everything and build a fresh poller chosen the same way; large
batches (on every backend)."""

from __future__ import annotations

import logging
import os
import socket

import pytest

import danga
from danga import backends
from danga_helpers import fd_open, nb_pair


def test_reset_forgets_everything(loop):
    a, b = nb_pair()
    r, w = os.pipe()
    obj = danga.Socket(a, loop=loop)
    obj.watch_read(True)
    obj.set_post_loop_callback(lambda *_: False)
    obj.push_back_read(b"x")
    closing = danga.Socket(socket.socketpair()[0], loop=loop)
    closing.close()
    loop.add_other_fds({r: lambda m: None})
    fired = []
    loop.add_timer(0, fired.append, 1)
    loop.set_post_loop_callback(lambda *_: False)
    loop.set_loop_timeout(0)
    loop.enable_profiling()
    loop.set_exception_handler(lambda lp, ctx: None)
    dmap, other, old = loop.descriptor_map, loop.other_fds, loop.backend

    loop.reset()

    assert loop.descriptor_map is dmap and dmap == {}  # cleared in place (t/10-events.t)
    assert loop.other_fds is other and other == {}
    assert loop.to_close() == [] and loop.timers() == 0 and loop.watched_sockets() == 0
    assert loop.profiling_data() == {}
    assert loop.backend is not old and type(loop.backend) is type(old)
    with pytest.raises(RuntimeError):
        old.poll(0)  # the old poller is closed
    # Existing objects are forgotten, not closed; their fds stay open.
    assert not obj.closed and fd_open(a.fileno()) and fd_open(r)
    # Settings are back to their defaults: run_once returns True (no callbacks), the
    # timer never fires, and nothing is dispatched to the forgotten object.
    b.send(b"x")
    assert loop.run_once(0) is True
    assert fired == []
    # A fresh object on the forgotten fd is fine.
    again = danga.Socket(a, loop=loop)
    assert loop.descriptor_map == {a.fileno(): again}
    for fd in (r, w):
        os.close(fd)
    b.close()


def test_reset_restores_the_default_exception_handler(loop, caplog):
    seen = []
    loop.set_exception_handler(lambda lp, ctx: seen.append(ctx))
    loop.reset()
    loop.add_timer(0, lambda: 1 / 0)
    loop.run_once(0)
    assert seen == []
    assert any(r.levelno == logging.ERROR and r.exc_info[0] is ZeroDivisionError
               for r in caplog.records)


def test_reset_rebuilds_the_same_explicit_backend(poller_cls):
    loop = danga.Loop(poller_cls)
    try:
        loop.reset()
        assert type(loop.backend) is poller_cls
    finally:
        loop.close()


def test_reset_reopens_a_closed_loop(poller_cls):
    loop = danga.Loop(poller_cls)
    loop.close()
    loop.reset()
    try:
        assert not loop.closed
        assert loop.run_once(0) is True
    finally:
        loop.close()


@pytest.mark.parametrize("name", backends.available())
def test_reset_chooses_again_through_danga_backend(monkeypatch, name):
    """A loop built without a backend re-reads DANGA_BACKEND on reset()."""
    others = [n for n in backends.available() if n != name]
    monkeypatch.setenv("DANGA_BACKEND", name)
    loop = danga.Loop()
    try:
        assert loop.backend.name == name
        if others:
            monkeypatch.setenv("DANGA_BACKEND", others[0])
            loop.reset()
            assert loop.backend.name == others[0]
        monkeypatch.delenv("DANGA_BACKEND")
        loop.reset()
        assert loop.backend.name == backends.available()[0]  # automatic: the best
        by_name = danga.Loop(name)
        monkeypatch.setenv("DANGA_BACKEND", others[0] if others else name)
        by_name.reset()
        assert by_name.backend.name == name  # an explicit backend wins over the env
        by_name.close()
    finally:
        loop.close()


@pytest.mark.danga_requires(max_fd=2300, reason="the backend declares a max_fd "
                            "below the fds this needs")
def test_one_poll_reports_more_than_1000_ready_fds(loop):
    """Danga capped epoll batches at 1000 events; every backend returns them all."""
    n = 1100
    pairs = [socket.socketpair() for _ in range(n)]
    try:
        hits = []

        class W(danga.Socket):
            def event_write(self):
                hits.append(self.fd)
                self.watch_write(False)

        for a, _ in pairs:
            W(a, loop=loop).watch_write(True)
        loop.run_once(1.0)
        assert len(hits) == n
    finally:
        for obj in list(loop.descriptor_map.values()):
            obj.close()
        loop.run_once(0)
        for a, b in pairs:
            a.close()
            b.close()
