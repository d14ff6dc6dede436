"""Signals as callbacks on the loop thread (loop.add_signal_handler), on every backend.

These tests change process-wide state (signal handlers, the signal wakeup fd): they
share the xdist group "process-global" and restore what they change.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import warnings
from typing import Any

import pytest

import danga
from danga.testing import run_until

pytestmark = [
    pytest.mark.xdist_group("process-global"),
    pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="needs POSIX signals"),
]

SIG = getattr(signal, "SIGUSR1", 0)
SIG2 = getattr(signal, "SIGUSR2", 0)


@pytest.fixture(autouse=True)
def _restore_signals():
    before = {s: signal.getsignal(s) for s in (SIG, SIG2)}
    fd = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(fd)
    yield
    for s, h in before.items():
        signal.signal(s, h)
    signal.set_wakeup_fd(fd)


def _wakeup_fd() -> int:
    fd = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(fd)
    return fd


def test_callback_runs_on_the_loop_thread_and_deliveries_coalesce(loop):
    calls: list[tuple[Any, ...]] = []
    loop.add_signal_handler(SIG, lambda *a: calls.append((threading.get_ident(), *a)),
                            "arg")
    for _ in range(5):  # five deliveries before the loop gets to them: one call
        os.kill(os.getpid(), SIG)
    assert calls == []  # never in signal context
    loop.run_once(0)
    assert calls == [(threading.get_ident(), "arg")]
    os.kill(os.getpid(), SIG)
    loop.run_once(0)
    assert len(calls) == 2


def test_a_signal_wakes_a_sleeping_loop(loop):
    calls = []
    loop.add_signal_handler(SIG, calls.append, "hit")
    t = threading.Timer(0.05, os.kill, (os.getpid(), SIG))  # from another thread
    t.start()
    try:
        end = time.monotonic() + 5
        while not calls and time.monotonic() < end:
            loop.run_once(10.0)  # would block 10 s if the signal did not wake it
        assert calls == ["hit"]
    finally:
        t.cancel()


def test_remove_restores_the_previous_handler_and_the_wakeup_fd(loop):
    previous = []
    signal.signal(SIG, lambda s, f: previous.append(s))
    assert _wakeup_fd() == -1
    loop.add_signal_handler(SIG, lambda: None)
    assert _wakeup_fd() == loop._waker.write_fd  # only while danga has handlers
    loop.add_signal_handler(SIG2, lambda: None)
    assert loop.remove_signal_handler(SIG) is True
    assert loop.remove_signal_handler(SIG) is False
    assert _wakeup_fd() == loop._waker.write_fd  # SIG2 is still handled
    os.kill(os.getpid(), SIG)
    assert previous == [SIG]  # the previous handler is back
    assert loop.remove_signal_handler(SIG2) is True
    assert _wakeup_fd() == -1


def test_another_owner_of_the_wakeup_fd_gets_a_warning_and_its_fd_back(loop):
    import socket

    r, w = socket.socketpair()
    w.setblocking(False)
    signal.set_wakeup_fd(w.fileno())
    try:
        with pytest.warns(RuntimeWarning, match="wakeup fd was held by another owner"):
            loop.add_signal_handler(SIG, lambda: None)
        loop.remove_signal_handler(SIG)
        assert _wakeup_fd() == w.fileno()
    finally:
        signal.set_wakeup_fd(-1)
        r.close()
        w.close()


def test_close_restores_handlers(poller_cls):
    lp = danga.Loop(poller_cls)
    before = signal.getsignal(SIG)
    lp.add_signal_handler(SIG, lambda: None)
    assert signal.getsignal(SIG) is not before
    lp.close()
    assert signal.getsignal(SIG) is before and _wakeup_fd() == -1


def test_main_thread_only_and_bad_arguments(loop):
    errors: list[BaseException] = []

    def off_main() -> None:
        for call in (lambda: loop.add_signal_handler(SIG, lambda: None),
                     lambda: loop.remove_signal_handler(SIG)):
            try:
                call()
            except RuntimeError as exc:
                errors.append(exc)

    t = threading.Thread(target=off_main)
    t.start()
    t.join()
    assert len(errors) == 2 and all("main thread" in str(e) for e in errors)
    with pytest.raises(TypeError, match="callable"):
        loop.add_signal_handler(SIG, 42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cannot be caught"):
        loop.add_signal_handler(signal.SIGKILL, lambda: None)
    with pytest.raises(TypeError, match="signal number"):
        loop.add_signal_handler("USR1", lambda: None)  # type: ignore[arg-type]


def test_a_raising_callback_is_reported_and_the_loop_goes_on(loop, caplog):
    def boom() -> None:
        raise ValueError("in a signal callback")

    seen = []
    loop.add_signal_handler(SIG, boom)
    loop.add_signal_handler(SIG2, seen.append, 2)
    os.kill(os.getpid(), SIG)
    os.kill(os.getpid(), SIG2)
    loop.run_once(0)
    assert seen == [2]
    assert any("signal handler callback" in r.getMessage() for r in caplog.records)


def test_storm_of_signals_and_thread_calls(loop):
    # 2,000 signals plus 4 threads calling in: the callback runs at least once, every
    # call runs, and nothing is written to stderr or warned.
    hits = [0]
    loop.add_signal_handler(SIG, lambda: hits.__setitem__(0, hits[0] + 1))
    calls: list[int] = []
    stop = threading.Event()

    def caller() -> None:
        for i in range(500):
            loop.call_soon_threadsafe(calls.append, i)
        stop.wait(0)

    threads = [threading.Thread(target=caller) for _ in range(4)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for t in threads:
            t.start()
        for _ in range(2000):
            os.kill(os.getpid(), SIG)
        for t in threads:
            t.join()
        run_until(loop, lambda: len(calls) == 2000 and hits[0] >= 1)
    assert 1 <= hits[0] <= 2000


def test_forked_child_has_its_own_wakeup_channel(loop):
    from danga.testing.suite import in_child

    loop.add_signal_handler(SIG, lambda: None)
    parent_waker = loop._waker.fd

    def child() -> dict[str, Any]:
        loop.run_once(0)  # its first use (another at-fork hook may have run after ours)
        mine = loop._waker
        loop.wakeup()  # must land in the child's channel, never the parent's
        return {"fd_differs_or_renewed": mine.write_fd == _wakeup_fd(),
                "pending": mine.pending}

    out = in_child(child)
    assert out == {"fd_differs_or_renewed": True, "pending": True}
    events = dict(loop.backend.poll(0))
    assert parent_waker not in events, "the child's wakeup reached the parent"
    loop.wakeup()  # the parent's own still arrive
    assert parent_waker in dict(loop.backend.poll(1.0))


def _loops_that_held_the_wakeup_fd(poller_cls: Any, n: int) -> list[danga.Loop]:
    """*n* loops that each took the wakeup fd in turn and were never closed (a program
    that drops loops, or earlier tests in this process)."""
    loops = [danga.Loop(poller_cls) for _ in range(n)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # each takes it from the last
        for lp in loops:
            lp.add_signal_handler(SIG, lambda: None)
    return loops


def test_after_fork_only_the_holder_of_the_wakeup_fd_takes_it_again(loop, poller_cls):
    # After fork every live loop renews its channel; the loops that held the wakeup fd
    # before the current holder must not take it (one of them used to, by the order of
    # a WeakSet: the child's signals then woke a loop nobody runs).
    from danga.testing.suite import in_child

    older = _loops_that_held_the_wakeup_fd(poller_cls, 6)
    try:
        with pytest.warns(RuntimeWarning, match="wakeup fd was held by another owner"):
            loop.add_signal_handler(SIG, lambda: None)
        def child() -> bool:
            loop.run_once(0)
            return loop._waker.write_fd == _wakeup_fd()

        assert in_child(child) is True
    finally:
        for lp in older:
            lp.close()


LATE_AT_FORK_HOOK = """
import importlib, os, signal, sys
import danga

module, _, name = sys.argv[1].partition(":")
sys.path[:0] = sys.argv[2:]  # where the test's own backends live (the kqueue emulation)
loop = danga.Loop(getattr(importlib.import_module(module), name))
loop.add_signal_handler(signal.SIGUSR1, lambda: got.append(1))
got = []
# A library imported after danga that clears the wakeup fd in every child, as asyncio's
# own at-fork hook does from Python 3.12 on (registered after danga's, so it runs after).
os.register_at_fork(after_in_child=lambda: signal.set_wakeup_fd(-1))
import asyncio  # noqa: F401  (and asyncio's hook itself, where it has one)
pid = os.fork()
if pid == 0:
    loop.run_once(0)
    ok = signal.set_wakeup_fd(-1) == loop._waker.write_fd
    signal.set_wakeup_fd(loop._waker.write_fd, warn_on_full_buffer=False)
    os.kill(os.getpid(), signal.SIGUSR1)
    loop.run_once(5.0)
    os._exit(0 if ok and got == [1] else 3)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_the_childs_loop_takes_the_wakeup_fd_back_from_a_later_at_fork_hook(poller_cls):
    # In a subprocess: an at-fork hook cannot be unregistered.
    import subprocess
    import sys
    from pathlib import Path

    here = Path(__file__).parent
    spec = f"{poller_cls.__module__}:{poller_cls.__qualname__}"
    run = subprocess.run([sys.executable, "-c", LATE_AT_FORK_HOOK, spec, str(here),
                          str(here / "backends")],
                         capture_output=True, text=True, timeout=30, check=False)
    assert run.returncode == 0, run.stderr


def test_closing_an_earlier_holder_leaves_the_wakeup_fd_to_the_current_one(loop, poller_cls):
    older = _loops_that_held_the_wakeup_fd(poller_cls, 2)
    try:
        with pytest.warns(RuntimeWarning, match="wakeup fd was held by another owner"):
            loop.add_signal_handler(SIG, lambda: None)
        for lp in older:
            lp.close()
            assert _wakeup_fd() == loop._waker.write_fd
    finally:
        for lp in older:
            lp.close()
