"""Exceptions from callbacks: the default handler logs and closes the object whose
callback raised; set_exception_handler replaces that completely (every
backend). Danga let them propagate out of EventLoop."""

from __future__ import annotations

import logging
import os

import pytest

import danga
from danga import ERR
from danga.testing import run_until
from danga_helpers import Recorder, Spy, nb_pair


class Boom(Exception):
    pass


def _raise(*_):
    raise Boom("boom")


def _errors(caplog):
    return [r for r in caplog.records if r.name == "danga" and r.levelno >= logging.ERROR]


@pytest.mark.parametrize("event", ["read", "write", "err", "hup"])
def test_default_logs_and_closes_the_object_and_the_loop_goes_on(loop, caplog, event):
    a, b = nb_pair()
    c, d = nb_pair()
    bad = Recorder(a, loop=loop)
    good = Recorder(c, loop=loop)
    bad.on[event] = _raise
    for obj in (bad, good):
        obj.watch_read(True)
        obj.watch_write(True)
    spy = Spy(loop, fast=True)
    loop.run_once(0)
    spy.inject = [(bad.fd, danga.READ | danga.WRITE | ERR | danga.HUP)]
    loop.run_once(0)
    assert bad.closed and bad.close_reason == "exception"
    assert bad.log[-1] == event  # nothing after the handler that raised
    (rec,) = _errors(caplog)
    assert f"event_{event}" in rec.getMessage()
    assert rec.exc_info and rec.exc_info[0] is Boom
    n = len(good.log)
    loop.run_once(0)
    assert len(good.log) > n and not good.closed
    b.close()
    d.close()


def test_timer_exception_is_logged_and_the_loop_goes_on(loop, caplog):
    fired = []
    loop.add_timer(0, _raise)
    loop.add_timer(0, fired.append, "next")
    loop.run_once(0)
    assert fired == ["next"]
    (rec,) = _errors(caplog)
    assert "timer" in rec.getMessage() and rec.exc_info[0] is Boom


def test_other_fd_exception_is_logged_and_the_loop_goes_on(loop, caplog):
    r, w = os.pipe()
    loop.add_other_fds({r: _raise})
    os.write(w, b"x")
    run_until(loop, lambda: _errors(caplog))
    (rec, *_) = _errors(caplog)
    assert "other_fds" in rec.getMessage() and rec.exc_info[0] is Boom
    # The default handler stops a callback that raises every time: the fd is no longer
    # watched (logged once, not once per iteration), and it is never closed.
    assert r not in loop.other_fds
    for _ in range(5):
        loop.run_once(0)
    assert len(_errors(caplog)) == 1
    os.fstat(r)  # still open: danga does not own it
    os.close(r)
    os.close(w)


def test_post_loop_callback_exceptions(loop, caplog):
    a, b = nb_pair()
    obj = danga.Socket(a, loop=loop)
    obj.set_post_loop_callback(_raise)
    calls = []
    loop.set_post_loop_callback(lambda *_: calls.append(1) or True)
    assert loop.run_once(0) is True
    assert obj.closed and obj.close_reason == "exception"
    assert calls == [1]
    assert "post-loop" in _errors(caplog)[0].getMessage()
    loop.set_post_loop_callback(_raise)
    caplog.clear()
    loop.run_once(0)
    assert "post-loop" in _errors(caplog)[0].getMessage()
    b.close()


def test_custom_handler_gets_the_context_and_replaces_the_default(loop, caplog):
    a, b = nb_pair()
    seen = []
    loop.set_exception_handler(lambda lp, ctx: seen.append((lp, ctx)))
    obj = Recorder(a, loop=loop)
    obj.on["read"] = _raise
    obj.watch_read(True)
    b.send(b"x")
    run_until(loop, lambda: seen)
    lp, ctx = seen[0]
    assert lp is loop
    assert set(ctx) >= {"message", "exception", "object", "callback"}
    assert isinstance(ctx["exception"], Boom)
    assert ctx["object"] is obj
    assert ctx["callback"] == obj.event_read
    assert isinstance(ctx["message"], str) and ctx["message"]
    assert not obj.closed  # the default would have closed it
    assert _errors(caplog) == []  # nor logged
    seen.clear()
    loop.add_timer(0, _raise)
    loop.run_once(0)
    assert seen[0][1]["object"] is None and seen[0][1]["callback"] is _raise
    obj.close()
    b.close()


def test_handler_that_raises_stops_run(loop):
    def handler(lp, ctx):
        raise ctx["exception"]

    loop.set_exception_handler(handler)
    loop.add_timer(0, _raise)
    loop.set_loop_timeout(0)
    loop.set_post_loop_callback(lambda *_: True)
    with pytest.raises(Boom):
        loop.run()
    # The loop can run again afterwards.
    loop.set_post_loop_callback(lambda *_: False)
    loop.run()


def test_none_restores_the_default(loop, caplog):
    a, b = nb_pair()
    loop.set_exception_handler(lambda lp, ctx: None)
    loop.set_exception_handler(None)
    obj = danga.Socket(a, loop=loop)
    obj.set_post_loop_callback(_raise)
    loop.run_once(0)
    assert obj.closed and obj.close_reason == "exception"
    assert _errors(caplog)
    with pytest.raises(TypeError):
        loop.set_exception_handler("not callable")
    b.close()


def test_base_class_event_read_is_an_error_that_closes(loop, caplog):
    """Danga died with "Base class event_read called"; danga raises NotImplementedError,
    which the default handler logs before closing the object."""
    a, b = nb_pair()
    obj = danga.Socket(a, loop=loop)
    obj.watch_read(True)
    b.send(b"x")
    run_until(loop, lambda: obj.closed)
    assert obj.close_reason == "exception"
    assert _errors(caplog)[0].exc_info[0] is NotImplementedError
    b.close()
