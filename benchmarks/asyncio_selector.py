"""asyncio on danga.Selector("epoll") against asyncio on its own EpollSelector.

    python benchmarks/asyncio_selector.py                  # 5 rounds of 2 s per point
    python benchmarks/asyncio_selector.py --rounds 3 --duration 1

The same asyncio echo server (danga.bench.servers.asyncio_echo: an asyncio.Protocol that
writes back what it receives) runs on ``asyncio.SelectorEventLoop(selector)`` with either
selector; nothing else differs. Each point starts a fresh server pinned to one core and
the C load generator on another (danga.bench.harness); the points run in interleaved
rounds (danga, asyncio, danga, asyncio, ...) after a warm-up, and the result is the ratio
danga / asyncio of round trips per second (of MB/s for 64 KiB messages), per round, shown
as median with min-max, and asyncio / danga of the server's CPU per round trip (its own
kernel accounting: steadier than the rate on a shared machine). The goal is >= 1.0x for
both: the adapter must cost nothing measurable.

``--serve NAME`` is the server side (the harness starts it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import selectors
import statistics
import sys
from pathlib import Path

from danga.bench import harness

SELECTORS = {
    "danga-selector": "danga.Selector('epoll')",
    "asyncio-epoll": "selectors.EpollSelector()",
}
WORKLOADS = ["pp64x1", "pp64x100", "pp64kx10", "pipe64x10x16"]


def serve(name: str, port: int) -> None:
    # The two processes must differ by the selector alone. glibc's dynamic mmap threshold
    # decides whether asyncio's 256 KiB recv buffer costs an mmap, mremap and munmap per
    # read (3x the server's CPU per round trip), and the threshold depends on what was
    # allocated at start-up: freeing one 1 MiB block raises it past 256 KiB in both.
    import danga
    from danga.bench.servers.asyncio_echo import serve as echo

    block = bytearray(1 << 20)
    del block
    if name == "danga-selector":
        selector: selectors.BaseSelector = danga.Selector("epoll")
    else:
        selector = selectors.EpollSelector()
    loop = asyncio.SelectorEventLoop(selector)
    loop.run_until_complete(echo(port))
    loop.run_forever()


Samples = dict[str, dict[str, list[dict[str, float]]]]


def measure(rounds: int, duration: float, warmup: float, workloads: list[str]) -> Samples:
    """Per workload and server, one sample per round (interleaved)."""
    settings = harness.Settings(warmup=warmup, duration=duration, rounds=rounds)
    run = harness.new_run(settings, [harness.WORKLOAD_BY_KEY[k] for k in workloads],
                          only=["none"])
    run.servers = [harness.Server(name, [harness.PY, __file__, "--serve", name])
                   for name in SELECTORS]
    harness.execute(run, timers=False)
    for error in run.errors:
        print(f"error: {error}", file=sys.stderr)
    return run.samples


def report(samples: Samples) -> list[dict[str, object]]:
    """Per workload: medians, and per-round ratios danga / asyncio of the rate and
    asyncio / danga of the server's CPU per round trip (both: >= 1.0 is as good)."""
    rows = []
    for wl, by_srv in samples.items():
        pairs = list(zip(by_srv.get("danga-selector", []), by_srv.get("asyncio-epoll", []),
                         strict=False))
        if not pairs:
            continue
        rate = [a["value"] / b["value"] for a, b in pairs]
        cpu = [b["server_cpu_us_per_rt"] / a["server_cpu_us_per_rt"] for a, b in pairs]
        rows.append({
            "workload": wl, "unit": harness.WORKLOAD_BY_KEY[wl].unit, "rounds": len(pairs),
            "danga_selector": statistics.median(a["value"] for a, _ in pairs),
            "asyncio_epoll": statistics.median(b["value"] for _, b in pairs),
            "ratio": statistics.median(rate), "ratio_min": min(rate), "ratio_max": max(rate),
            "cpu_ratio": statistics.median(cpu), "cpu_min": min(cpu), "cpu_max": max(cpu),
        })
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--serve", choices=sorted(SELECTORS), help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--duration", type=float, default=2.0)
    p.add_argument("--warmup", type=float, default=0.5)
    p.add_argument("--workloads", default=",".join(WORKLOADS))
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = p.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return 0
    rows = report(measure(args.rounds, args.duration, args.warmup, args.workloads.split(",")))
    print(f"asyncio echo: danga.Selector('epoll') / selectors.EpollSelector, "
          f"{args.rounds} interleaved rounds of {args.duration} s, Python "
          f"{sys.version.split()[0]}")
    print(f"  {'workload':<14}{'danga.Selector':>16}{'EpollSelector':>15}{'ratio':>8}"
          f"{'min-max':>14}{'CPU/rt ratio':>14}{'min-max':>14}")
    for r in rows:
        print(f"  {r['workload']:<14}{r['danga_selector']:>12,.0f} {r['unit']:<4}"
              f"{r['asyncio_epoll']:>10,.0f} {r['unit']:<4}{r['ratio']:>7.3f}x"
              f"  {r['ratio_min']:.3f}-{r['ratio_max']:.3f}{r['cpu_ratio']:>13.3f}x"
              f"  {r['cpu_min']:.3f}-{r['cpu_max']:.3f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
