"""Danga::Socket's class-method names on danga.Socket act on the default loop, so Perl
code ports line by line (on every backend).

The ``default_loop`` fixture points ``danga.get_loop()`` at a fresh Loop of this test's
backend and closes it afterwards, so no test touches the process's real default loop.
"""

from __future__ import annotations

import os

import danga
import danga.loop
from danga import Socket
from danga.testing import run_until
from danga_helpers import nb_pair


def test_get_loop_and_loop_none_use_the_default(default_loop):
    assert danga.get_loop() is default_loop
    a, b = nb_pair()
    obj = Socket(a)
    assert obj.loop is default_loop
    assert Socket.DescriptorMap() is default_loop.descriptor_map
    assert Socket.DescriptorMap() == {a.fileno(): obj}
    assert Socket.WatchedSockets() == 1
    obj.close()
    assert Socket.ToClose() == [obj]
    b.close()


def test_have_epoll_exactly_when_epoll(default_loop, danga_backend):
    assert Socket.HaveEpoll() is (default_loop.backend.name == "epoll")
    assert Socket.HaveEpoll() is (danga_backend == "epoll")
    assert default_loop.have_epoll() is Socket.HaveEpoll()


def test_event_loop_add_timer_and_set_post_loop_callback(default_loop):
    fired = []
    t = Socket.AddTimer(0.01, fired.append, "timer")
    assert isinstance(t, danga.Timer)
    Socket.AddTimer(0.02, fired.append, "cancelled").cancel()
    Socket.SetLoopTimeout(10)
    Socket.SetPostLoopCallback(lambda dmap, other: not fired)
    Socket.EventLoop()
    assert fired == ["timer"]


def test_set_post_loop_callback_on_an_instance_is_per_object(default_loop):
    a, b = nb_pair()
    obj = Socket(a)
    calls = []
    obj.SetPostLoopCallback(lambda dmap, other: calls.append("obj") and False)
    Socket.SetPostLoopCallback(lambda dmap, other: calls.append("global") or True)
    Socket.SetLoopTimeout(0)
    Socket.EventLoop()
    assert calls == ["obj"]  # the per-object callback, and its short-circuit
    b.close()


def test_set_loop_timeout(default_loop):
    assert Socket.SetLoopTimeout(0) == 0
    calls = []
    Socket.SetPostLoopCallback(lambda *_: calls.append(1) or len(calls) < 5)
    Socket.EventLoop()
    assert len(calls) == 5


def test_other_fds_and_add_other_fds(default_loop):
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    got = []
    live = Socket.OtherFds()
    assert live is default_loop.other_fds and live == {}
    Socket.AddOtherFds({r1: lambda m: got.append(("one", os.read(r1, 10)))})
    Socket.AddOtherFds({r2: lambda m: got.append(("two", os.read(r2, 10)))})
    assert set(Socket.OtherFds()) == {r1, r2}
    os.write(w1, b"1")
    os.write(w2, b"2")
    run_until(default_loop, lambda: len(got) == 2)
    assert sorted(got) == [("one", b"1"), ("two", b"2")]
    # With a mapping, OtherFds replaces the whole map.
    assert Socket.OtherFds({r2: lambda m: None}) is live
    assert set(live) == {r2}
    Socket.OtherFds({})
    for fd in (r1, w1, r2, w2):
        os.close(fd)


def test_profiling_names(default_loop):
    a, b = nb_pair()

    class Prof(Socket):
        def event_read(self):
            self.read(10)

    obj = Prof(a)
    obj.watch_read(True)
    assert Socket.EnableProfiling() is True
    b.send(b"x")
    run_until(default_loop, lambda: "Prof-read" in Socket.ProfilingData())
    data = Socket.ProfilingData()
    assert data is default_loop.profiling_data()
    assert data["Prof-read"][2] == 1
    Socket.DisableProfiling()
    b.send(b"y")
    default_loop.run_once(0.1)
    assert data["Prof-read"][2] == 1
    b.close()


def test_debug_msg_name(default_loop, capsys):
    Socket.DebugMsg("n=%d", 3)
    assert capsys.readouterr().err == ">>> n=3\n"


def test_reset_name(default_loop):
    a, b = nb_pair()
    Socket(a)
    old = default_loop.backend
    dmap = Socket.DescriptorMap()
    Socket.Reset()
    assert dmap == {} and Socket.DescriptorMap() is dmap  # cleared in place
    assert default_loop.backend is not old
    assert type(default_loop.backend) is type(old)
    assert Socket.WatchedSockets() == 0
    b.close()
    a.close()
