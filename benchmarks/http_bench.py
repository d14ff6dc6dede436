"""The two example programs under wrk, against nginx, haproxy, asyncio and uvloop.

Run from the repository root (Linux, 2 cores or more; needs wrk, nginx, haproxy)::

    python benchmarks/http_bench.py                     # 5 rounds of 3 s, about 5 minutes
    python benchmarks/http_bench.py --rounds 3 --only static4k,static1m --strace

The workloads and the harness are ``danga.bench.http`` (also run by ``danga bench
--workloads static4k,static1m,proxy4k``): see its docstring for what is measured and
how. This script prints the versions, the load average before and after, and the
tables; ``--json`` also writes the runs.

On a 2-core machine the proxy test cannot make the proxy the bottleneck: with the
proxy alone on one core, wrk and the backend nginx saturate the other, so requests/s
is close to the same ceiling for every proxy and the CPU per request is the figure
that separates them (docs/connect.md, "Figures").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from danga.bench import http


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--duration", type=int, default=3, help="seconds per wrk run (3)")
    p.add_argument("--warmup", type=int, default=1, help="seconds of the warm-up run (1)")
    p.add_argument("--connections", type=int, default=16, help="wrk connections (16)")
    p.add_argument("--server-cpu", type=int, default=0, help="core of the servers (0)")
    p.add_argument("--client-cpu", type=int, default=1,
                   help="core of wrk and of the proxies' backend nginx (1)")
    p.add_argument("--only", default=",".join(http.WORKLOADS),
                   help=f"comma-separated workloads (default: {','.join(http.WORKLOADS)})")
    p.add_argument("--strace", action="store_true",
                   help="also count each static server's system calls per request")
    p.add_argument("--before", type=Path,
                   help="a source tree (with examples/ and src/) whose static server is "
                        "measured too, as danga-before (an A/B in the same rounds)")
    p.add_argument("--nginx-nocache", action="store_true",
                   help="also measure nginx without open_file_cache")
    p.add_argument("--json", type=Path, help="write the runs here")
    args = p.parse_args(argv)
    keys = [k.strip() for k in args.only.split(",") if k.strip()]
    unknown = [k for k in keys if k not in http.WORKLOADS]
    if unknown:
        p.error(f"--only: unknown workload(s) {', '.join(unknown)}")
    reason = http.skip_reason(keys)
    if reason is None and shutil.which("taskset") is None:
        reason = "taskset not installed (apt-get install -y util-linux)"
    if reason is not None:
        print(f"http_bench: {reason}", file=sys.stderr)
        return 2
    load = os.getloadavg()
    print(f"Python {platform.python_version()}, Linux {platform.release()}, "
          f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}", flush=True)
    opt = http.Options(seconds=args.duration, warmup=args.warmup, rounds=args.rounds,
                       connections=args.connections, server_cpu=args.server_cpu,
                       client_cpu=args.client_cpu, strace=args.strace, before=args.before,
                       nginx_nocache=args.nginx_nocache)
    start = time.monotonic()
    doc = http.run(keys, opt, lambda label: print(f"  {label}", file=sys.stderr, flush=True))
    for name, version in doc["versions"].items():
        print(f"- {name}: {version}")
    print(f"- {doc['wrk']}")
    print(http.tables(doc))
    load = os.getloadavg()
    print(f"\n{time.monotonic() - start:.0f} s; load average now {load[0]:.2f} "
          f"{load[1]:.2f} {load[2]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
