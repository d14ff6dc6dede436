"""danga.prefork figures: CPU per request, 1 worker against 2, and fairness per worker.

Run from the repository root (Linux; wrk for the fairness part)::

    python benchmarks/prefork_bench.py --rounds 3 --duration 5 --rate 3000

Two measurements, both against ``examples/prefork_echo.py --http`` (a fixed 200 reply):

1. **Server CPU per request** (user + system, from /proc/PID/stat, summed over the
   workers) at the same offered load: a paced load generator in this process keeps
   ``--rate`` requests per second over 64 connections, for 1 worker and for 2 workers,
   in interleaved rounds after a warm-up. This measures the cost of spreading the work
   over processes and should stay flat (ratio near 1.0).
2. **Fairness**: 2 workers with one listener shared by both (made by the master) and
   with a SO_REUSEPORT listener per worker, under the same paced load and under wrk
   with 64 connections (as fast as it goes); each worker reports how many requests it
   served; Jain's index is (sum x)^2 / (n * sum x^2), 1.0 for a perfect split and 1/n
   when one worker does everything.
3. **Listener close**: two SO_REUSEPORT listeners, 40 connections queued, one listener
   closed: how many clients are reset, with this machine's ``tcp_migrate_req`` and (as
   root, in a private network namespace made with ``unshare -n``) with 1.

A throughput scaling curve (1, 2, 4, 8 workers) is not measured: it needs more cores
than workers plus load generator, and this machine has 2, shared with the load
generator. The JSON goes to benchmarks/results/prefork-RATE[-cpu].json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "prefork_echo.py"
RESULTS = ROOT / "benchmarks" / "results"
READY = re.compile(r"worker (\d+) pid (\d+) listening on [\d.]+:(\d+)")
SERVED = re.compile(r"worker (\d+) pid (\d+) served connections=(\d+) requests=(\d+)")
REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
sys.path.insert(0, str(EXAMPLE.parent))
from prefork_echo import RESPONSE  # noqa: E402  (the reply whose bytes we count)

RESPONSE_LEN = len(RESPONSE)


class Prefork:
    """examples/prefork_echo.py --http in a subprocess: its workers, then their counts."""

    def __init__(self, workers: int, reuse_port: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(EXAMPLE), "--http", "--workers", str(workers),
             "--reuse-port", reuse_port], stdout=subprocess.PIPE, start_new_session=True)
        assert self.proc.stdout is not None
        self.lines = iter(self.proc.stdout.readline, b"")
        self.master = int(next(self.lines).split()[2])
        self.pids: list[int] = []
        while len(self.pids) < workers:
            m = READY.search(next(self.lines).decode())
            if m:
                self.pids.append(int(m.group(2)))
                self.port = int(m.group(3))

    def cpu(self) -> float:
        """Seconds of CPU (user + system) used by the workers so far."""
        total = 0
        for pid in self.pids:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")

    def wakeups(self) -> int:
        """Voluntary context switches of the workers so far: how often a worker slept in
        its poll and was woken (fewer per request means bigger batches per poll)."""
        total = 0
        for pid in self.pids:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches:"):
                        total += int(line.split()[1])
        return total

    def stop(self) -> list[int]:
        """TERM the master; the requests each worker served, by worker id."""
        os.kill(self.master, signal.SIGTERM)
        served: dict[int, int] = {}
        for raw in self.lines:
            m = SERVED.search(raw.decode())
            if m:
                served[int(m.group(1))] = int(m.group(4))
        code = self.proc.wait(60)
        if code != 0:
            raise RuntimeError(f"prefork_echo exited {code}")
        return [served[k] for k in sorted(served)]


def paced_load(port: int, rate: float, seconds: float, conns: int = 64) -> int:
    """Send *rate* requests/s in total over *conns* connections for *seconds*; a
    connection waits for its reply before its next request. Returns the replies."""
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(conns)]
    sel = selectors.DefaultSelector()
    interval = conns / rate
    start = time.monotonic()
    due = {s: start + i * interval / conns for i, s in enumerate(socks)}
    pending = dict.fromkeys(socks, 0)  # bytes of reply still expected
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    done = 0
    end = start + seconds
    while True:
        now = time.monotonic()
        if now >= end:
            break
        for s in socks:
            if not pending[s] and due[s] <= now:
                s.send(REQUEST)
                pending[s] = RESPONSE_LEN
                due[s] += interval
        wait = min([due[s] for s in socks if not pending[s]] + [end]) - now
        for key, _ in sel.select(max(wait, 0.0)):
            s = key.fileobj
            assert isinstance(s, socket.socket)
            got = len(s.recv(65536))
            pending[s] -= got
            if pending[s] <= 0:
                pending[s] = 0
                done += 1
    sel.close()
    for s in socks:
        s.close()
    return done


def cpu_per_request(workers: int, rate: float, seconds: float, warmup: float) -> dict[str, Any]:
    server = Prefork(workers, "yes")
    try:
        paced_load(server.port, rate, warmup)
        cpu0, wake0 = server.cpu(), server.wakeups()
        replies = paced_load(server.port, rate, seconds)
        cpu, wakeups = server.cpu() - cpu0, server.wakeups() - wake0
    finally:
        server.stop()
    return {"workers": workers, "replies": replies, "rate": replies / seconds,
            "cpu_us_per_request": cpu * 1e6 / replies,
            "requests_per_wakeup": replies / max(wakeups, 1)}


def jain(counts: list[int]) -> float:
    return sum(counts) ** 2 / (len(counts) * sum(c * c for c in counts))


def fairness(mode: str, seconds: float, rate: float | None, workers: int = 2
             ) -> dict[str, Any]:
    """Per-worker request counts under wrk (*rate* None: as fast as it goes) or under
    the paced load at *rate* requests/s."""
    server = Prefork(workers, mode)
    try:
        if rate is not None:
            paced_load(server.port, rate, seconds)
        else:
            wrk = shutil.which("wrk")
            assert wrk is not None
            subprocess.run([wrk, "-t", "2", "-c", "64", "-d", f"{max(1, round(seconds))}s",
                            f"http://127.0.0.1:{server.port}/"], check=True,
                           capture_output=True, timeout=seconds + 60)
    finally:
        counts = server.stop()
    load = "wrk -c 64" if rate is None else f"paced {rate:.0f}/s"
    return {"listener": "SO_REUSEPORT" if mode == "yes" else "shared", "load": load,
            "counts": counts, "jain": jain(counts), "smallest_share": min(counts) / sum(counts)}


def migrate_resets(clients: int = 40) -> dict[str, Any]:
    """Two SO_REUSEPORT listeners, *clients* connections queued (not accepted), close
    one listener: how many clients are reset, how many the other listener accepts."""
    with open("/proc/sys/net/ipv4/tcp_migrate_req") as f:
        setting = int(f.read())
    listeners = []
    port = 0
    for _ in range(2):
        lsn = socket.socket()
        lsn.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        lsn.bind(("127.0.0.1", port))
        lsn.listen(clients)
        port = lsn.getsockname()[1]
        listeners.append(lsn)
    conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(clients)]
    listeners[0].close()
    survivor = listeners[1]
    survivor.setblocking(False)
    accepted = []
    while True:
        try:
            accepted.append(survivor.accept()[0])
        except BlockingIOError:
            break
    reset = 0
    for conn in conns:
        conn.setblocking(False)
        try:
            conn.recv(1)
        except ConnectionResetError:
            reset += 1
        except BlockingIOError:
            pass
    for sock in [*conns, *accepted, survivor]:
        sock.close()
    return {"tcp_migrate_req": setting, "clients": clients, "reset": reset,
            "accepted_by_survivor": len(accepted)}


def migrate_figures() -> list[dict[str, Any]]:
    """The reset count here, and with tcp_migrate_req=1 in a private network namespace
    (``unshare -n``, root only; skipped with a note otherwise)."""
    points = [migrate_resets()]
    inner = ("ip link set lo up && sysctl -qw net.ipv4.tcp_migrate_req=1 && "
             f"{sys.executable} {Path(__file__).resolve()} --migrate-only")
    unshare = shutil.which("unshare")
    if unshare and points[0]["tcp_migrate_req"] == 0:
        run = subprocess.run([unshare, "-n", "sh", "-c", inner], capture_output=True,
                             text=True, timeout=60)
        if run.returncode == 0:
            points.append(json.loads(run.stdout))
        else:
            print(f"(no private namespace for tcp_migrate_req=1: {run.stderr.strip()})")
    return points


def _span(values: list[float], digits: int = 1) -> str:
    def f(v: float) -> str:
        return f"{v:.{digits}f}"

    return f"{f(statistics.median(values))} ({f(min(values))}-{f(max(values))})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per point")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before each")
    parser.add_argument("--rate", type=float, default=3000.0, help="requests/s offered")
    parser.add_argument("--cpu-only", action="store_true",
                        help="only the CPU per request (no fairness, no listener close)")
    parser.add_argument("--migrate-only", action="store_true",
                        help="only the listener-close reset count, as JSON")
    args = parser.parse_args(argv)
    if args.migrate_only:
        print(json.dumps(migrate_resets()))
        return 0

    cpu: dict[int, list[float]] = {1: [], 2: []}
    rates: dict[int, list[float]] = {1: [], 2: []}
    batch: dict[int, list[float]] = {1: [], 2: []}
    fair: dict[str, list[dict[str, Any]]] = {}
    for r in range(args.rounds):
        order = (1, 2) if r % 2 == 0 else (2, 1)  # interleaved, alternating first
        for workers in order:
            point = cpu_per_request(workers, args.rate, args.duration, args.warmup)
            cpu[workers].append(point["cpu_us_per_request"])
            rates[workers].append(point["rate"])
            batch[workers].append(point["requests_per_wakeup"])
            print(f"round {r}: {workers} worker(s): {point['rate']:.0f} req/s, "
                  f"{point['cpu_us_per_request']:.1f} CPU-us/request, "
                  f"{point['requests_per_wakeup']:.1f} requests/wakeup", flush=True)
        loads = [args.rate, None] if shutil.which("wrk") else [args.rate]
        if args.cpu_only:
            loads = []
        for mode in (("no", "yes") if r % 2 == 0 else ("yes", "no")):
            for rate in loads:
                point = fairness(mode, args.duration, rate)
                fair.setdefault(f"{point['listener']}, {point['load']}", []).append(point)
                print(f"round {r}: {point['listener']}, {point['load']}: {point['counts']}"
                      f" Jain {point['jain']:.3f}", flush=True)
    ratios = [b / a for a, b in zip(cpu[1], cpu[2], strict=True)]
    migrate = [] if args.cpu_only else migrate_figures()
    doc = {
        "command": "python benchmarks/prefork_bench.py " + " ".join(argv or sys.argv[1:]),
        "cpus": os.cpu_count(),
        "offered_rate": args.rate,
        "cpu_us_per_request": {str(k): v for k, v in cpu.items()},
        "achieved_rate": {str(k): v for k, v in rates.items()},
        "requests_per_wakeup": {str(k): v for k, v in batch.items()},
        "ratio_2_over_1": ratios,
        "fairness": fair,
        "listener_close": migrate,
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"prefork-{args.rate:.0f}{'-cpu' if args.cpu_only else ''}.json"
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print()
    print(f"CPU-us per request at {args.rate:.0f} req/s offered (median, min-max, "
          f"{args.rounds} rounds):")
    print(f"  1 worker : {_span(cpu[1])}   requests per wakeup {_span(batch[1])}")
    print(f"  2 workers: {_span(cpu[2])}   requests per wakeup {_span(batch[2])}")
    print(f"  ratio 2/1: {statistics.median(ratios):.2f} "
          f"({min(ratios):.2f}-{max(ratios):.2f})")
    for name, points in fair.items():
        if points:
            print(f"  {name:28}: Jain {_span([p['jain'] for p in points], 3)}, "
                  f"smallest share {_span([100 * p['smallest_share'] for p in points])}%; "
                  f"counts {[p['counts'] for p in points]}")
    for point in migrate:
        print(f"  closing 1 of 2 reuseport listeners with {point['clients']} queued, "
              f"tcp_migrate_req={point['tcp_migrate_req']}: {point['reset']} reset, "
              f"{point['accepted_by_survivor']} accepted by the other")
    print("A throughput scaling curve needs more cores than workers + load generator;"
          f" this machine has {os.cpu_count()}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
