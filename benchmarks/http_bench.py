"""The two example programs under wrk, against nginx, haproxy, asyncio and uvloop.

Run from the repository root (Linux, 2 cores or more; needs wrk, nginx, haproxy)::

    python benchmarks/http_bench.py                     # 5 rounds of 3 s, about 3.5 minutes
    python benchmarks/http_bench.py --rounds 3 --only static

1. **Static files**: ``examples/static_server.py`` (danga, ``write_file`` + ``tcp_cork``)
   against nginx (one process: ``daemon off; master_process off;``, ``sendfile on;
   tcp_nopush on;``, no access log) and against the same server written on asyncio
   (``loop.sendfile``) and on uvloop (benchmarks/servers_http/static_asyncio.py), on a
   4 KiB file and a 1 MiB file, keep-alive, ``wrk -t1 -cN -dDs``.
2. **TCP proxy**: ``examples/proxy.py`` against haproxy (``mode tcp``, one process, one
   thread) and an asyncio Protocol proxy (benchmarks/servers_http/proxy_asyncio.py, on
   asyncio and on uvloop), all forwarding to the same nginx serving the 4 KiB file, with
   wrk through the proxy. nginx without a proxy is measured alongside as the ceiling.

Every server is started here on 127.0.0.1 on a free port, checked once (the file must
come back whole) and warmed with one short wrk run; all servers under test run pinned
to one core (``--server-cpu``), wrk to the other (``--client-cpu``), the proxies'
backend nginx with wrk. Rounds are interleaved (each round runs every server once, in
an order that rotates per round). It prints requests/s as median (min-max) over the
rounds and each server's ratio to nginx (static) or haproxy (proxy) as the median
(min-max) of the per-round ratios, in markdown tables, with the CPU (user and system,
from /proc/PID/stat) that the process under test spent per request. Every server is
killed at the end.

On a 2-core machine the proxy test cannot make the proxy the bottleneck: with the
proxy alone on one core, wrk and the backend nginx saturate the other, so requests/s
is close to the same ceiling for every proxy and the CPU per request is the figure
that separates them (docs/connect.md, "Figures").
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
PEERS = Path(__file__).resolve().parent / "servers_http"
LISTENING = re.compile(r"listening on [\d.]+:(\d+)")
FILES = {"4 KiB": ("4k.bin", 4096), "1 MiB": ("1m.bin", 1 << 20)}

NGINX_CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx-{port}.pid;
error_log {tmp}/nginx-{port}.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000000;
    default_type application/octet-stream;
    client_body_temp_path {tmp}/nginx-{port}-body;
    proxy_temp_path {tmp}/nginx-{port}-proxy;
    fastcgi_temp_path {tmp}/nginx-{port}-fastcgi;
    uwsgi_temp_path {tmp}/nginx-{port}-uwsgi;
    scgi_temp_path {tmp}/nginx-{port}-scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
"""

HAPROXY_CONF = """\
global
    nbthread 1
    maxconn 4096
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend bench
    bind 127.0.0.1:{port}
    default_backend origin
backend origin
    server nginx 127.0.0.1:{backend}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_listening(port: int, proc: subprocess.Popen[str], what: str,
                   deadline: float = 10.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} is not listening on port {port} after {deadline}s")


class Server:
    """A server process pinned to *cpu*; ``port`` is where it listens."""

    def __init__(self, name: str, cmd: list[str], cpu: int, port: int | None = None) -> None:
        self.name = name
        self.proc = subprocess.Popen(["taskset", "-c", str(cpu), *cmd], text=True,
                                     stdout=subprocess.PIPE, start_new_session=True)
        if port is None:  # the program picks a free port and prints it
            assert self.proc.stdout is not None
            line = self.proc.stdout.readline()
            m = LISTENING.search(line)
            if m is None:
                self.stop()
                raise RuntimeError(f"{name}: expected 'listening on HOST:PORT', got {line!r}")
            port = int(m.group(1))
            self.banner = line.strip()
        else:
            self.banner = f"listening on 127.0.0.1:{port}"
        self.port = port
        wait_listening(port, self.proc, name)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def start_nginx(name: str, tmp: Path, root: Path, cpu: int) -> Server:
    port = free_port()
    conf = tmp / f"nginx-{port}.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, port=port, root=root))
    return Server(name, ["nginx", "-p", str(tmp), "-c", str(conf)], cpu, port)


def start_haproxy(tmp: Path, backend: int, cpu: int) -> Server:
    port = free_port()
    conf = tmp / f"haproxy-{port}.cfg"
    conf.write_text(HAPROXY_CONF.format(port=port, backend=backend))
    return Server("haproxy", ["haproxy", "-db", "-f", str(conf)], cpu, port)


def check(url: str, expected: bytes) -> None:
    """The file at *url* comes back whole (a fast 404 would make a fine benchmark)."""
    with urllib.request.urlopen(url, timeout=10) as r:
        body = r.read()
    if body != expected:
        raise RuntimeError(f"{url}: got {len(body)} bytes, expected {len(expected)}")


class Run(NamedTuple):
    """One wrk run against one server."""

    rps: float  # requests per second (wrk's)
    user_us: float  # the server process's user CPU per request, in µs
    sys_us: float  # its system CPU per request (on loopback, mostly TCP for both ends)
    busy: float  # its CPU (user + system) over the run, in % of one core


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of *pid* so far (/proc/PID/stat fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    hz = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / hz, int(fields[12]) / hz


def wrk(server: Server, url: str, args: argparse.Namespace, seconds: int) -> Run:
    """One wrk run against *server*; errors of any kind make it fail."""
    cpu0, t0 = cpu_seconds(server.proc.pid), time.monotonic()
    out = subprocess.run(
        ["taskset", "-c", str(args.client_cpu), "wrk", "-t1", f"-c{args.connections}",
         f"-d{seconds}s", url], capture_output=True, text=True, check=True).stdout
    cpu1, wall = cpu_seconds(server.proc.pid), time.monotonic() - t0
    user, system = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
    bad = re.search(r"Socket errors:.*|Non-2xx or 3xx responses:.*", out)
    if bad:
        raise RuntimeError(f"wrk {url}: {bad.group(0)}\n{out}")
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    count = re.search(r"(\d+) requests in", out)
    if rps is None or count is None:
        raise RuntimeError(f"wrk {url}: no request count in\n{out}")
    n = max(int(count.group(1)), 1)
    return Run(float(rps.group(1)), user / n * 1e6, system / n * 1e6,
               100 * (user + system) / wall)


Target = tuple[Server, str]  # (server, URL)


def measure(targets: list[Target], args: argparse.Namespace) -> dict[str, list[Run]]:
    """Interleaved rounds: every target once per round, the order rotating."""
    for server, url in targets:
        wrk(server, url, args, args.warmup)
    samples: dict[str, list[Run]] = {server.name: [] for server, _ in targets}
    for r in range(args.rounds):
        k = r % len(targets)
        for server, url in targets[k:] + targets[:k]:
            samples[server.name].append(wrk(server, url, args, args.duration))
    return samples


def span(values: Sequence[float], fmt: str) -> str:
    return (f"{format(statistics.median(values), fmt)} "
            f"({format(min(values), fmt)}-{format(max(values), fmt)})")


def table(title: str, samples: dict[str, list[Run]], ref: str, size: int | None) -> None:
    """A markdown table: requests/s, ratio to *ref*, MB/s (when *size*), server CPU
    (the process under test: the proxy, not its backend)."""
    print(f"\n{title}\n")
    mb = " MB/s |" if size else ""
    print(f"| server | requests/s median (min-max) | / {ref} |{mb}"
          " server user µs/request | server sys µs/request | server CPU % |"
          f" CPU/request / {ref} |")
    print("|---|---|---|" + ("---|" if size else "") + "---|---|---|---|")
    for name, runs in samples.items():
        rps = [run.rps for run in runs]
        ratios = [run.rps / other.rps for run, other in zip(runs, samples[ref], strict=True)]
        cost = [(run.user_us + run.sys_us) / (other.user_us + other.sys_us)
                for run, other in zip(runs, samples[ref], strict=True)]
        rate = f" {statistics.median(rps) * size / 1e6:,.0f} |" if size else ""
        print(f"| {name} | {span(rps, ',.0f')} | {span(ratios, '.2f')} |{rate}"
              f" {span([run.user_us for run in runs], '.1f')} |"
              f" {span([run.sys_us for run in runs], '.1f')} |"
              f" {statistics.median([run.busy for run in runs]):.0f} |"
              f" {span(cost, '.2f')} |")


def static_part(tmp: Path, args: argparse.Namespace, started: list[Server]) -> None:
    root = tmp / "www"
    root.mkdir()
    contents = {}
    for label, (fname, size) in FILES.items():
        contents[label] = os.urandom(size)
        (root / fname).write_bytes(contents[label])
    cpu = args.server_cpu
    makers: list[Callable[[], Server]] = [
        lambda: Server("danga", [sys.executable, str(EXAMPLES / "static_server.py"),
                                 "--root", str(root)], cpu),
        lambda: start_nginx("nginx", tmp, root, cpu),
        lambda: Server("asyncio", [sys.executable, str(PEERS / "static_asyncio.py"),
                                   "--root", str(root)], cpu),
    ]
    if has_uvloop():
        makers.append(lambda: Server("uvloop", [sys.executable, str(PEERS / "static_asyncio.py"),
                                                "--root", str(root), "--uvloop"], cpu))
    servers = []
    for make in makers:
        servers.append(make())
        started.append(servers[-1])
        print(f"  {servers[-1].name}: {servers[-1].banner}", flush=True)
    for label, (fname, size) in FILES.items():
        for s in servers:
            check(s.url(fname), contents[label])
        samples = measure([(s, s.url(fname)) for s in servers], args)
        table(f"Static file, {label}, keep-alive, wrk -t1 -c{args.connections} "
              f"-d{args.duration:g}s, {args.rounds} rounds", samples, "nginx", size)
    for s in servers:
        s.stop()


def proxy_part(tmp: Path, args: argparse.Namespace, started: list[Server]) -> None:
    root = tmp / "origin"
    root.mkdir()
    body = os.urandom(4096)
    (root / "4k.bin").write_bytes(body)
    origin = start_nginx("nginx (no proxy)", tmp, root, args.origin_cpu)
    started.append(origin)
    to = f"127.0.0.1:{origin.port}"
    cpu = args.server_cpu
    makers: list[Callable[[], Server]] = [
        lambda: Server("danga proxy", [sys.executable, str(EXAMPLES / "proxy.py"),
                                       "--to", to], cpu),
        lambda: start_haproxy(tmp, origin.port, cpu),
        lambda: Server("asyncio proxy", [sys.executable, str(PEERS / "proxy_asyncio.py"),
                                         "--to", to], cpu),
    ]
    if has_uvloop():
        makers.append(lambda: Server("uvloop proxy", [sys.executable,
                                                      str(PEERS / "proxy_asyncio.py"),
                                                      "--to", to, "--uvloop"], cpu))
    servers = []
    for make in makers:
        servers.append(make())
        started.append(servers[-1])
        print(f"  {servers[-1].name}: {servers[-1].banner}", flush=True)
    for s in [*servers, origin]:
        check(s.url("4k.bin"), body)
    samples = measure([(s, s.url("4k.bin")) for s in [*servers, origin]], args)
    table(f"TCP proxy to nginx (4 KiB file), keep-alive, wrk -t1 -c{args.connections} "
          f"-d{args.duration:g}s, {args.rounds} rounds", samples, "haproxy", None)
    for s in [*servers, origin]:
        s.stop()


def has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def versions() -> None:
    def first_line(cmd: list[str]) -> str:
        p = subprocess.run(cmd, capture_output=True, text=True)
        return (p.stdout + p.stderr).strip().splitlines()[0]

    import danga

    print(f"Python {platform.python_version()} ({platform.python_implementation()}), "
          f"danga {danga.__version__} (backend {danga.Loop().backend.name})")
    print(first_line(["nginx", "-v"]))
    print(first_line(["haproxy", "-v"]))
    print(first_line(["wrk", "-v"]))
    if has_uvloop():
        import uvloop

        print(f"uvloop {getattr(uvloop, '__version__', '?')}")
    print(f"Linux {platform.release()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--duration", type=int, default=3, help="seconds per wrk run (3)")
    p.add_argument("--warmup", type=int, default=1, help="seconds of the warm-up run (1)")
    p.add_argument("--connections", type=int, default=16, help="wrk connections (16)")
    p.add_argument("--server-cpu", type=int, default=0, help="core of the servers (0)")
    p.add_argument("--client-cpu", type=int, default=1, help="core of wrk (1)")
    p.add_argument("--origin-cpu", type=int, default=1,
                   help="core of the proxies' backend nginx (1: with wrk)")
    p.add_argument("--only", choices=["static", "proxy"], default=None)
    args = p.parse_args(argv)
    missing = [t for t in ("wrk", "nginx", "haproxy", "taskset") if shutil.which(t) is None]
    if missing:
        print(f"http_bench: missing {', '.join(missing)} "
              "(apt-get install -y wrk nginx haproxy util-linux)", file=sys.stderr)
        return 2
    versions()
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}", flush=True)
    started: list[Server] = []
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="http-bench-") as tmp:
        try:
            if args.only in (None, "static"):
                static_part(Path(tmp), args, started)
            if args.only in (None, "proxy"):
                proxy_part(Path(tmp), args, started)
        finally:
            for s in started:
                s.stop()
    print(f"\n{time.monotonic() - start:.0f} s; load average now {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
