"""Idle timeouts: set_idle_timeout(), max_idle_time, on_idle_timeout (docs/connect.md)."""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest

import danga
from danga.testing import run_until
from danga_helpers import drain, nb_pair


class Reader(danga.Socket):
    def __init__(self, sock: Any, *, loop: danga.Loop) -> None:
        super().__init__(sock, loop=loop)
        self.idle_calls: list[float] = []
        self.watch_read(True)

    def event_read(self) -> None:
        if self.read(65536) is None:
            self.close("eof")


class Keeper(Reader):
    """Keeps the connection when it goes idle."""

    def on_idle_timeout(self) -> None:
        self.idle_calls.append(time.monotonic())


class Perlbalish(Reader):
    max_idle_time = 0.2


def every(loop: danga.Loop, period: float, action: Any, until: float) -> None:
    """Run *action* every *period* seconds (from loop timers) until monotonic *until*."""
    def tick() -> None:
        action()
        if time.monotonic() < until:
            loop.add_timer(period, tick)
    loop.add_timer(period, tick)


def test_silent_socket_times_out(loop):
    a, b = nb_pair()
    obj = Reader(a, loop=loop)
    start = time.monotonic()
    obj.set_idle_timeout(0.3)
    run_until(loop, lambda: obj.closed)
    took = time.monotonic() - start
    assert obj.close_reason == "idle_timeout"
    assert 0.29 <= took < 2.0
    assert loop.timers() == 0
    b.close()


def test_reads_keep_it_alive(loop):
    a, b = nb_pair()
    obj = Reader(a, loop=loop)
    obj.set_idle_timeout(0.6)  # 12 times the period of the activity: no flakes
    end = time.monotonic() + 1.5
    every(loop, 0.05, lambda: b.send(b"x"), end)
    run_until(loop, lambda: time.monotonic() > end or obj.closed)
    assert not obj.closed
    quiet = time.monotonic()
    run_until(loop, lambda: obj.closed)
    assert obj.close_reason == "idle_timeout"
    assert time.monotonic() - quiet >= 0.45  # a full period after the last byte
    b.close()


def test_writes_keep_it_alive(loop):
    a, b = nb_pair()
    obj = Reader(a, loop=loop)
    obj.set_idle_timeout(0.6)
    end = time.monotonic() + 1.5

    def write() -> None:
        obj.write(b"y")
        drain(b)

    every(loop, 0.05, write, end)
    run_until(loop, lambda: time.monotonic() > end or obj.closed)
    assert not obj.closed
    run_until(loop, lambda: obj.closed)
    assert obj.close_reason == "idle_timeout"
    b.close()


def test_no_timer_operation_per_event(loop):
    a, b = nb_pair()
    obj = Reader(a, loop=loop)
    obj.set_idle_timeout(0.5)
    adds: list[Any] = []
    real = loop.add_timer

    def spy(*args: Any) -> Any:
        adds.append(args)
        return real(*args)

    loop.add_timer = spy  # type: ignore[method-assign]
    for _ in range(200):
        b.send(b"z")
        loop.run_once(0.01)
    assert len(adds) <= 2, adds  # at most the re-arms of the one timer, never per read
    obj.close()
    b.close()


def test_max_idle_time_class_attribute_and_per_instance_override(loop):
    a, b = nb_pair()
    c, d = nb_pair()
    timed = Perlbalish(a, loop=loop)
    kept = Perlbalish(c, loop=loop)
    kept.set_idle_timeout(None)
    run_until(loop, lambda: timed.closed)
    assert timed.close_reason == "idle_timeout"
    deadline = time.monotonic() + 0.3
    run_until(loop, lambda: time.monotonic() > deadline)
    assert not kept.closed
    kept.close()
    b.close()
    d.close()


def test_an_override_that_keeps_the_object_is_called_each_period(loop):
    a, b = nb_pair()
    obj = Keeper(a, loop=loop)
    obj.set_idle_timeout(0.1)
    run_until(loop, lambda: len(obj.idle_calls) >= 3)
    assert not obj.closed
    gaps = [y - x for x, y in zip(obj.idle_calls, obj.idle_calls[1:], strict=False)]
    assert all(gap >= 0.09 for gap in gaps), gaps
    obj.close()
    assert loop.timers() == 0
    b.close()


def test_close_and_disable_cancel_the_timer(loop):
    a, b = nb_pair()
    obj = Reader(a, loop=loop)
    assert loop.timers() == 0  # no idle timeout: no timer at all
    obj.set_idle_timeout(5)
    assert loop.timers() == 1
    obj.set_idle_timeout(0)
    assert loop.timers() == 0
    obj.set_idle_timeout(5)
    obj.close()
    assert loop.timers() == 0
    obj.set_idle_timeout(5)  # closed: nothing is armed
    assert loop.timers() == 0
    b.close()


def test_bad_arguments(loop):
    a, b = nb_pair()
    obj = Reader(a, loop=loop)
    with pytest.raises(TypeError, match="set_idle_timeout"):
        obj.set_idle_timeout("5")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="set_idle_timeout"):
        obj.set_idle_timeout(-1)
    with pytest.raises(ValueError, match="set_idle_timeout"):
        obj.set_idle_timeout(float("nan"))
    obj.close()
    b.close()


def test_loop_now_is_the_time_of_the_last_poll(loop):
    # Kept up to date from the first idle timeout of the loop's sockets on (a loop
    # that never uses one reads no clock for it).
    a, b = socket.socketpair()
    obj = danga.Socket(a, loop=loop)
    obj.set_idle_timeout(60)
    before = time.monotonic()
    loop.run_once(0)
    assert before <= loop.now <= time.monotonic()
    obj.close()
    b.close()
