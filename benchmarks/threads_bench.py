"""Calls from other threads and signal storms: danga against asyncio, same run.

``python benchmarks/threads_bench.py [--threads 4] [--calls 10000] [--rounds 5]``

1. ``call_soon_threadsafe`` from N threads x M calls while the loop sleeps: every call
   runs, FIFO per thread; the wakeup bytes written are counted (at most one per loop
   iteration is the promise) and the cost per call is the wall time from the threads'
   start to the last call run, divided by the calls, against asyncio's
   ``call_soon_threadsafe`` doing the same (rounds interleaved, medians and min-max).
2. A signal storm: 5,000 SIGUSR1 to the process plus 4 threads calling in; the callback
   runs at least once, nothing is written to stderr, and the loop's CPU use in the
   second after the storm (sleeping) is reported as a fraction of a core.

Not a test: it prints figures. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import threading
import time
from typing import Any

import danga


def danga_calls(threads: int, calls: int) -> dict[str, float]:
    loop = danga.Loop()
    got: list[tuple[int, int]] = []
    sends = [0]
    waker = loop._waker  # the count of wake bytes is what this measures
    real_w = waker._w

    class CountingEnd:
        def send(self, data: bytes) -> int:
            sends[0] += 1
            return real_w.send(data)

    waker._w = CountingEnd()  # type: ignore[assignment]
    total = threads * calls
    barrier = threading.Barrier(threads + 1)

    def caller(k: int) -> None:
        barrier.wait()
        call = loop.call_soon_threadsafe
        append = got.append
        for i in range(calls):
            call(append, (k, i))

    ts = [threading.Thread(target=caller, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    iterations = 0
    barrier.wait()
    t0 = time.perf_counter()
    while len(got) < total:
        loop.run_once(1.0)
        iterations += 1
    elapsed = time.perf_counter() - t0
    for t in ts:
        t.join()
    waker._w = real_w  # type: ignore[assignment]
    loop.close()
    fifo = all([i for kk, i in got if kk == k] == list(range(calls)) for k in range(threads))
    return {"ns_per_call": elapsed / total * 1e9, "iterations": iterations,
            "wake_bytes": sends[0], "fifo": float(fifo)}


def asyncio_calls(threads: int, calls: int) -> dict[str, float]:
    total = threads * calls

    async def main() -> float:
        loop = asyncio.get_running_loop()
        got: list[tuple[int, int]] = []
        done = asyncio.Event()
        barrier = threading.Barrier(threads + 1)

        def append(item: tuple[int, int]) -> None:
            got.append(item)
            if len(got) == total:
                done.set()

        def caller(k: int) -> None:
            barrier.wait()
            call = loop.call_soon_threadsafe
            for i in range(calls):
                call(append, (k, i))

        ts = [threading.Thread(target=caller, args=(k,)) for k in range(threads)]
        for t in ts:
            t.start()
        await asyncio.to_thread(barrier.wait)
        t0 = time.perf_counter()
        await done.wait()
        elapsed = time.perf_counter() - t0
        for t in ts:
            t.join()
        return elapsed

    return {"ns_per_call": asyncio.run(main()) / total * 1e9}


def storm(signals: int, threads: int, calls: int) -> dict[str, Any]:
    loop = danga.Loop()
    hits = [0]
    loop.add_signal_handler(signal.SIGUSR1, lambda: hits.__setitem__(0, hits[0] + 1))
    got: list[int] = []

    def caller() -> None:
        for i in range(calls):
            loop.call_soon_threadsafe(got.append, i)

    ts = [threading.Thread(target=caller) for _ in range(threads)]
    for t in ts:
        t.start()
    pid = os.getpid()
    for _ in range(signals):
        os.kill(pid, signal.SIGUSR1)
    for t in ts:
        t.join()
    while len(got) < threads * calls or not hits[0]:
        loop.run_once(0.1)
    before = os.times()
    t0 = time.monotonic()
    while time.monotonic() - t0 < 1.0:  # idle: the loop sleeps in poll
        loop.run_once(1.0 - (time.monotonic() - t0))
    after = os.times()
    cpu = (after.user - before.user + after.system - before.system) / (time.monotonic() - t0)
    loop.close()
    return {"callback_runs": hits[0], "calls_run": len(got), "idle_cpu": cpu}


def _fmt(values: list[float]) -> str:
    return f"{statistics.median(values):.0f} ({min(values):.0f}-{max(values):.0f})"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--calls", type=int, default=10_000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--signals", type=int, default=5000)
    a = p.parse_args()
    d: list[dict[str, float]] = []
    asy: list[dict[str, float]] = []
    for _ in range(a.rounds):  # interleaved rounds, asyncio and danga alternately
        asy.append(asyncio_calls(a.threads, a.calls))
        d.append(danga_calls(a.threads, a.calls))
    dn = [r["ns_per_call"] for r in d]
    an = [r["ns_per_call"] for r in asy]
    ratio = [x / y for x, y in zip(dn, an, strict=True)]
    print(f"call_soon_threadsafe, {a.threads} threads x {a.calls} calls, "
          f"{a.rounds} interleaved rounds (Python {sys.version.split()[0]})")
    print(f"  danga   ns/call {_fmt(dn)}")
    print(f"  asyncio ns/call {_fmt(an)}")
    print(f"  danga / asyncio {statistics.median(ratio):.2f}x "
          f"({min(ratio):.2f}-{max(ratio):.2f})")
    wakes = ", ".join(f"{int(r['wake_bytes'])}/{int(r['iterations'])}" for r in d)
    print(f"  danga: all FIFO per thread: {all(r['fifo'] for r in d)}; wake bytes / "
          f"loop iterations per round: {wakes}")
    s = storm(a.signals, a.threads, a.calls // 10)
    print(f"signal storm: {a.signals} x SIGUSR1 + {a.threads} threads x {a.calls // 10} "
          f"calls: callback ran {s['callback_runs']} time(s), {s['calls_run']} calls run, "
          f"idle CPU after the storm {s['idle_cpu'] * 100:.2f}% of a core")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
