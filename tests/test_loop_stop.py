"""stop() and wakeup(): a stop is never lost, and a sleeping poll is woken."""

import signal
import threading
import time

import pytest


def test_stop_before_run_is_kept(loop):
    # Without it a signal arriving between "listening" and run() was lost and the
    # server blocked forever (no fds, no timers, loop timeout -1).
    loop.stop()
    done = threading.Event()
    t = threading.Thread(target=lambda: (loop.run(), done.set()), daemon=True)
    t.start()
    assert done.wait(10), "run() did not return after an earlier stop()"
    # The stop was consumed: a second run() blocks again until stopped.
    loop.add_timer(0.05, loop.stop)
    loop.run()


def test_stop_from_another_thread_wakes_a_blocked_poll(loop):
    started = threading.Event()
    loop.add_timer(0, started.set)
    timer = threading.Timer(0.05, loop.stop)
    def stopper():
        started.wait(10)
        timer.start()
    threading.Thread(target=stopper, daemon=True).start()
    t0 = time.monotonic()
    loop.add_timer(30, lambda: None)  # without the wake-up, run() would sleep 30 s
    loop.run()
    assert time.monotonic() - t0 < 20


@pytest.mark.xdist_group("process-global")
def test_timer_added_by_a_signal_handler_wakes_a_blocked_poll(loop):
    # PEP 475 retries the interrupted poll with its old timeout: without danga's
    # self-pipe this run() would sleep until the 30 s timer.
    fired = []

    def handler(signum, frame):
        loop.add_timer(0, lambda: (fired.append(signum), loop.stop()))

    old = signal.signal(signal.SIGALRM, handler)
    try:
        loop.add_timer(30, lambda: None)
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        t0 = time.monotonic()
        loop.run()
        elapsed = time.monotonic() - t0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert fired == [signal.SIGALRM]
    assert elapsed < 20


def test_wakeup_is_coalesced_and_harmless(loop):
    for _ in range(10_000):
        loop.wakeup()
    loop.run_once(0)
    assert loop.descriptor_map == {} and dict(loop.other_fds) == {}
    # Drained: the next poll sleeps instead of returning at once.
    polls = []
    real = loop.backend.poll
    loop.backend.poll = lambda t: polls.append(real(t)) or polls[-1]
    loop.run_once(0.05)
    assert polls == [[]]
