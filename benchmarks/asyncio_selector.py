"""asyncio on danga.Selector("epoll") against asyncio on its own EpollSelector.

    python benchmarks/asyncio_selector.py                  # 5 rounds of 2 s per point
    python benchmarks/asyncio_selector.py --rounds 3 --duration 1

The same asyncio echo server (benchmarks/servers/asyncio_echo.py: an asyncio.Protocol that
writes back what it receives) runs on ``asyncio.SelectorEventLoop(selector)`` with either
selector; nothing else differs. Each point starts a fresh server pinned to one core and
the C load generator on another (benchmarks/harness.py); the points run in interleaved
rounds (danga, asyncio, danga, asyncio, ...) after a warm-up, and the result is the ratio
danga / asyncio of round trips per second (of MB/s for 64 KiB messages), per round, shown
as median with min-max. The goal is >= 1.0x: the adapter must cost nothing measurable.

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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "servers"))

import harness  # noqa: E402

SELECTORS = {
    "danga-selector": "danga.Selector('epoll')",
    "asyncio-epoll": "selectors.EpollSelector()",
}
WORKLOADS = ["pp64x1", "pp64x100", "pp64kx10", "pipe64x10x16"]


def serve(name: str, port: int) -> None:
    from asyncio_echo import serve as echo  # benchmarks/servers/asyncio_echo.py

    # Both servers import danga, so that the processes differ by the selector alone: the
    # modules loaded at start-up decide glibc's dynamic mmap threshold, and with it
    # whether asyncio's 256 KiB recv buffer costs an mmap, mremap and munmap per read
    # (measured: 3x the server's CPU per round trip, either way round).
    import danga

    if name == "danga-selector":
        selector: selectors.BaseSelector = danga.Selector("epoll")
    else:
        selector = selectors.EpollSelector()
    loop = asyncio.SelectorEventLoop(selector)
    loop.run_until_complete(echo(port))


def measure(rounds: int, duration: float, warmup: float,
            workloads: list[str]) -> dict[str, dict[str, list[float]]]:
    """Per workload and server, one value per round (interleaved)."""
    settings = harness.Settings(warmup=warmup, duration=duration, rounds=rounds)
    run = harness.new_run(settings, [harness.WORKLOAD_BY_KEY[k] for k in workloads],
                          only=["none"])
    run.servers = [harness.Server(name, [harness.PY, __file__, "--serve", name])
                   for name in SELECTORS]
    harness.execute(run, timers=False)
    for error in run.errors:
        print(f"error: {error}", file=sys.stderr)
    return {wl: {srv: [s["value"] for s in samples] for srv, samples in by_srv.items()}
            for wl, by_srv in run.samples.items()}


def report(values: dict[str, dict[str, list[float]]]) -> list[dict[str, object]]:
    rows = []
    for wl, by_srv in values.items():
        ours, theirs = by_srv.get("danga-selector", []), by_srv.get("asyncio-epoll", [])
        ratios = [a / b for a, b in zip(ours, theirs) if b]
        if not ratios:
            continue
        unit = harness.WORKLOAD_BY_KEY[wl].unit
        rows.append({
            "workload": wl, "unit": unit,
            "danga_selector": statistics.median(ours), "asyncio_epoll": statistics.median(theirs),
            "ratio": statistics.median(ratios), "ratio_min": min(ratios),
            "ratio_max": max(ratios), "rounds": len(ratios),
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
    values = measure(args.rounds, args.duration, args.warmup, args.workloads.split(","))
    rows = report(values)
    print(f"asyncio echo: danga.Selector('epoll') / selectors.EpollSelector, "
          f"{args.rounds} interleaved rounds of {args.duration} s, Python "
          f"{sys.version.split()[0]}")
    print(f"  {'workload':<14}{'danga.Selector':>16}{'EpollSelector':>15}{'ratio':>8}"
          f"{'min-max':>14}")
    for r in rows:
        print(f"  {r['workload']:<14}{r['danga_selector']:>12,.0f} {r['unit']:<4}"
              f"{r['asyncio_epoll']:>10,.0f} {r['unit']:<4}{r['ratio']:>7.3f}x"
              f"  {r['ratio_min']:.3f}-{r['ratio_max']:.3f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
