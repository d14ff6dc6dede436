"""The command line of a benchmark run, shared by ``danga bench`` and benchmarks/run.py.

:func:`configure` adds the options (the caller gives the defaults, including where the
JSON and the chart go); :func:`run` discovers the servers, runs the interleaved rounds,
counts system calls with strace, prints the tables and writes the files.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from . import harness, http, report, strace_count

QUICK = {"rounds": 1, "duration": 0.5, "warmup": 0.2}
#: The servers whose system calls per round trip are counted (strace slows a server down
#: a lot, so only the loops compared in the docs).
STRACED = ("danga-epoll", "asyncio", "uvloop", "rloop", "epoll-raw", "c-epoll")


def parser(defaults: dict[str, float], *, json: Path, png: Path,
           prog: str | None = None) -> argparse.ArgumentParser:
    """A parser with :func:`configure`'s options."""
    p = argparse.ArgumentParser(prog=prog, description="danga's echo benchmarks")
    configure(p, defaults, json=json, png=png)
    return p


def configure(p: argparse.ArgumentParser, defaults: dict[str, float], *, json: Path,
              png: Path) -> None:
    """Add the run's options to *p*: *defaults* has rounds, duration and warmup."""
    p.add_argument("--quick", action="store_true", help="a smoke run: one short round")
    p.add_argument("--rounds", type=int, default=int(defaults["rounds"]),
                   help=f"interleaved rounds (default {defaults['rounds']})")
    p.add_argument("--duration", type=float, default=defaults["duration"],
                   help=f"seconds measured per point (default {defaults['duration']})")
    p.add_argument("--warmup", type=float, default=defaults["warmup"],
                   help=f"seconds of load before each measurement (default "
                        f"{defaults['warmup']}), after the warm-up connection")
    p.add_argument("--servers", help="comma-separated server names (default: all available)")
    p.add_argument("--workloads", help="comma-separated workload keys: " +
                   ",".join([*(w.key for w in harness.WORKLOADS), *http.WORKLOADS]) +
                   " (the last three: HTTP, with wrk, nginx and haproxy)")
    p.add_argument("--no-timers", action="store_true", help="skip the timer benchmark")
    p.add_argument("--no-syscalls", action="store_true",
                   help="skip the strace measurements (echo and HTTP)")
    p.add_argument("--json", type=Path, default=json, help=f"where to write the JSON "
                                                           f"(default {json})")
    p.add_argument("--png", type=Path, default=png, help=f"where to draw the chart "
                                                         f"(default {png})")
    p.add_argument("--no-png", action="store_true", help="do not draw the chart")
    p.add_argument("--cold", action="store_true",
                   help="skip the warm-up connection, to see the servers' cold state (the "
                        "tables say so; not a figure to compare)")


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


def _workloads(spec: str | None) -> tuple[list[harness.Workload], list[str]]:
    """The echo workloads and the HTTP workload keys named in *spec* (all when None).

    Raises ValueError for an unknown one.
    """
    if spec is None:
        return list(harness.WORKLOADS), list(http.WORKLOADS)
    keys = [k.strip() for k in spec.split(",") if k.strip()]
    unknown = [k for k in keys if k not in harness.WORKLOAD_BY_KEY and k not in http.WORKLOADS]
    if unknown:
        raise ValueError(f"--workloads: unknown workload(s) {', '.join(unknown)}; known: "
                         f"{', '.join([*harness.WORKLOAD_BY_KEY, *http.WORKLOADS])}")
    return ([harness.WORKLOAD_BY_KEY[k] for k in keys if k in harness.WORKLOAD_BY_KEY],
            [k for k in keys if k in http.WORKLOADS])


def _http(keys: list[str], settings: harness.Settings, strace: bool) -> dict[str, object]:
    """The HTTP workloads' JSON section: their runs, or why they were skipped."""
    reason = http.skip_reason(keys)
    if reason is not None:
        print(f"NOTE: HTTP workloads skipped: {reason}", file=sys.stderr)
        return {"skipped": reason}
    try:
        return http.run(keys, http.Options.of(settings, strace=strace),
                        lambda label: _progress(0, 1, f"http {label}"))
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        print(f"NOTE: HTTP workloads failed: {exc}", file=sys.stderr)
        return {"error": str(exc)[:300]}


def run(args: argparse.Namespace) -> int:
    """Run what *args* asks for; print the tables. Returns the exit status.

    Raises ValueError for an unknown workload name.
    """
    if args.quick:
        args.rounds, args.duration, args.warmup = (int(QUICK["rounds"]), QUICK["duration"],
                                                   QUICK["warmup"])
    workloads, http_keys = _workloads(args.workloads)
    only = [s.strip() for s in args.servers.split(",")] if args.servers else None
    settings = harness.Settings(warmup=args.warmup, duration=args.duration, rounds=args.rounds,
                                warm=not args.cold)
    started = time.monotonic()
    r = harness.new_run(settings, workloads, only)
    if workloads and not r.servers:
        print("danga bench: no server to measure", file=sys.stderr)
        return 2
    if not workloads:  # HTTP workloads only: no echo server, no timers
        r.servers, r.workloads, args.no_timers = [], [], True
    if r.loadgen_kind != "c":
        print("NOTE: no C compiler: using the PYTHON FALLBACK load generator; its figures "
              "are floors", file=sys.stderr)
    if settings.client_cpu is None:
        print("NOTE: fewer than 2 cores: server and client are not pinned apart",
              file=sys.stderr)
    harness.execute(r, _progress, timers=not args.no_timers)
    if not args.no_syscalls and r.servers:
        for srv in r.servers:
            if srv.name in STRACED:
                _progress(0, 1, f"strace -c {srv.name}")
                try:
                    r.syscalls[srv.name] = strace_count.measure(
                        srv, settings, r.loadgen, window=max(1.0, min(args.duration, 2.0)))
                except Exception as exc:  # strace missing or ptrace refused: say so
                    r.syscalls[srv.name] = {"error": str(exc)[:120]}
        _progress(1, 1, "strace done")
    doc = harness.summarise(r)
    if http_keys:
        doc["http"] = _http(http_keys, settings, strace=not args.no_syscalls)
    doc["goals"] = report.goals(doc)
    doc["elapsed_s"] = round(time.monotonic() - started, 1)
    doc["command"] = " ".join(sys.argv)
    harness.write_json(doc, args.json)
    print(report.table(doc))
    print(f"\nJSON: {args.json}")
    if not args.no_png:
        note = report.chart(doc, args.png)
        print(note or f"chart: {args.png}")
    return 0
