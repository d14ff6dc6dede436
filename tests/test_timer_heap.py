"""The timer heap's two modes (a sorted list, an ordinary heap) give the same answers.

The clock is frozen (``danga.loop.monotonic`` is replaced by a list cell the test moves),
so "due" is exact and nothing waits: a run at time T fires precisely the timers whose
deadline is <= T, in (deadline, order added) order, whichever mode the heap is in.
"""

from __future__ import annotations

import random

import pytest

import danga.loop
import danga.timers

START = 1000.0


@pytest.fixture
def clock(monkeypatch):
    now = [START]
    monkeypatch.setattr(danga.loop, "monotonic", lambda: now[0])
    monkeypatch.setattr(danga.timers, "monotonic", lambda: now[0])  # Timer.__repr__
    return now


def schedule(loop, delays):
    """Add a timer per delay; returns the list the callbacks append their index to."""
    fired: list[int] = []
    for i, d in enumerate(delays):
        loop.add_timer(d, fired.append, i)
    return fired


def expected(delays, upto=None):
    keys = sorted((d, i) for i, d in enumerate(delays) if upto is None or d <= upto)
    return [i for _, i in keys]


def run_at(loop, clock, t):
    clock[0] = START + t
    loop.run_once(0)


def _delays(shape, n, rng):
    if shape == "in order":
        return [i * 0.001 for i in range(n)]
    if shape == "reversed":
        return [(n - i) * 0.001 for i in range(n)]
    if shape == "ties":
        return [rng.choice((0.1, 0.2, 0.3)) for _ in range(n)]
    if shape == "sawtooth":  # mostly in order, falling back every 50
        return [(i % 50) * 0.01 + i * 0.0001 for i in range(n)]
    return [rng.random() for _ in range(n)]


@pytest.mark.parametrize("n", [10, 300, 3000])
@pytest.mark.parametrize("shape", ["in order", "reversed", "ties", "sawtooth", "shuffled"])
def test_all_due_fire_in_deadline_then_added_order(loop, clock, shape, n):
    delays = _delays(shape, n, random.Random(n))
    fired = schedule(loop, delays)
    assert loop._timers._sorted is (delays == sorted(delays))
    run_at(loop, clock, 10)
    assert fired == expected(delays)
    assert loop.timers() == 0 and loop._timers._heap == []


@pytest.mark.parametrize("shape", ["in order", "ties", "sawtooth", "shuffled"])
def test_each_run_fires_exactly_the_due_ones(loop, clock, shape):
    delays = _delays(shape, 2000, random.Random(7))
    fired = schedule(loop, delays)
    top = max(delays)
    steps = [top * k / 13 for k in range(1, 14)]
    for t in steps:
        run_at(loop, clock, t)
        assert fired == expected(delays, upto=t), t
        assert loop.timers() == len(delays) - len(fired)


# In order, then one early timer: an ordinary heap whose leaves are the latest timers,
# so the leaf sample sees nothing due while a quarter of the heap is.
LOPSIDED = [1.0 + i * 0.001 for i in range(1000)] + [0.5]


def test_popping_many_switches_to_sorting(loop, clock):
    fired = schedule(loop, LOPSIDED)
    timers = loop._timers
    assert not timers._sorted
    run_at(loop, clock, 1.25)
    assert fired == expected(LOPSIDED, upto=1.25)
    assert timers._sorted  # popped an eighth one by one, then sorted the rest
    run_at(loop, clock, 5)
    assert fired == expected(LOPSIDED)


def test_timers_added_during_the_switch_wait(loop, clock):
    # Each callback adds a timer due at once: on this frozen clock its deadline is "now",
    # and it waits for the next iteration, before and after the switch to sorting.
    fired: list[int] = []
    again: list[int] = []

    def cb(i):
        fired.append(i)
        loop.add_timer(0, again.append, i)

    for i, d in enumerate(LOPSIDED):
        loop.add_timer(d, cb, i)
    run_at(loop, clock, 1.25)
    assert fired == expected(LOPSIDED, upto=1.25)
    assert again == []
    loop.run_once(0)
    assert again == fired


def test_a_heap_that_empties_is_sorted_again(loop, clock):
    schedule(loop, [0.2, 0.1])
    assert not loop._timers._sorted
    run_at(loop, clock, 1)
    assert loop._timers._sorted and loop.timers() == 0


@pytest.mark.parametrize("shape", ["in order", "shuffled"])
def test_timers_counts_what_a_run_has_yet_to_fire(loop, clock, shape):
    delays = _delays(shape, 400, random.Random(3))
    seen = []
    for d in delays:
        loop.add_timer(d, lambda: seen.append(loop.timers()))
    loop.add_timer(60, lambda: None)  # not due
    run_at(loop, clock, 10)
    assert seen == list(range(len(delays), 0, -1))


@pytest.mark.parametrize("shape", ["in order", "shuffled"])
def test_cancelling_most_due_timers_from_a_callback(loop, clock, shape):
    delays = _delays(shape, 500, random.Random(5))
    fired: list[int] = []
    handles = []

    def first():
        fired.append(-1)
        for t in handles[100:]:
            t.cancel()
        counts.append(loop.timers())

    counts: list[int] = []
    loop.add_timer(-1, first)  # due first
    for i, d in enumerate(delays):
        handles.append(loop.add_timer(d, fired.append, i))
    run_at(loop, clock, 10)
    kept = set(range(100))
    assert fired == [-1] + [i for i in expected(delays) if i in kept]
    assert counts == [100]
    timers = loop._timers
    assert loop.timers() == 0 and timers._cancelled == 0
    assert len(timers._heap) == 0


def test_reset_in_a_callback_ends_the_run(loop, clock):
    fired: list[int] = []

    def third(i):
        fired.append(i)
        loop.reset()

    for i in range(10):
        loop.add_timer(i * 0.001, third if i == 3 else fired.append, i)
    run_at(loop, clock, 1)
    assert fired == [0, 1, 2, 3]
    run_at(loop, clock, 2)
    assert fired == [0, 1, 2, 3] and loop.timers() == 0


@pytest.mark.parametrize("n", [10, 300])
@pytest.mark.parametrize("shape", ["in order", "reversed"])
def test_keyboard_interrupt_in_a_timer_keeps_the_rest(loop, clock, shape, n):
    delays = _delays(shape, n, random.Random(1))
    order = expected(delays)
    victim = order[4]
    fired: list[int] = []
    cancel_me = []

    def cb(i):
        fired.append(i)
        if i == victim:
            cancel_me[0].cancel()  # a later due timer, cancelled before the interrupt
            raise KeyboardInterrupt

    for i, d in enumerate(delays):
        t = loop.add_timer(d, cb, i)
        if i == order[7]:
            cancel_me.append(t)
    with pytest.raises(KeyboardInterrupt):
        run_at(loop, clock, 10)
    assert fired == order[:5]
    assert loop.timers() == n - 6
    run_at(loop, clock, 10)
    assert fired == [i for i in order if i != order[7]]
    assert loop.timers() == 0 and loop._timers._cancelled == 0


@pytest.mark.parametrize("shape", ["in order", "reversed"])
def test_timer_added_by_a_timer_waits_on_a_coarse_clock(loop, clock, shape):
    # The clock does not move between the run and the add (as on a coarse clock): the
    # new timer's deadline equals "now", yet it fires in the next iteration.
    fired: list[str] = []

    def rearm(tag):
        fired.append(tag)
        loop.add_timer(0, fired.append, f"{tag}+")

    for tag, d in (("a", 0.001), ("b", 0.002)) if shape == "in order" else (
            ("b", 0.002), ("a", 0.001)):
        loop.add_timer(d, rearm, tag)
    run_at(loop, clock, 1)
    assert fired == ["a", "b"]
    loop.run_once(0)
    assert fired == ["a", "b", "a+", "b+"]


def test_huge_and_infinite_delays_never_fire(loop, clock):
    fired: list[str] = []
    loop.add_timer(float("inf"), fired.append, "inf")
    loop.add_timer(1e300, fired.append, "huge")
    loop.add_timer(0.5, fired.append, "soon")
    run_at(loop, clock, 1e6)
    assert fired == ["soon"] and loop.timers() == 2


def test_compaction_of_an_ordinary_heap_keeps_the_order(loop, clock):
    delays = _delays("shuffled", 600, random.Random(11))
    fired: list[int] = []
    handles = [loop.add_timer(d, fired.append, i) for i, d in enumerate(delays)]
    timers = loop._timers
    assert not timers._sorted
    for t in handles[::3] + handles[1::3]:  # two thirds: compacts along the way
        t.cancel()
    assert len(timers._heap) < len(delays) and loop.timers() == 200
    run_at(loop, clock, 10)
    assert fired == [i for i in expected(delays) if i % 3 == 2]
    assert loop.timers() == 0 and timers._cancelled == 0


@pytest.mark.parametrize("shape", ["in order", "reversed"])
def test_an_exception_in_a_timer_goes_to_the_handler_and_the_run_goes_on(loop, clock, shape):
    delays = _delays(shape, 10, random.Random(2))
    order = expected(delays)
    fired: list[int] = []
    seen: list[str] = []

    def cb(i):
        fired.append(i)
        if i == order[3]:
            raise ValueError("boom")

    loop.set_exception_handler(lambda lp, ctx: seen.append(str(ctx["exception"])))
    for i, d in enumerate(delays):
        loop.add_timer(d, cb, i)
    run_at(loop, clock, 10)
    assert fired == order and seen == ["boom"]


@pytest.mark.parametrize("due", [1, 400])
def test_cancelling_later_timers_from_a_run_compacts(loop, clock, due):
    # A run (of 1 or of 400 due timers, so both modes) whose first timer cancels 300
    # later ones: they never fire, the heap is compacted, the counts stay right.
    fired: list[int] = []
    sizes: list[int] = []
    later = [loop.add_timer(5 + i * 0.001, fired.append, -1) for i in range(300)]
    kept = loop.add_timer(60, lambda: None)

    def cancel_them():
        for t in later:
            t.cancel()
        sizes.append(loop.timers())

    loop.add_timer(0, cancel_them)
    for i in range(1, due):
        loop.add_timer(0.001 * i, fired.append, i)
    run_at(loop, clock, 1)
    assert sizes == [due - 1 + 1]  # the rest of the run, and kept
    assert fired == list(range(1, due))
    timers = loop._timers
    assert len(timers._heap) < 100 and timers._cancelled == len(timers._heap) - 1
    assert loop.timers() == 1
    run_at(loop, clock, 100)
    assert fired == list(range(1, due)) and kept.cancelled and loop.timers() == 0


@pytest.mark.parametrize("shape", ["in order", "shuffled"])
def test_a_timer_that_runs_the_loop_again(loop, clock, shape):
    # A callback calling run_once() fires, in the nested run, the due timers the outer
    # run has not reached, and the outer run then has nothing left: each fires once, in
    # order.
    delays = _delays(shape, 400, random.Random(9))
    fired: list[int] = []
    first = expected(delays)[0]

    def cb(i):
        fired.append(i)
        if i == first:
            loop.run_once(0)

    for i, d in enumerate(delays):
        loop.add_timer(d, cb, i)
    run_at(loop, clock, 10)
    assert sorted(fired) == list(range(len(delays)))
    assert fired == expected(delays)
    assert loop.timers() == 0 and loop._timers._cancelled == 0


def test_timer_attributes_and_repr(loop, clock):
    def named():
        pass

    t = loop.add_timer(2.5, named, "x", 1)
    assert t.deadline == START + 2.5 and t.args == ("x", 1) and t.callback is named
    assert not t.cancelled and t.seq > 0
    assert repr(t) == "<danga.Timer test_timer_attributes_and_repr.<locals>.named due in 2.500s>"
    t.cancel()
    assert t.cancelled and t.callback is None
    assert repr(t) == "<danga.Timer done or cancelled>"
    u = loop.add_timer(1, named)
    loop.reset()
    assert u.cancelled  # a reset drops it: it will not fire


def test_a_nested_run_fires_the_overdue_rest_first_and_does_not_sleep_on_it(loop, clock):
    fired: list[object] = []
    waits: list[float | None] = []
    real_poll = loop.backend.poll

    def recording_poll(timeout):
        waits.append(timeout)
        return real_poll(0)

    loop.backend.poll = recording_poll

    def first():
        fired.append("A")
        waits.clear()
        loop.run_once()  # B is overdue: fire it, then wait for D at most
        fired.append(("inner wait", waits[0], loop.timers()))

    loop.add_timer(0, first)
    loop.add_timer(0, fired.append, "B")
    loop.add_timer(60, fired.append, "D")
    loop.run_once(0)
    assert fired == ["A", "B", ("inner wait", 60.0, 1)]


def test_a_nested_run_keeps_deadline_order(loop, clock):
    fired: list[str] = []

    def first():
        fired.append("A")
        clock[0] += 1.0  # C is due too, now: B (earlier) must still fire before it
        loop.run_once(0)

    loop.add_timer(0.001, first)
    loop.add_timer(0.002, fired.append, "B")
    loop.add_timer(0.5, fired.append, "C")
    run_at(loop, clock, 0.0025)
    assert fired == ["A", "B", "C"]


@pytest.mark.parametrize("k", [1, 3, 7])
def test_a_timer_added_by_a_signal_handler_mid_run_keeps_the_heap_sound(loop, clock,
                                                                        monkeypatch, k):
    # A signal handler runs at the first call boundary after bisect_right returns, i.e.
    # between the bisect and the slice of a sorted run. Simulate exactly that: the
    # handler adds a timer due at once (out of order for the sorted list).
    real = danga.timers.bisect_right
    fired: list[float] = []

    def bisect_then_handler(a, x):
        result = real(a, x)
        monkeypatch.setattr(danga.timers, "bisect_right", real)
        loop.add_timer(0, fired.append, clock[0])  # its deadline: now
        return result

    for i in range(12):
        d = 0.001 * (i + 1)
        loop.add_timer(d, fired.append, START + d)
    clock[0] = START + 0.001 * k + 0.0005
    monkeypatch.setattr(danga.timers, "bisect_right", bisect_then_handler)
    loop.run_once(0)
    assert fired == [START + 0.001 * (i + 1) for i in range(k)]  # the due ones, no more
    for _ in range(20):
        clock[0] += 0.001
        loop.run_once(0)
    assert sorted(fired) == fired and len(fired) == 13
    assert loop.timers() == 0
