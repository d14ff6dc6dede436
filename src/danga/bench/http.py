"""The HTTP workloads of ``danga bench``: the two example programs under wrk, against
nginx, haproxy, asyncio and uvloop.

- ``static4k``, ``static1m``: ``examples/static_server.py`` (danga: its open-file
  cache, ``write_file`` for large files) against nginx (one process: ``daemon off;
  master_process off;``, ``sendfile on; tcp_nopush on;``, ``open_file_cache``, no access
  log), and against the same server written on asyncio (``loop.sendfile``) and on
  uvloop (``benchmarks/servers_http/static_asyncio.py``, with the same cache), on a
  4 KiB and a 1 MiB file, keep-alive, ``wrk -t1 -cN``. ``danga-sendfile`` is the danga
  server with ``--small-file-max 0``: every body, the 4 KiB one too, through
  ``write_file``.
- ``proxy4k``: ``examples/proxy.py`` against haproxy (``mode tcp``, one process, one
  thread) and an asyncio Protocol proxy (``benchmarks/servers_http/proxy_asyncio.py``,
  on asyncio and on uvloop), all forwarding to one nginx serving the 4 KiB file, wrk
  through the proxy; that nginx without a proxy is measured alongside.

The servers under test run pinned to the harness's server core, wrk (and the proxies'
backend nginx) to its client core. Each server is started once on a free loopback port,
checked once (the file must come back whole), and warmed with one wrk run; the rounds
are interleaved (every server once per round, the order rotating per round). Each
run records wrk's requests/s and the CPU (user and system, from /proc/PID/stat) the
process under test spent per request; ratios are taken between servers of the same
round. ``strace=True`` also counts each static server's system calls per request during
one extra wrk run (``strace -c -f -p PID``).

The danga programs and the asyncio peers live in a source checkout (``examples/`` and
``benchmarks/servers_http/``): from an installed wheel, and where wrk, nginx or haproxy
is missing, the workloads are skipped with the reason.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .harness import Settings, stats

__all__ = ["WORKLOADS", "run", "skip_reason", "tables"]

#: Workload key -> title.
WORKLOADS = {
    "static4k": "Static file, 4 KiB",
    "static1m": "Static file, 1 MiB",
    "proxy4k": "TCP proxy to nginx, 4 KiB file",
}
#: The file each workload fetches: (name, size).
_FILES = {"static4k": ("4k.bin", 4096), "static1m": ("1m.bin", 1 << 20),
          "proxy4k": ("4k.bin", 4096)}
#: The reference of each workload's ratios.
REFERENCE = {"static4k": "nginx", "static1m": "nginx", "proxy4k": "haproxy"}
_LISTENING = re.compile(r"listening on [\d.]+:(\d+)")
PY = sys.executable

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
{cache}    keepalive_requests 100000000;
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


def checkout() -> Path | None:
    """The source checkout danga runs from (it has examples/ and benchmarks/), or None."""
    import danga

    root = Path(danga.__file__).resolve().parents[2]
    if (root / "examples" / "static_server.py").is_file() and (
            root / "benchmarks" / "servers_http").is_dir():
        return root
    return None


def skip_reason(keys: list[str]) -> str | None:
    """Why the HTTP workloads *keys* cannot run here, or None when they can."""
    tools = ["wrk", "nginx"] + (["haproxy"] if "proxy4k" in keys else [])
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        return (f"{', '.join(missing)} not installed (apt-get install -y "
                f"{' '.join(missing)})")
    if checkout() is None:
        return ("needs a source checkout of danga (examples/static_server.py, "
                "examples/proxy.py and benchmarks/servers_http/ are not in the wheel)")
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _pinned(cmd: list[str], cpu: int | None) -> list[str]:
    return cmd if cpu is None or shutil.which("taskset") is None else [
        "taskset", "-c", str(cpu), *cmd]


class Server:
    """A server process pinned to *cpu*, listening on ``port`` (read from its
    ``listening on HOST:PORT`` line when *port* is None).

    Raises RuntimeError when it does not start listening.
    """

    def __init__(self, name: str, cmd: list[str], cpu: int | None,
                 port: int | None = None, version: str = "") -> None:
        self.name = name
        self.version = version
        self.proc = subprocess.Popen(_pinned(cmd, cpu), text=True, stdout=subprocess.PIPE,
                                     start_new_session=True)
        if port is None:
            assert self.proc.stdout is not None
            line = self.proc.stdout.readline()
            m = _LISTENING.search(line)
            if m is None:
                self.stop()
                raise RuntimeError(f"{name}: expected 'listening on HOST:PORT', "
                                   f"got {line!r}")
            port = int(m.group(1))
        self.port = port
        end = time.monotonic() + 10.0
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {self.proc.returncode} before "
                                   "listening")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > end:
                    self.stop()
                    raise RuntimeError(f"{name} is not listening on port {port}") from None
                time.sleep(0.05)

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


def _first_line(cmd: list[str]) -> str:
    p = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = (p.stdout + p.stderr).strip().splitlines()
    return lines[0] if lines else "?"


def start_nginx(name: str, tmp: Path, root: Path, cpu: int | None,
                cache: bool = True) -> Server:
    """nginx, one process, with ``open_file_cache`` (as the danga server has one) unless
    *cache* is False."""
    port = free_port()
    conf = tmp / f"nginx-{port}.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, port=port, root=root, cache=(
        "    open_file_cache max=1000;\n" if cache else "")))
    return Server(name, ["nginx", "-p", str(tmp), "-c", str(conf)], cpu, port,
                  _first_line(["nginx", "-v"]))


def start_haproxy(tmp: Path, backend: int, cpu: int | None) -> Server:
    port = free_port()
    conf = tmp / f"haproxy-{port}.cfg"
    conf.write_text(HAPROXY_CONF.format(port=port, backend=backend))
    return Server("haproxy", ["haproxy", "-db", "-f", str(conf)], cpu, port,
                  _first_line(["haproxy", "-v"]))


def check(url: str, expected: bytes) -> None:
    """The file at *url* comes back whole (a fast 404 would make a fine benchmark).

    Raises RuntimeError when it does not."""
    with urllib.request.urlopen(url, timeout=10) as r:
        body = r.read()
    if body != expected:
        raise RuntimeError(f"{url}: got {len(body)} bytes, expected {len(expected)}")


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of *pid* so far (/proc/PID/stat fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    hz = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / hz, int(fields[12]) / hz


@dataclass
class Options:
    """How the HTTP workloads run (from the harness's Settings)."""

    seconds: int = 2  # per wrk run
    warmup: int = 1  # the warm-up wrk run, per server
    rounds: int = 3
    connections: int = 16
    server_cpu: int | None = None
    client_cpu: int | None = None
    strace: bool = False
    #: Also measure the static server of another source tree (its examples/ and src/),
    #: as "danga-before": an A/B in the same interleaved rounds.
    before: Path | None = None
    #: Also measure nginx without open_file_cache, as "nginx-nocache".
    nginx_nocache: bool = False

    @classmethod
    def of(cls, st: Settings, strace: bool = False) -> Options:
        return cls(seconds=max(1, round(st.duration)), warmup=max(1, round(st.warmup)),
                   rounds=st.rounds, server_cpu=st.server_cpu, client_cpu=st.client_cpu,
                   strace=strace)


def wrk(server: Server, url: str, opt: Options, seconds: int) -> dict[str, float]:
    """One wrk run against *server*: requests/s, and the server's user and system CPU
    per request (µs) and CPU use (% of a core). Raises RuntimeError on any wrk error."""
    cpu0, t0 = cpu_seconds(server.proc.pid), time.monotonic()
    proc = subprocess.run(
        _pinned(["wrk", "-t1", f"-c{opt.connections}", f"-d{seconds}s", url],
                opt.client_cpu), capture_output=True, text=True, check=False)
    cpu1, wall = cpu_seconds(server.proc.pid), time.monotonic() - t0
    out = proc.stdout
    bad = re.search(r"Socket errors:.*|Non-2xx or 3xx responses:.*", out)
    if proc.returncode != 0 or bad:
        raise RuntimeError(f"wrk {url} ({server.name}): "
                           f"{bad.group(0) if bad else proc.stderr.strip()[-200:]}")
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    count = re.search(r"(\d+) requests in", out)
    if rps is None or count is None:
        raise RuntimeError(f"wrk {url}: no request count in\n{out}")
    n = max(int(count.group(1)), 1)
    user, system = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
    return {"rps": float(rps.group(1)), "requests": n, "user_us": user / n * 1e6,
            "sys_us": system / n * 1e6, "cpu_us": (user + system) / n * 1e6,
            "busy": 100 * (user + system) / wall}


def strace_per_request(server: Server, url: str, opt: Options) -> dict[str, Any]:
    """System calls per request of *server* during one wrk run (``strace -c -f``)."""
    if shutil.which("strace") is None:
        return {"error": "strace is not installed"}
    with tempfile.NamedTemporaryFile("r", suffix=".strace") as out:
        tracer = subprocess.Popen(["strace", "-c", "-f", "-o", out.name, "-p",
                                   str(server.proc.pid)], stderr=subprocess.PIPE)
        time.sleep(0.5)  # attached (strace prints nothing on -c until it detaches)
        try:
            run = wrk(server, url, opt, opt.seconds)
        finally:
            tracer.send_signal(signal.SIGINT)
            tracer.wait(10)
        text = out.read()
    counts: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?([a-z_0-9]+)$", line)
        if m and m.group(2) != "total":
            counts[m.group(2)] = round(int(m.group(1)) / run["requests"], 2)
    if not counts:
        return {"error": f"strace gave nothing: {text.strip()[-120:]}"}
    return {"per_request": round(sum(counts.values()), 2), "calls": counts}


def _measure(targets: list[tuple[Server, str]], opt: Options, label: str,
             progress: Callable[[str], None]) -> dict[str, list[dict[str, float]]]:
    """Warm every target, then interleaved rounds, the order rotating per round."""
    for server, url in targets:
        progress(f"{label}: warming {server.name}")
        wrk(server, url, opt, opt.warmup)
    samples: dict[str, list[dict[str, float]]] = {s.name: [] for s, _ in targets}
    for r in range(opt.rounds):
        k = r % len(targets)
        for server, url in targets[k:] + targets[:k]:
            progress(f"{label}: round {r + 1}/{opt.rounds} {server.name}")
            samples[server.name].append({"round": r, **wrk(server, url, opt, opt.seconds)})
    return samples


def _has_uvloop() -> bool:
    # Found, not imported: the server that uses it is a child process.
    return importlib.util.find_spec("uvloop") is not None


def _python_servers(kind: str, root: Path, arg: list[str], cpu: int | None
                    ) -> list[Callable[[], Server]]:
    """The danga example and its asyncio (and uvloop) peers, as server factories."""
    import danga

    src = checkout()
    assert src is not None
    pyv = f"CPython {sys.version.split()[0]}"
    ver = f"danga {getattr(danga, '__version__', '?')} on {pyv}"
    if kind == "static":
        example, peer = src / "examples" / "static_server.py", "static_asyncio.py"
    else:
        example, peer = src / "examples" / "proxy.py", "proxy_asyncio.py"
    peer_path = src / "benchmarks" / "servers_http" / peer
    suffix = "" if kind == "static" else " proxy"
    makers = [lambda: Server(f"danga{suffix}", [PY, str(example), *arg], cpu, version=ver)]
    if kind == "static":
        makers.append(lambda: Server("danga-sendfile", [PY, str(example), *arg,
                                                        "--small-file-max", "0"], cpu,
                                     version=ver + ", --small-file-max 0"))
    makers.append(lambda: Server(f"asyncio{suffix}", [PY, str(peer_path), *arg], cpu,
                                 version=f"asyncio of {pyv}"))
    if _has_uvloop():
        uv = f"uvloop {importlib.metadata.version('uvloop')} on {pyv}"
        makers.append(lambda: Server(f"uvloop{suffix}", [PY, str(peer_path), *arg,
                                                         "--uvloop"], cpu, version=uv))
    return makers


def run(keys: list[str], opt: Options, progress: Callable[[str], None] | None = None
        ) -> dict[str, Any]:
    """Run the HTTP workloads *keys*; returns the JSON section (``workloads``: per key,
    per server, the runs of every round; ``versions``; ``syscalls`` when straced).
    Every server started is stopped, also on an error (which is raised: RuntimeError)."""
    say = progress or (lambda text: None)
    doc: dict[str, Any] = {"workloads": {}, "versions": {}, "syscalls": {},
                           "connections": opt.connections, "seconds": opt.seconds,
                           "rounds": opt.rounds, "wrk": _first_line(["wrk", "-v"])}
    started: list[Server] = []

    def start(make: Callable[[], Server]) -> Server:
        server = make()
        started.append(server)
        doc["versions"][server.name] = server.version
        return server

    with tempfile.TemporaryDirectory(prefix="danga-http-bench-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            static = [k for k in keys if k.startswith("static")]
            if static:
                root = tmp / "www"
                root.mkdir()
                contents = {}
                for key in static:
                    name, size = _FILES[key]
                    contents[key] = os.urandom(size)
                    (root / name).write_bytes(contents[key])
                cpu = opt.server_cpu
                makers = _python_servers("static", root, ["--root", str(root)], cpu)
                makers.insert(1, lambda: start_nginx("nginx", tmp, root, cpu))
                if opt.nginx_nocache:
                    makers.append(lambda: start_nginx("nginx-nocache", tmp, root, cpu,
                                                      cache=False))
                if opt.before is not None:
                    before = opt.before
                    makers.append(lambda: Server(
                        "danga-before", ["env", f"PYTHONPATH={before / 'src'}", PY,
                                         str(before / "examples" / "static_server.py"),
                                         "--root", str(root)], cpu,
                        version=f"danga from {before}"))
                servers = [start(make) for make in makers]
                for key in static:
                    name = _FILES[key][0]
                    for s in servers:
                        check(s.url(name), contents[key])
                    doc["workloads"][key] = _measure([(s, s.url(name)) for s in servers],
                                                     opt, key, say)
                    if opt.strace:
                        for s in servers:
                            say(f"{key}: strace {s.name}")
                            doc["syscalls"].setdefault(key, {})[s.name] = strace_per_request(
                                s, s.url(name), opt)
                for s in servers:
                    s.stop()
            if "proxy4k" in keys:
                origin_root = tmp / "origin"
                origin_root.mkdir()
                body = os.urandom(4096)
                (origin_root / "4k.bin").write_bytes(body)
                origin = start(lambda: start_nginx("nginx (no proxy)", tmp, origin_root,
                                                   opt.client_cpu))
                to = ["--to", f"127.0.0.1:{origin.port}"]
                cpu = opt.server_cpu
                makers = _python_servers("proxy", origin_root, to, cpu)
                makers.insert(1, lambda: start_haproxy(tmp, origin.port, cpu))
                servers = [start(make) for make in makers] + [origin]
                for s in servers:
                    check(s.url("4k.bin"), body)
                doc["workloads"]["proxy4k"] = _measure(
                    [(s, s.url("4k.bin")) for s in servers], opt, "proxy4k", say)
        finally:
            for s in started:
                s.stop()
    return doc


def ratios(samples: dict[str, list[dict[str, float]]], name: str, ref: str,
           metric: str) -> dict[str, float] | None:
    """*name*'s *metric* over *ref*'s, round by round (median, min, max, n)."""
    if name not in samples or ref not in samples:
        return None
    other = {x["round"]: x[metric] for x in samples[ref]}
    values = [x[metric] / other[x["round"]] for x in samples[name] if other.get(x["round"])]
    return stats(values) if values else None


def _span(s: dict[str, float] | None, fmt: str) -> str:
    if s is None:
        return "n/a"
    return (f"{format(s['median'], fmt)} ({format(s['min'], fmt)}-"
            f"{format(s['max'], fmt)})")


def tables(doc: dict[str, Any]) -> str:
    """The markdown tables of a :func:`run` section."""
    out: list[str] = []
    for key, samples in doc["workloads"].items():
        ref = REFERENCE[key]
        out += ["", f"{WORKLOADS[key]}, keep-alive, wrk -t1 -c{doc['connections']} "
                    f"-d{doc['seconds']}s, {doc['rounds']} interleaved rounds: median "
                    "(min-max)", "",
                f"| server | requests/s | / {ref} | user µs/request | sys µs/request | "
                f"CPU % | CPU/request / {ref} |", "|---|---|---|---|---|---|---|"]
        for name, runs in samples.items():
            def col(metric: str, fmt: str, runs: list[dict[str, float]] = runs) -> str:
                return _span(stats([r[metric] for r in runs]), fmt)

            out.append(f"| {name} | {col('rps', ',.0f')} | "
                       f"{_span(ratios(samples, name, ref, 'rps'), '.2f')} | "
                       f"{col('user_us', '.1f')} | {col('sys_us', '.1f')} | "
                       f"{stats([r['busy'] for r in runs])['median']:.0f} | "
                       f"{_span(ratios(samples, name, ref, 'cpu_us'), '.2f')} |")
        sc = doc.get("syscalls", {}).get(key)
        if sc:
            out += ["", f"System calls per request, {WORKLOADS[key]} (strace -c -f, one "
                        "wrk run each)", ""]
            for name, got in sc.items():
                if "error" in got:
                    out.append(f"- {name}: {got['error']}")
                else:
                    calls = ", ".join(f"{c} {n:g}" for c, n in sorted(
                        got["calls"].items(), key=lambda kv: -kv[1]) if n >= 0.05)
                    out.append(f"- {name}: {got['per_request']:g} ({calls})")
    return "\n".join(out)


def goals(doc: dict[str, Any]) -> list[tuple[str, dict[str, float] | None, float]]:
    """(goal, the measured ratio, its lower bound) for the danga example programs."""
    w = doc.get("workloads", {})
    return [("static 4 KiB requests/s vs nginx",
             ratios(w.get("static4k", {}), "danga", "nginx", "rps"), 0.4),
            ("static 1 MiB requests/s vs nginx",
             ratios(w.get("static1m", {}), "danga", "nginx", "rps"), 0.9)]
