"""The benchmark harness: servers side by side, interleaved rounds, ratios.

Used by ``python benchmarks/run.py`` (the full run) and ``danga bench`` (a short one).
Each measurement point starts a fresh server process pinned to one core, runs the load
generator pinned to another, and reads the server's CPU from its own kernel accounting
(/proc/PID/stat). Points are run in interleaved rounds (A B C A B C ...) so that the
noise of a shared machine spreads over every server alike; results are medians with
min-max, and ratios are taken between servers of the same run.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import select
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BIN = HERE / "bin"
SERVERS_DIR = HERE / "servers"
RESULTS = HERE / "results"
PY = sys.executable


# -- building ------------------------------------------------------------------------------

def build(name: str, source: Path) -> tuple[Path | None, str]:
    """Compile *source* into bin/*name* with the system cc when it is out of date.

    Returns (path or None, note).
    """
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    out = BIN / name
    if out.exists() and out.stat().st_mtime >= source.stat().st_mtime:
        return out, "built"
    if cc is None:
        return None, "no C compiler (cc) found"
    BIN.mkdir(exist_ok=True)
    proc = subprocess.run([cc, "-O2", "-o", str(out), str(source)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return None, f"cc failed: {proc.stderr.strip()[:200]}"
    return out, "built"


def loadgen_command() -> tuple[list[str], str]:
    """The load generator: the C one when it builds, else the labelled Python fallback."""
    path, _ = build("loadgen", HERE / "loadgen.c")
    if path is not None:
        return [str(path)], "c"
    return [PY, str(HERE / "loadgen_py.py")], "python-fallback"


# -- servers -------------------------------------------------------------------------------

@dataclass
class Server:
    name: str
    command: list[str]
    note: str = ""
    max_fds: int | None = None  # select: FD_SETSIZE


def _danga_backends() -> list[str]:
    try:
        import danga.backends as b

        return list(b.available())
    except Exception:  # pragma: no cover - danga not importable
        return []


def discover_servers() -> tuple[list[Server], dict[str, str]]:
    """Every server that can run here, and a note for each one that cannot."""
    servers: list[Server] = []
    skipped: dict[str, str] = {}
    for backend in _danga_backends():
        servers.append(Server(f"danga-{backend}",
                              [PY, str(SERVERS_DIR / "danga_echo.py"), "--backend", backend],
                              max_fds=1024 if backend == "select" else None))
    servers.append(Server("asyncio", [PY, str(SERVERS_DIR / "asyncio_echo.py")]))
    try:
        import uvloop  # noqa: F401

        servers.append(Server("uvloop", [PY, str(SERVERS_DIR / "asyncio_echo.py"), "--uvloop"]))
    except ImportError:
        skipped["uvloop"] = "uvloop is not installed (pip install 'danga[bench]')"
    if hasattr(select, "epoll"):
        servers.append(Server("epoll-raw", [PY, str(SERVERS_DIR / "epoll_echo.py")]))
        path, note = build("c_echo", SERVERS_DIR / "c_echo.c")
        if path is not None:
            servers.append(Server("c-epoll", [str(path)]))
        else:
            skipped["c-epoll"] = note
    else:
        skipped["epoll-raw"] = skipped["c-epoll"] = "no epoll on this platform"
    perl = shutil.which("perl")
    if perl is None:
        skipped["perl-danga"] = "perl is not installed"
    else:
        ok = subprocess.run([perl, "-MDanga::Socket", "-e", "1"], capture_output=True,
                            check=False).returncode == 0
        if ok:
            servers.append(Server("perl-danga", [perl, str(SERVERS_DIR / "perl_echo.pl")]))
        else:
            skipped["perl-danga"] = ("Danga::Socket is not installed "
                                     "(apt-get install libdanga-socket-perl)")
    return servers, skipped


# -- workloads -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    conns: int
    size: int
    pipeline: int = 1
    idle: int = 0
    unit: str = "rt/s"  # or "MB/s"


WORKLOADS = [
    Workload("pp64x1", "ping-pong 64 B, 1 conn", 1, 64),
    Workload("pp64x10", "ping-pong 64 B, 10 conns", 10, 64),
    Workload("pp64x100", "ping-pong 64 B, 100 conns", 100, 64),
    Workload("pp64kx10", "ping-pong 64 KiB, 10 conns", 10, 65536, unit="MB/s"),
    Workload("pipe64x10x16", "pipelined 64 B, 10 conns x 16", 10, 64, pipeline=16),
    Workload("idle1000", "10 active + 1,000 idle", 10, 64, idle=1000),
    Workload("idle10000", "10 active + 10,000 idle", 10, 64, idle=10000),
]
WORKLOAD_BY_KEY = {w.key: w for w in WORKLOADS}


# -- running one point ---------------------------------------------------------------------

def raise_nofile() -> int:
    """Raise RLIMIT_NOFILE to the hard limit (children inherit it). Returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return []


def _pin(cpu: int | None) -> Callable[[], None] | None:
    if cpu is None:
        return None

    def pin() -> None:
        os.sched_setaffinity(0, {cpu})

    return pin


class ServerProcess:
    """A running server: ``with ServerProcess(server, cpu) as s: s.port, s.pid``."""

    def __init__(self, server: Server, cpu: int | None, timeout: float = 15.0) -> None:
        self.server = server
        self.proc = subprocess.Popen([*server.command, "--port", "0"], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, preexec_fn=_pin(cpu))
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.proc.stdout], [], [], max(left, 0))
            if not ready:
                self.stop()
                raise RuntimeError(f"{server.name} did not start within {timeout}s")
            chunk = os.read(self.proc.stdout.fileno(), 256)
            if not chunk:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                self.stop()
                raise RuntimeError(f"{server.name} exited at start: {err.strip()[-300:]}")
            line += chunk
        self.port = int(line.split()[1])
        self.pid = self.proc.pid

    def stop(self) -> str:
        """Stop the server; returns what it wrote on stderr (its errors, if any)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        err = self.proc.stderr.read() if self.proc.stderr else b""
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()
        return err.decode(errors="replace")

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class Settings:
    warmup: float = 0.5
    duration: float = 2.0
    rounds: int = 3
    server_cpu: int | None = None
    client_cpu: int | None = None


def run_point(server: Server, wl: Workload, st: Settings, loadgen: list[str]) -> dict[str, Any]:
    """One measurement: a fresh server, one load-generator run. Raises RuntimeError."""
    # Accepting thousands of idle connections keeps a slow server busy for a while after
    # the last one is in: give the warm-up after them more time.
    warmup = st.warmup + 1.0 if wl.idle else st.warmup
    with ServerProcess(server, st.server_cpu) as srv:
        cmd = [
            *loadgen, "--port", str(srv.port), "--conns", str(wl.conns),
            "--size", str(wl.size), "--pipeline", str(wl.pipeline), "--idle", str(wl.idle),
            "--warmup", str(warmup), "--duration", str(st.duration),
            "--server-pid", str(srv.pid),
        ]
        limit = 90 + warmup + st.duration
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=limit,
                              preexec_fn=_pin(st.client_cpu), check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"loadgen failed ({proc.returncode}) against {server.name} "
                           f"{wl.key}: {proc.stderr.strip()[-300:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    if wl.idle and not result["idle_ok"]:
        raise RuntimeError(f"{server.name} did not accept all {wl.idle} idle connections")
    msgs = max(result["messages"], 1)
    result["value"] = result["bytes_per_s"] / 1e6 if wl.unit == "MB/s" else result["rt_per_s"]
    result["server_user_us_per_rt"] = result["server_user"] / msgs * 1e6
    result["server_cpu_us_per_rt"] = (result["server_user"] + result["server_sys"]) / msgs * 1e6
    result["client_cpu_frac"] = (result["client_user"] + result["client_sys"]) / result["seconds"]
    if wl.idle:
        result["bytes_per_idle"] = (result["rss1"] - result["rss0"]) / wl.idle
    return result


# -- timers --------------------------------------------------------------------------------

def run_timer_point(impl: str, mode: str, n: int, cpu: int | None) -> float:
    """Seconds for *n* timers in *mode* on *impl*. Raises RuntimeError."""
    proc = subprocess.run([PY, str(HERE / "timers_bench.py"), "--impl", impl, "--mode", mode,
                           "--n", str(n)], capture_output=True, text=True, timeout=120,
                          preexec_fn=_pin(cpu), check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"timers {impl} {mode} failed: {proc.stderr.strip()[-300:]}")
    return float(json.loads(proc.stdout)["seconds"])


# -- the run -------------------------------------------------------------------------------

@dataclass
class Run:
    settings: Settings
    servers: list[Server]
    skipped: dict[str, str]
    workloads: list[Workload]
    loadgen: list[str]
    loadgen_kind: str
    samples: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    not_run: dict[str, str] = field(default_factory=dict)
    timers: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    timer_n: int = 100_000
    syscalls: dict[str, Any] = field(default_factory=dict)


def plan(servers: list[Server], workloads: list[Workload]) -> tuple[list[tuple[Server, Workload]],
                                                                    dict[str, str]]:
    points, not_run = [], {}
    for wl in workloads:
        for srv in servers:
            if srv.max_fds is not None and wl.idle + wl.conns + 8 > srv.max_fds:
                not_run[f"{srv.name}/{wl.key}"] = (f"needs more fds than {srv.name} can watch "
                                                   f"(FD_SETSIZE {srv.max_fds})")
                continue
            points.append((srv, wl))
    return points, not_run


Progress = Callable[[int, int, str], None]


def execute(run: Run, progress: Progress | None = None, timers: bool = True) -> Run:
    """Run every point, interleaved by round. Errors are recorded, not raised."""
    st = run.settings
    points, run.not_run = plan(run.servers, run.workloads)
    timer_impls = ["danga", "asyncio"] + (["uvloop"] if any(s.name == "uvloop"
                                                            for s in run.servers) else [])
    timer_points = [(i, m) for m in ("fire", "cancel") for i in timer_impls] if timers else []
    total = st.rounds * (len(points) + len(timer_points))
    done = 0
    for rnd in range(st.rounds):
        for srv, wl in points:
            label = f"round {rnd + 1}/{st.rounds}  {wl.key:<13} {srv.name}"
            if progress:
                progress(done, total, label)
            try:
                res = run_point(srv, wl, st, run.loadgen)
                run.samples.setdefault(wl.key, {}).setdefault(srv.name, []).append(res)
            except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
                run.errors.append(f"round {rnd + 1}: {exc}")
            done += 1
        for impl, mode in timer_points:
            if progress:
                progress(done, total, f"round {rnd + 1}/{st.rounds}  timers {mode:<7} {impl}")
            try:
                secs = run_timer_point(impl, mode, run.timer_n, st.server_cpu)
                run.timers.setdefault(mode, {}).setdefault(impl, []).append(secs)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                run.errors.append(f"round {rnd + 1}: {exc}")
            done += 1
    if progress:
        progress(total, total, "done")
    return run


def new_run(settings: Settings, workloads: list[Workload] | None = None,
            only: list[str] | None = None) -> Run:
    """Discover servers, build the C parts, raise RLIMIT_NOFILE and pick the cores."""
    raise_nofile()
    servers, skipped = discover_servers()
    if only:
        servers = [s for s in servers if s.name in only]
    cores = cpus()
    if len(cores) >= 2 and settings.server_cpu is None:
        settings.server_cpu, settings.client_cpu = cores[0], cores[1]
    loadgen, kind = loadgen_command()
    return Run(settings, servers, skipped, workloads or list(WORKLOADS), loadgen, kind)


# -- summarising ---------------------------------------------------------------------------

def _stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}


def summarise(run: Run) -> dict[str, Any]:
    """The JSON document: settings, per-point medians with min-max, ratios, targets."""
    st = run.settings
    doc: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "cpus": len(cpus()), "server_cpu": st.server_cpu,
                    "client_cpu": st.client_cpu},
        "settings": {"warmup": st.warmup, "duration": st.duration, "rounds": st.rounds},
        "loadgen": run.loadgen_kind,
        "servers": [s.name for s in run.servers],
        "skipped": run.skipped,
        "not_run": run.not_run,
        "errors": run.errors,
        "workloads": {},
        "timers": {},
        "syscalls": run.syscalls,
    }
    for wl in run.workloads:
        per = run.samples.get(wl.key, {})
        entry: dict[str, Any] = {"title": wl.title, "unit": wl.unit, "servers": {}}
        for name, samples in per.items():
            s: dict[str, Any] = {
                "value": _stats([x["value"] for x in samples]),
                "server_user_us_per_rt": _stats([x["server_user_us_per_rt"] for x in samples]),
                "server_cpu_us_per_rt": _stats([x["server_cpu_us_per_rt"] for x in samples]),
                "client_cpu_frac": _stats([x["client_cpu_frac"] for x in samples]),
            }
            if wl.idle:
                s["bytes_per_idle"] = _stats([x["bytes_per_idle"] for x in samples])
            entry["servers"][name] = s
        doc["workloads"][wl.key] = entry
    for mode, per_impl in run.timers.items():
        doc["timers"][mode] = {impl: {**_stats([run.timer_n / t for t in times]),
                                      "unit": "timers/s"}
                               for impl, times in per_impl.items()}
    doc["targets"] = targets(doc)
    return doc


def _median(doc: dict[str, Any], wl: str, server: str, metric: str = "value") -> float | None:
    try:
        return float(doc["workloads"][wl]["servers"][server][metric]["median"])
    except KeyError:
        return None


def ratio(doc: dict[str, Any], wl: str, a: str, b: str, metric: str = "value") -> float | None:
    x, y = _median(doc, wl, a, metric), _median(doc, wl, b, metric)
    if x is None or y is None or y == 0:
        return None
    return x / y


def targets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets (danga on epoll), each with its measured ratio and verdict."""
    d = "danga-epoll"
    rows: list[dict[str, Any]] = []

    def add(what: str, value: float | None, op: str, bound: float) -> None:
        ok = None if value is None else (value >= bound if op == ">=" else value <= bound)
        rows.append({"target": what, "value": value, "op": op, "bound": bound, "ok": ok})

    add("pp64x10 vs asyncio", ratio(doc, "pp64x10", d, "asyncio"), ">=", 1.4)
    add("pp64x10 vs c-epoll", ratio(doc, "pp64x10", d, "c-epoll"), ">=", 0.95)
    add("pp64x100 vs asyncio", ratio(doc, "pp64x100", d, "asyncio"), ">=", 1.25)
    add("pp64x100 vs uvloop", ratio(doc, "pp64x100", d, "uvloop"), ">=", 1.0)
    add("pipelined vs asyncio", ratio(doc, "pipe64x10x16", d, "asyncio"), ">=", 1.35)
    add("pipelined vs uvloop", ratio(doc, "pipe64x10x16", d, "uvloop"), ">=", 1.1)
    add("64 KiB vs asyncio", ratio(doc, "pp64kx10", d, "asyncio"), ">=", 1.05)
    add("64 KiB vs uvloop", ratio(doc, "pp64kx10", d, "uvloop"), ">=", 0.95)
    cpu = "server_user_us_per_rt"
    add("user CPU/rt (pp64x10) vs asyncio", ratio(doc, "pp64x10", d, "asyncio", cpu), "<=", 0.45)
    add("user CPU/rt (pp64x10) vs epoll-raw", ratio(doc, "pp64x10", d, "epoll-raw", cpu),
        "<=", 1.1)
    sc = doc.get("syscalls", {}).get(d)
    add("syscalls per round trip", sc.get("per_rt") if sc else None, "<=", 2.15)
    add("epoll_ctl calls in the steady state", float(sc["epoll_ctl"]) if sc else None, "<=", 0)
    idle0, idle10k = _median(doc, "pp64x10", d), _median(doc, "idle10000", d)
    add("throughput with 10,000 idle / with 0 idle",
        idle10k / idle0 if idle0 and idle10k else None, ">=", 0.95)
    add("bytes per idle connection", _median(doc, "idle10000", d, "bytes_per_idle"), "<=", 500)
    for mode, bound in (("fire", 3.0), ("cancel", 2.0)):
        t = doc.get("timers", {}).get(mode, {})
        r = (t["danga"]["median"] / t["asyncio"]["median"]) if "danga" in t and "asyncio" in t \
            else None
        add(f"timers {mode} vs asyncio", r, ">=", bound)
    perl = [ratio(doc, wl, d, "perl-danga") for wl in doc["workloads"]]
    perl_known = [r for r in perl if r is not None]
    add("worst ratio to perl Danga::Socket over all workloads",
        min(perl_known) if perl_known else None, ">=", 1.0)
    return rows


# -- output --------------------------------------------------------------------------------

def _fmt(v: float) -> str:
    if v >= 100_000:
        return f"{v / 1000:.0f}k"
    if v >= 10_000:
        return f"{v / 1000:.1f}k"
    if v >= 100:
        return f"{v:.0f}"
    return f"{v:.2f}" if v < 10 else f"{v:.1f}"


def table(doc: dict[str, Any]) -> str:
    """The terminal (and Markdown) tables."""
    servers = list(doc["servers"])
    out: list[str] = []
    note = ""
    if doc["loadgen"] != "c":
        note = " (PYTHON FALLBACK load generator: figures are floors)"
    st = doc["settings"]
    out.append(f"Throughput, median (min-max) of {st['rounds']} interleaved rounds, "
               f"{st['duration']} s each{note}")
    out.append("")
    head = "| workload | " + " | ".join(servers) + " |"
    out += [head, "|" + "---|" * (len(servers) + 1)]
    for wl in doc["workloads"].values():
        cells = []
        for s in servers:
            v = wl["servers"].get(s)
            if v is None:
                cells.append("n/a")
                continue
            x = v["value"]
            cells.append(f"{_fmt(x['median'])} ({_fmt(x['min'])}-{_fmt(x['max'])})")
        out.append(f"| {wl['title']} [{wl['unit']}] | " + " | ".join(cells) + " |")
    out.append("")
    out.append("Ratios of danga-epoll's median to each peer's median (same run)")
    out.append("")
    peers = [s for s in servers if s != "danga-epoll"]
    out += ["| workload | " + " | ".join(f"/ {p}" for p in peers) + " |",
            "|" + "---|" * (len(peers) + 1)]
    for key, wl in doc["workloads"].items():
        cells = []
        for p in peers:
            r = ratio(doc, key, "danga-epoll", p)
            cells.append("n/a" if r is None else f"{r:.2f}x")
        out.append(f"| {wl['title']} | " + " | ".join(cells) + " |")
    out.append("")
    out.append("Server CPU per round trip, µs (user / user+sys), ping-pong 64 B x 10, and "
               "client CPU (fraction of a core: near 1.0 means the figure is a floor)")
    out.append("")
    out += ["| server | user µs/rt | user+sys µs/rt | client CPU |", "|---|---|---|---|"]
    pp = doc["workloads"].get("pp64x10", {}).get("servers", {})
    for s in servers:
        v = pp.get(s)
        if v:
            out.append(f"| {s} | {v['server_user_us_per_rt']['median']:.2f} | "
                       f"{v['server_cpu_us_per_rt']['median']:.2f} | "
                       f"{v['client_cpu_frac']['median']:.2f} |")
    idle = doc["workloads"].get("idle10000", {}).get("servers", {})
    if idle:
        out.append("")
        out.append("Memory per idle connection (server RSS delta for 10,000 idle), bytes")
        out.append("")
        out += ["| server | bytes/conn (min-max) |", "|---|---|"]
        for s in servers:
            v = idle.get(s)
            if v:
                b = v["bytes_per_idle"]
                out.append(f"| {s} | {b['median']:.0f} ({b['min']:.0f}-{b['max']:.0f}) |")
    if doc["timers"]:
        out.append("")
        out.append("Timers, 100k each, timers/s median (min-max)")
        out.append("")
        impls = sorted({i for m in doc["timers"].values() for i in m})
        out += ["| mode | " + " | ".join(impls) + " | danga / asyncio |",
                "|" + "---|" * (len(impls) + 2)]
        for mode, per in doc["timers"].items():
            cells = [f"{_fmt(per[i]['median'])} ({_fmt(per[i]['min'])}-{_fmt(per[i]['max'])})"
                     if i in per else "n/a" for i in impls]
            r = per["danga"]["median"] / per["asyncio"]["median"] \
                if "danga" in per and "asyncio" in per else None
            rtxt = "n/a" if r is None else f"{r:.2f}x"
            out.append(f"| {mode} | " + " | ".join(cells) + f" | {rtxt} |")
    if doc["syscalls"]:
        out.append("")
        out.append("System calls per round trip (strace -c on the server, steady window, "
                   "ping-pong 64 B x 10)")
        out.append("")
        out += ["| server | syscalls/rt | epoll_ctl | top calls |", "|---|---|---|---|"]
        for s, v in doc["syscalls"].items():
            if "error" in v:
                out.append(f"| {s} | n/a | n/a | {v['error']} |")
                continue
            top = ", ".join(f"{k} {c / v['rts']:.2f}" for k, c in
                            sorted(v["calls"].items(), key=lambda kv: -kv[1])[:4])
            out.append(f"| {s} | {v['per_rt']:.2f} | {v['epoll_ctl']} | {top} |")
    out.append("")
    out.append("Targets (danga on epoll)")
    out.append("")
    out += ["| target | measured | bound | holds |", "|---|---|---|---|"]
    for t in doc["targets"]:
        v = "n/a" if t["value"] is None else f"{t['value']:.3g}"
        ok = "not measured" if t["ok"] is None else ("yes" if t["ok"] else "**no**")
        out.append(f"| {t['target']} | {v} | {t['op']} {t['bound']:g} | {ok} |")
    extra = []
    for name, why in doc["skipped"].items():
        extra.append(f"- skipped {name}: {why}")
    for name, why in doc["not_run"].items():
        extra.append(f"- not run {name}: {why}")
    for err in doc["errors"]:
        extra.append(f"- error: {err}")
    if extra:
        out.append("")
        out += extra
    return "\n".join(out)


def chart(doc: dict[str, Any], path: Path) -> str | None:
    """A PNG of throughput by server and workload; returns a note when matplotlib is absent."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install 'danga[bench]'): no chart"
    wls = [(k, w) for k, w in doc["workloads"].items() if w["servers"]]
    if not wls:
        return "nothing measured: no chart"
    servers = doc["servers"]
    cols = 4
    rows = (len(wls) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    colours = plt.get_cmap("tab10")
    for ax, (_key, wl) in zip(axes.flat, wls, strict=False):
        names = [s for s in servers if s in wl["servers"]]
        med = [wl["servers"][s]["value"]["median"] for s in names]
        lo = [m - wl["servers"][s]["value"]["min"] for s, m in zip(names, med, strict=False)]
        hi = [wl["servers"][s]["value"]["max"] - m for s, m in zip(names, med, strict=False)]
        ax.bar(range(len(names)), med, yerr=[lo, hi], capsize=3,
               color=[colours(servers.index(s) % 10) for s in names])
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
        ax.set_title(wl["title"], fontsize=9)
        ax.set_ylabel(wl["unit"], fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
    for ax in list(axes.flat)[len(wls):]:
        ax.axis("off")
    fig.suptitle("danga echo benchmarks: median and min-max of interleaved rounds", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def write_json(doc: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")
    tmp.replace(path)
