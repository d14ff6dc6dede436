"""A/B: the danga echo server from another source tree against this one, interleaved.

``python benchmarks/ab.py --before /path/to/src [--workloads pp64x10,idle10000]
[--rounds 5]`` prints, per workload, the median (min-max) of both and the ratio
after/before for throughput, server user CPU per round trip and bytes per idle
connection. Used to measure a hot-path change before committing it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from danga.bench import harness


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--before", type=Path, required=True, help="a src/ directory holding danga/")
    p.add_argument("--backend", default="epoll")
    p.add_argument("--workloads", default="pp64x10,pipe64x10x16,idle10000")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--duration", type=float, default=2.0)
    a = p.parse_args()
    settings = harness.Settings(warmup=0.5, duration=a.duration, rounds=a.rounds)
    harness.raise_nofile()
    cores = harness.cpus()
    if len(cores) >= 2:
        settings.server_cpu, settings.client_cpu = cores[0], cores[1]
    loadgen, _ = harness.loadgen_command()
    cmd = [harness.PY, str(harness.SERVERS_DIR / "danga_echo.py"), "--backend", a.backend]
    servers = {
        "before": harness.Server("before", ["env", f"PYTHONPATH={a.before}", *cmd]),
        "after": harness.Server("after", cmd),
    }
    wls = [harness.WORKLOAD_BY_KEY[k] for k in a.workloads.split(",")]
    got: dict[tuple[str, str], list[dict]] = {}
    for rnd in range(a.rounds):
        for wl in wls:
            for name, srv in servers.items():
                res = harness.run_point(srv, wl, settings, loadgen)
                got.setdefault((wl.key, name), []).append(res)
                print(f"round {rnd + 1} {wl.key} {name}: {res['value']:.0f} {wl.unit}",
                      file=sys.stderr)
    for wl in wls:
        for metric in ("value", "server_user_us_per_rt", "bytes_per_idle"):
            if metric == "bytes_per_idle" and not wl.idle:
                continue
            vals = {n: [r[metric] for r in got[(wl.key, n)]] for n in servers}
            med = {n: statistics.median(v) for n, v in vals.items()}
            line = "  ".join(f"{n} {med[n]:.2f} ({min(v):.2f}-{max(v):.2f})"
                             for n, v in vals.items())
            r = med["after"] / med["before"]
            print(f"{wl.key:<13} {metric:<22} {line}  after/before {r:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
