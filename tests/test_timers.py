"""Timers and the poll timeout (on every backend).

The computed wait is observed through a wrapper of ``loop.backend.poll`` that records
the timeout it is given and polls with 0, so no test waits for long timers.
"""

from __future__ import annotations

import time

import pytest

import danga.loop
from danga.testing import run_until
from danga_helpers import Spy, nb_pair


def test_fractional_delay_fires(loop):
    fired = []
    loop.add_timer(0.05, fired.append, "half-tenth")
    run_until(loop, lambda: fired)
    assert fired == ["half-tenth"]


def test_negative_delay_is_due_now(loop):
    fired = []
    spy = Spy(loop, fast=True)
    loop.add_timer(-5, fired.append, 1)
    loop.run_once()
    assert fired == [1]
    assert spy.timeouts == [None]  # ran before the wait; nothing else pending


def test_callback_gets_its_args(loop):
    got = []
    loop.add_timer(0, lambda *args: got.append(args), "a", 2, None)
    loop.run_once(0)
    assert got == [("a", 2, None)]  # Danga passed $now


def test_timers_are_on_the_monotonic_clock(loop, monkeypatch):
    fired = []
    loop.add_timer(30, fired.append, "far")
    loop.add_timer(0.05, fired.append, "near")
    # The wall clock jumping a day ahead, then to the epoch, changes nothing.
    monkeypatch.setattr(time, "time", lambda: 1e12)
    loop.run_once(0)
    assert fired == []
    monkeypatch.setattr(time, "time", lambda: 0.0)
    run_until(loop, lambda: fired)
    assert fired == ["near"]


def test_equal_deadlines_fire_fifo(loop, monkeypatch):
    order = []
    frozen = time.monotonic()
    monkeypatch.setattr(danga.loop, "monotonic", lambda: frozen)
    for i in range(20):
        loop.add_timer(0.01, order.append, i)
    monkeypatch.undo()
    run_until(loop, lambda: len(order) == 20)
    assert order == list(range(20))


def test_shuffled_insertion_fires_sorted(loop):
    order = []
    delays = [0.05, 0.0, 0.04, 0.01, 0.03, 0.02]
    for d in delays:
        loop.add_timer(d, order.append, d)
    run_until(loop, lambda: len(order) == len(delays))
    assert order == sorted(delays)


def test_cancelled_timer_never_fires(loop):
    fired = []
    t = loop.add_timer(0.01, fired.append, "cancelled")
    loop.add_timer(0.03, fired.append, "kept")
    t.cancel()
    t.cancel()  # idempotent
    run_until(loop, lambda: fired)
    loop.run_once(0.05)
    assert fired == ["kept"]


def test_cancelled_timer_never_wakes_the_loop(loop):
    fired = []
    early = loop.add_timer(0.05, fired.append, "early")
    loop.add_timer(30.0, fired.append, "late")
    early.cancel()
    spy = Spy(loop, fast=True)
    loop.run_once()
    (timeout,) = spy.timeouts
    assert 20 < timeout <= 30  # Danga woke at 0.05 for the cancelled timer
    assert fired == []


def test_cancel_after_firing_is_harmless(loop):
    fired = []
    t = loop.add_timer(0, fired.append, 1)
    loop.run_once(0)
    t.cancel()
    assert fired == [1] and loop.timers() == 0


def test_timer_added_in_a_timer_fires_next_iteration(loop):
    order = []

    def first():
        order.append("first")
        loop.add_timer(0, order.append, "second")

    loop.add_timer(0, first)
    spy = Spy(loop, fast=True)
    loop.run_once()
    assert order == ["first"]
    assert spy.timeouts == [0]  # the new timer is due: no waiting
    loop.run_once()
    assert order == ["first", "second"]


def test_self_rearming_timer_does_not_starve_io(loop):
    a, b = nb_pair()
    got = []

    class R(danga.Socket):
        def event_read(self):
            got.append(self.read(10))

    obj = R(a, loop=loop)
    obj.watch_read(True)

    def again():
        loop.add_timer(0, again)

    loop.add_timer(0, again)
    b.send(b"io")
    run_until(loop, lambda: got)
    assert got == [b"io"]
    b.close()


@pytest.mark.parametrize("loop_ms, timer_s, expect", [
    (-1, 30.0, "timer"),     # no loop timeout: the timer decides
    (100, 30.0, 0.1),        # the loop timeout is earlier
    (60000, 20.0, "timer"),  # the timer is earlier
    (0, 30.0, 0.0),          # 0 returns at once
    (-1, None, None),        # negative blocks
    (-7, None, None),        # any negative blocks (Danga's code)
    (250, None, 0.25),       # > 0 is milliseconds
])
def test_poll_timeout_is_min_of_timer_and_loop_timeout(loop, loop_ms, timer_s, expect):
    assert loop.set_loop_timeout(loop_ms) == loop_ms
    if timer_s is not None:
        loop.add_timer(timer_s, lambda: None)
    spy = Spy(loop, fast=True)
    loop.run_once()
    (timeout,) = spy.timeouts
    if expect is None:
        assert timeout is None
    elif expect == "timer":
        # What is left of the timer's delay (generous: the machine may be slow).
        assert timer_s - 10 < timeout <= timer_s
    else:
        assert timeout == pytest.approx(expect)


def test_set_loop_timeout_rejects_junk(loop):
    with pytest.raises(TypeError):
        loop.set_loop_timeout("100")
    with pytest.raises(ValueError):
        loop.set_loop_timeout(float("nan"))


def test_add_timer_rejects_junk(loop):
    with pytest.raises(TypeError):
        loop.add_timer("1", lambda: None)
    with pytest.raises(TypeError):
        loop.add_timer(1, "not callable")
    with pytest.raises(ValueError):
        loop.add_timer(float("nan"), lambda: None)


def test_loop_timeout_zero_returns_at_once(loop):
    """SetLoopTimeout(0): Danga's code busy-loops (its POD says "poll forever")."""
    calls = []
    loop.set_loop_timeout(0)
    loop.add_timer(60, lambda: None)
    loop.set_post_loop_callback(lambda *_: calls.append(1) or len(calls) < 50)
    loop.run()
    assert len(calls) == 50


def test_loop_timeout_positive_wakes_with_nothing_to_do(loop):
    calls = []
    loop.set_loop_timeout(20)
    loop.set_post_loop_callback(lambda *_: calls.append(1) or len(calls) < 3)
    loop.run()
    assert len(calls) == 3


@pytest.mark.timeout(20)
def test_only_timers_and_no_fds_still_wake(loop):
    """No fds, LoopTimeout -1: every poll sleeps until the next timer, never forever."""
    fired = []
    for d in (0.03, 0.01, 0.02):
        loop.add_timer(d, fired.append, d)
    spy = Spy(loop)
    _refuse_blocking_forever(loop)
    loop.set_post_loop_callback(lambda *_: len(fired) < 3)
    loop.run()
    assert fired == [0.01, 0.02, 0.03]
    assert spy.timeouts and all(t is not None and t < 0.035 for t in spy.timeouts)


def _refuse_blocking_forever(loop):
    real = loop.backend.poll

    def poll(timeout):
        if timeout is None:
            raise AssertionError("the loop would block forever after its last timer")
        return real(timeout)

    loop.backend.poll = poll


def test_post_loop_callback_sees_the_last_timer(loop):
    """Danga 1.62 (no fds, LoopTimeout -1) blocked forever after its last timer, before
    the post-loop callback could see it fired (docs/internals.md, 'last-timer-blocks')."""
    fired = []
    loop.add_timer(0.01, fired.append, 1)
    _refuse_blocking_forever(loop)
    loop.set_post_loop_callback(lambda *_: not fired)
    loop.run()
    assert fired == [1]


def test_no_fds_and_negative_timeout_blocks_instead_of_busy_looping(loop):
    """Danga's poll mode with no fds turned -1 into select(0): a busy loop."""
    loop.set_loop_timeout(-1)
    spy = Spy(loop, fast=True)
    loop.run_once()
    assert spy.timeouts == [None]


def test_many_cancelled_timers_are_compacted(loop):
    timers = [loop.add_timer(0.001 * i, lambda: None) for i in range(500)]
    keep = loop.add_timer(30, lambda: None)  # far enough never to be due on a slow box
    for t in timers:
        t.cancel()
    assert loop.timers() == 1
    assert len(loop._timers._heap) < 100  # compacted, not 501 entries
    spy = Spy(loop, fast=True)
    loop.run_once()
    # The cancelled timers, all earlier than the kept one, do not shorten the wait.
    assert 20 < spy.timeouts[0] <= 30
    keep.cancel()
    assert loop.timers() == 0
