"""Timer micro-benchmark, one implementation per process.

``--impl danga|asyncio|uvloop|rloop --mode fire|cancel --n N`` prints one JSON line with the
seconds taken:

- fire: schedule N timers with delays spread over 0..1 ms, run until all have fired;
- cancel: schedule N timers one second or more ahead, cancel them all, run one
  iteration (so the cancelled timers' cost on the loop counts too).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from danga.bench.servers.asyncio_echo import LOOPS, new_loop


def bench_danga(mode: str, n: int, delays: list[float]) -> float:
    import danga

    loop = danga.Loop("epoll" if hasattr(__import__("select"), "epoll") else None)
    count = 0

    def cb() -> None:
        nonlocal count
        count += 1
        if count == n:
            loop.stop()

    add = loop.add_timer
    t0 = time.perf_counter()
    if mode == "fire":
        for d in delays:
            add(d, cb)
        loop.run()
        assert count == n, count
    else:
        timers = [add(1.0 + d, cb) for d in delays]
        for t in timers:
            t.cancel()
        loop.run_once(0)
        assert count == 0 and loop.timers() == 0
    return time.perf_counter() - t0


def bench_asyncio(mode: str, n: int, delays: list[float], loop: Any) -> float:
    count = 0

    def cb() -> None:
        nonlocal count
        count += 1
        if count == n:
            loop.stop()

    call_later = loop.call_later
    t0 = time.perf_counter()
    if mode == "fire":
        for d in delays:
            call_later(d, cb)
        loop.run_forever()
        assert count == n, count
    else:
        handles = [call_later(1.0 + d, cb) for d in delays]
        for h in handles:
            h.cancel()
        loop.call_soon(loop.stop)
        loop.run_forever()
        assert count == 0
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--impl", choices=["danga", *LOOPS], required=True)
    p.add_argument("--mode", choices=["fire", "cancel"], required=True)
    p.add_argument("--n", type=int, default=100_000)
    a = p.parse_args()
    delays = [(i % 1000) * 1e-6 for i in range(a.n)]
    if a.impl == "danga":
        secs = bench_danga(a.mode, a.n, delays)
    else:
        secs = bench_asyncio(a.mode, a.n, delays, new_loop(a.impl))
    print(json.dumps({"impl": a.impl, "mode": a.mode, "n": a.n, "seconds": secs}))


if __name__ == "__main__":
    main()
