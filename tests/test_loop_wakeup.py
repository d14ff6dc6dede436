"""Waking the loop from other threads, long waits, and calls from other threads, on
every backend (docs/internals.md, "lost-wakeup" and "long-waits").

The lost-wakeup tests hit the window deterministically: a spy on ``backend.modify``
(called while the loop applies interest changes, after it computed its wait) makes
another thread add a timer, stop the loop or queue a call, and waits for it. A
watchdog unblocks a loop that slept through it, and says so: it never decides a pass.
"""

from __future__ import annotations

import math
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import danga
import danga.loop
import danga.timers
from danga.poller import MAX_TIMEOUT
from danga.testing import run_until
from danga_helpers import Recorder, nb_pair

WATCHDOG = 5.0


class Watchdog:
    """Unblocks *loop* after WATCHDOG seconds through an fd of its own, recording that
    it had to (the loop slept through a wakeup)."""

    def __init__(self, loop: danga.Loop) -> None:
        self.r, self.w = socket.socketpair()
        self.rescued = False
        loop.other_fds[self.r.fileno()] = lambda mask: self.r.recv(10)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        if not self._done.wait(WATCHDOG):
            self.rescued = True
            self.w.send(b"!")

    def stop(self) -> None:
        self._done.set()
        self._thread.join()
        self.r.close()
        self.w.close()


def _in_window(loop: danga.Loop, action: Callable[[], Any]) -> list[int]:
    """Make the next flush run *action* in another thread (and wait for it) the first
    time the backend is asked for a change: after the wait was computed, before poll."""
    calls: list[int] = []
    real = loop.backend.modify

    def modify(fd: int, old: int, new: int) -> None:
        real(fd, old, new)
        if not calls:
            calls.append(fd)
            t = threading.Thread(target=action)
            t.start()
            t.join()

    loop.backend.modify = modify  # type: ignore[method-assign]
    return calls


def _toggling_sockets(loop: danga.Loop, n: int = 50) -> list[Any]:
    made = []
    for _ in range(n):
        a, b = nb_pair()
        obj = Recorder(a, loop=loop)
        made.append((obj, b))
    return made


def _close(made: list[Any]) -> None:
    for obj, peer in made:
        obj.close()
        peer.close()


@pytest.mark.parametrize("what", ["add_timer", "stop", "call_soon_threadsafe"])
def test_change_from_a_thread_between_wait_and_poll_wakes_the_loop(loop, what):
    made = _toggling_sockets(loop)
    loop.run_once(0)  # registrations done; the loop would now block (no timers)
    for obj, _ in made:
        obj.watch_read(True)  # interest changes: the flush calls modify
    fired: list[str] = []
    actions = {
        "add_timer": lambda: loop.add_timer(0, fired.append, "timer"),
        "stop": loop.stop,
        "call_soon_threadsafe": lambda: loop.call_soon_threadsafe(fired.append, "call"),
    }
    hit = _in_window(loop, actions[what])
    dog = Watchdog(loop)
    try:
        loop.run_once()  # blocks until woken
        assert hit, "the window was not reached"
        assert not dog.rescued, f"{what} from a thread in the window was slept through"
    finally:
        dog.stop()
    if what != "stop":
        run_until(loop, lambda: bool(fired), timeout=2)
    _close(made)


def test_many_timers_from_a_thread_while_sockets_toggle(loop):
    # The report's scenario: sockets toggling their watch every iteration (a long flush)
    # while another thread posts timers one at a time, each after the previous fired;
    # none may be slept through (the watchdog would have to wake the loop).
    made = _toggling_sockets(loop, 200)
    fired: list[int] = []
    each = [threading.Event() for _ in range(8)]

    def fire(i: int) -> None:
        fired.append(i)
        each[i].set()

    def poster() -> None:
        for i in range(8):
            loop.add_timer(0, fire, i)
            if not each[i].wait(WATCHDOG * 2):
                return
        loop.stop()

    flip = [True]

    def toggle(dmap: Any, other: Any) -> bool:
        for obj, _ in made:
            obj.watch_read(flip[0])
        flip[0] = not flip[0]
        return True

    loop.set_post_loop_callback(toggle)
    dog = Watchdog(loop)
    t = threading.Thread(target=poster)
    t.start()
    try:
        loop.run()
        assert fired == list(range(8))
        assert not dog.rescued
    finally:
        t.join()
        dog.stop()
    _close(made)


class _PollRecorder:
    """Stands in for the backend's poll: records the timeout and returns at once."""

    def __init__(self, loop: danga.Loop) -> None:
        self.timeouts: list[float | None] = []
        real = loop.backend.poll

        def poll(timeout: float | None) -> list[tuple[int, int]]:
            self.timeouts.append(timeout)
            return real(0)

        loop.backend.poll = poll  # type: ignore[method-assign]


@pytest.mark.parametrize("make", [
    lambda lp: lp.add_timer(30 * 86400, lambda: None),
    lambda lp: lp.add_timer(math.inf, lambda: None),
    lambda lp: lp.add_timer(10 ** 400, lambda: None),
    lambda lp: lp.set_loop_timeout(1e15),
    lambda lp: lp.set_loop_timeout(math.inf),
], ids=["30-days", "inf", "huge-int", "loop-timeout-1e15", "loop-timeout-inf"])
def test_long_waits_are_clamped(loop, make):
    make(loop)
    rec = _PollRecorder(loop)
    loop.run_once()  # raised OverflowError on epoll and poll before
    (timeout,) = rec.timeouts
    assert timeout is not None and 0 < timeout <= MAX_TIMEOUT


def test_a_timer_thirty_days_away_fires_at_its_deadline(loop, monkeypatch):
    fired = []
    loop.add_timer(30 * 86400, fired.append, "late")
    loop.add_timer(math.inf, fired.append, "never")
    _PollRecorder(loop)
    loop.run_once()
    assert fired == []
    real = time.monotonic
    monkeypatch.setattr(danga.loop, "monotonic", lambda: real() + 30 * 86400 + 1)
    loop.run_once()
    assert fired == ["late"]
    assert loop.timers() == 1  # the infinite one stays


# -- call_soon_threadsafe ---------------------------------------------------------------


def test_call_soon_threadsafe_fifo_per_thread_and_coalesced(loop):
    got: list[tuple[int, int]] = []
    sends = []
    waker = loop._waker
    real_w = waker._w

    class CountingEnd:
        def send(self, data: bytes) -> int:
            sends.append(data)
            return real_w.send(data)

    waker._w = CountingEnd()  # counts the bytes written to wake the loop
    n, per = 4, 2500
    started = threading.Barrier(n + 1)

    def caller(k: int) -> None:
        started.wait()
        for i in range(per):
            loop.call_soon_threadsafe(got.append, (k, i))

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    started.wait()
    iterations = 0
    end = time.monotonic() + 20
    while len(got) < n * per and time.monotonic() < end:
        loop.run_once(1.0)
        iterations += 1
    for t in threads:
        t.join()
    waker._w = real_w
    assert len(got) == n * per
    for k in range(n):
        assert [i for kk, i in got if kk == k] == list(range(per)), "FIFO per thread"
    assert len(sends) <= iterations, (len(sends), iterations)


def test_call_soon_threadsafe_from_the_loop_thread_writes_nothing(loop):
    sends = []
    waker = loop._waker
    real_w = waker._w

    class CountingEnd:
        def send(self, data: bytes) -> int:
            sends.append(data)
            return real_w.send(data)

    waker._w = CountingEnd()
    got = []

    def callback() -> None:
        loop.call_soon_threadsafe(got.append, "inner")  # queued by a call: next pass

    loop.add_timer(0, loop.call_soon_threadsafe, callback)
    loop.run_once(0)
    assert got == []
    loop.run_once(0)
    assert got == ["inner"]
    waker._w = real_w
    assert sends == []


def test_a_call_that_requeues_itself_cannot_starve_io(loop):
    a, b = nb_pair()
    obj = Recorder(a, loop=loop)
    obj.watch_read(True)
    count = [0]

    def again() -> None:
        count[0] += 1
        loop.call_soon_threadsafe(again)

    loop.call_soon_threadsafe(again)
    b.send(b"x")
    run_until(loop, lambda: "read" in obj.log)
    assert count[0] < 100
    obj.close()
    b.close()


def test_call_soon_threadsafe_errors(loop, caplog):
    with pytest.raises(TypeError, match="call_soon_threadsafe"):
        loop.call_soon_threadsafe(42)
    seen = []

    def boom() -> None:
        raise ValueError("boom")

    loop.call_soon_threadsafe(boom)
    loop.call_soon_threadsafe(seen.append, "after")
    loop.run_once(0)
    assert seen == ["after"]
    assert any("call_soon_threadsafe" in r.getMessage() for r in caplog.records)
    loop.close()
    with pytest.raises(RuntimeError, match="closed"):
        loop.call_soon_threadsafe(seen.append, "late")


def test_keyboard_interrupt_in_a_call_keeps_the_rest(loop):
    seen = []

    def interrupt() -> None:
        raise KeyboardInterrupt

    loop.call_soon_threadsafe(seen.append, 1)
    loop.call_soon_threadsafe(interrupt)
    loop.call_soon_threadsafe(seen.append, 2)
    with pytest.raises(KeyboardInterrupt):
        loop.run_once(0)
    assert seen == [1]
    loop.run_once(0)
    assert seen == [1, 2]


def test_dead_wakeup_channel_is_rebuilt_once(loop, caplog):
    old_fd = loop._waker.fd
    os.close(loop._waker.write_fd)  # closed behind danga's back: the read end sees EOF
    fired = []

    def post_while_polling() -> None:
        end = time.monotonic() + WATCHDOG
        while not loop._waker.polling and time.monotonic() < end:
            time.sleep(0.001)  # the thread waits for the loop to block, not the test
        loop.add_timer(0, fired.append, 1)

    t = threading.Thread(target=post_while_polling)
    loop.wakeup()
    for _ in range(5):
        loop.run_once(0)
    warnings = [r for r in caplog.records if "wakeup channel" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
    assert loop._waker.fd != old_fd or loop._registry.waker_fd == loop._waker.fd
    # The new channel works: a thread's timer wakes a blocked loop.
    dog = Watchdog(loop)
    try:
        t.start()
        loop.run_once()
        t.join()
        assert not dog.rescued
    finally:
        dog.stop()
    run_until(loop, lambda: fired == [1])


# -- run_in_thread ----------------------------------------------------------------------


def test_run_in_thread_reports_on_the_loop_thread(loop):
    loop_thread = threading.get_ident()
    done = []

    def work(x: int) -> int:
        assert threading.get_ident() != loop_thread
        return x * 2

    def failing() -> None:
        raise ValueError("in the worker")

    fut = loop.run_in_thread(work, 21, callback=lambda f: done.append(
        (threading.get_ident() == loop_thread, f.result())))
    bad = loop.run_in_thread(failing, callback=lambda f: done.append(
        ("exc", type(f.exception()).__name__)))
    run_until(loop, lambda: len(done) == 2)
    assert (True, 42) in done and ("exc", "ValueError") in done
    assert fut.result() == 42 and isinstance(bad.exception(), ValueError)
    with pytest.raises(TypeError, match="run_in_thread"):
        loop.run_in_thread(42)


def test_set_default_executor_and_close_shuts_it_down(loop):
    from concurrent.futures import ThreadPoolExecutor

    ex = ThreadPoolExecutor(1)
    loop.set_default_executor(ex)
    assert loop.run_in_thread(lambda: 7).result(timeout=5) == 7
    with pytest.raises(TypeError, match="Executor"):
        loop.set_default_executor(object())  # type: ignore[arg-type]
    loop.close()
    with pytest.raises(RuntimeError):
        ex.submit(lambda: 1)


def test_threadpool_http_client_against_http_server(loop):
    # Blocking http.client requests in a ThreadPoolExecutor against a local http.server,
    # each reporting back through call_soon_threadsafe.
    import http.client
    import http.server
    from concurrent.futures import ThreadPoolExecutor

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = self.path.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    st = threading.Thread(target=server.serve_forever, daemon=True)
    st.start()
    results: dict[str, bytes] = {}
    loop_thread = threading.get_ident()

    def record(path: str, body: bytes) -> None:
        assert threading.get_ident() == loop_thread
        results[path] = body

    def fetch(path: str) -> None:
        conn = http.client.HTTPConnection(*server.server_address, timeout=10)
        try:
            conn.request("GET", path)
            loop.call_soon_threadsafe(record, path, conn.getresponse().read())
        finally:
            conn.close()

    try:
        with ThreadPoolExecutor(4) as pool:
            for i in range(12):
                pool.submit(fetch, f"/item/{i}")
            run_until(loop, lambda: len(results) == 12, timeout=20)
    finally:
        server.shutdown()
        server.server_close()
    assert results == {f"/item/{i}": f"/item/{i}".encode() for i in range(12)}


def test_earlier_timer_from_a_thread_before_the_window_is_not_slept_through(loop,
                                                                           monkeypatch):
    # The wait reuses the heap head's deadline when the head did not change between
    # the timers' run and the window. A thread adding an earlier timer right there
    # (before the loop sets its polling flag, so no wake byte is written) changes the
    # head: the loop must see it and not sleep on the old, far deadline.
    loop.add_timer(3600, lambda: None)
    fired: list[str] = []
    real = danga.loop.monotonic
    calls: list[int] = []

    def monotonic() -> float:
        out = real()
        # The clock is read right after the look before the window (the head's
        # deadline, read inline): a thread acts right after it.
        if not calls:
            calls.append(1)
            t = threading.Thread(target=lambda: loop.add_timer(0, fired.append, "early"))
            t.start()
            t.join()
        return out

    monkeypatch.setattr(danga.loop, "monotonic", monotonic)
    dog = Watchdog(loop)
    try:
        loop.run_once()
        assert calls and not dog.rescued, "slept on the old deadline"
    finally:
        dog.stop()
    run_until(loop, lambda: fired == ["early"], timeout=2)
