"""Run the benchmarks: ``python benchmarks/run.py`` (full, ~10-15 minutes).

``--quick`` is a smoke run (one short round). Writes the terminal table, the JSON file
(``benchmarks/results/latest.json``) and the chart (``docs/performance.png``).
``danga bench`` calls :func:`main` with short defaults.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness
import strace_count

REPO = harness.HERE.parent
FULL = {"rounds": 3, "duration": 2.0, "warmup": 0.5}
QUICK = {"rounds": 1, "duration": 0.5, "warmup": 0.2}


def parser(defaults: dict[str, float], prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    configure(p, defaults)
    return p


def configure(p: argparse.ArgumentParser, defaults: dict[str, float]) -> None:
    p.add_argument("--quick", action="store_true", help="a smoke run: one short round")
    p.add_argument("--rounds", type=int, default=int(defaults["rounds"]),
                   help=f"interleaved rounds (default {defaults['rounds']})")
    p.add_argument("--duration", type=float, default=defaults["duration"],
                   help=f"seconds measured per point (default {defaults['duration']})")
    p.add_argument("--warmup", type=float, default=defaults["warmup"],
                   help=f"seconds of warm-up per point (default {defaults['warmup']})")
    p.add_argument("--servers", help="comma-separated server names (default: all available)")
    p.add_argument("--workloads", help="comma-separated workload keys: " +
                   ",".join(w.key for w in harness.WORKLOADS))
    p.add_argument("--no-timers", action="store_true", help="skip the timer benchmark")
    p.add_argument("--no-syscalls", action="store_true", help="skip the strace measurement")
    p.add_argument("--json", type=Path, default=harness.RESULTS / "latest.json",
                   help="where to write the JSON (default benchmarks/results/latest.json)")
    p.add_argument("--png", type=Path, default=REPO / "docs" / "performance.png",
                   help="where to write the chart (default docs/performance.png)")
    p.add_argument("--no-png", action="store_true", help="do not draw the chart")


def _progress(done: int, total: int, label: str) -> None:
    width = 24
    filled = int(width * done / max(total, 1))
    bar = "#" * filled + "." * (width - filled)
    end = "\n" if done >= total else ""
    stream = sys.stderr
    if stream.isatty():
        stream.write(f"\r[{bar}] {done}/{total} {label:<48}"[:110] + end)
    else:
        stream.write(f"[{bar}] {done}/{total} {label}\n")
    stream.flush()


def run(args: argparse.Namespace) -> int:
    """Run what *args* asks for; print the table. Returns the exit status."""
    if args.quick:
        args.rounds, args.duration, args.warmup = (int(QUICK["rounds"]), QUICK["duration"],
                                                   QUICK["warmup"])
    workloads = list(harness.WORKLOADS)
    if args.workloads:
        keys = [k.strip() for k in args.workloads.split(",") if k.strip()]
        unknown = [k for k in keys if k not in harness.WORKLOAD_BY_KEY]
        if unknown:
            print(f"unknown workload(s) {', '.join(unknown)}; known: "
                  f"{', '.join(harness.WORKLOAD_BY_KEY)}", file=sys.stderr)
            return 2
        workloads = [harness.WORKLOAD_BY_KEY[k] for k in keys]
    only = [s.strip() for s in args.servers.split(",")] if args.servers else None
    settings = harness.Settings(warmup=args.warmup, duration=args.duration, rounds=args.rounds)
    started = time.monotonic()
    r = harness.new_run(settings, workloads, only)
    if not r.servers:
        print("no server to measure", file=sys.stderr)
        return 2
    if r.loadgen_kind != "c":
        print("NOTE: no C compiler: using the PYTHON FALLBACK load generator; its figures "
              "are floors", file=sys.stderr)
    if settings.client_cpu is None:
        print("NOTE: fewer than 2 cores: server and client are not pinned apart",
              file=sys.stderr)
    harness.execute(r, _progress, timers=not args.no_timers)
    if not args.no_syscalls:
        for srv in r.servers:
            if srv.name in ("danga-epoll", "asyncio", "uvloop", "epoll-raw", "c-epoll"):
                _progress(0, 1, f"strace -c {srv.name}")
                try:
                    r.syscalls[srv.name] = strace_count.measure(
                        srv, settings, r.loadgen, window=max(1.0, min(args.duration, 2.0)))
                except Exception as exc:  # strace missing or ptrace refused: say so
                    r.syscalls[srv.name] = {"error": str(exc)[:120]}
        _progress(1, 1, "strace done")
    doc = harness.summarise(r)
    doc["elapsed_s"] = round(time.monotonic() - started, 1)
    doc["command"] = " ".join(sys.argv)
    harness.write_json(doc, args.json)
    print(harness.table(doc))
    print(f"\nJSON: {args.json}")
    if not args.no_png:
        note = harness.chart(doc, args.png)
        print(note or f"chart: {args.png}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run(parser(FULL).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
