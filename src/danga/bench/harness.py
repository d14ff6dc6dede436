"""The benchmark harness: servers side by side, warmed, interleaved rounds, ratios.

Used by ``danga bench`` (a short run) and ``python benchmarks/run.py`` (the full one).
Each measurement point starts a fresh server process pinned to one core, warms it with
one connection that echoes and closes (:func:`warm_up`), runs the load generator pinned
to another core, and reads the server's CPU from its own kernel accounting
(/proc/PID/stat). Points are run in interleaved rounds (A B C A B C ...) so that the
noise of a shared machine spreads over every server alike; results are medians with
min-max, and ratios are taken between servers of the same round.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SERVERS_DIR = HERE / "servers"
PY = sys.executable


# -- building ------------------------------------------------------------------------------

def cache_dir() -> Path:
    """Where the compiled C parts go: a per-user cache, never the installed package."""
    base = os.environ.get("XDG_CACHE_HOME", "").strip()
    path = Path(base) if base else Path.home() / ".cache"
    path = path / "danga-bench"
    try:
        path.mkdir(parents=True, exist_ok=True)
        if os.access(path, os.W_OK):
            return path
    except OSError:
        pass
    path = Path(tempfile.gettempdir()) / f"danga-bench-{os.getuid()}"
    path.mkdir(exist_ok=True)
    return path


def build(name: str, source: Path) -> tuple[Path | None, str]:
    """Compile *source* with the system cc, once per version of the source.

    Returns (path or None, note).
    """
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:12]
    out = cache_dir() / f"{name}-{digest}"
    if out.exists():
        return out, "built"
    if cc is None:
        return None, "no C compiler (cc) found"
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    proc = subprocess.run([cc, "-O2", "-o", str(tmp), str(source)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return None, f"cc failed: {proc.stderr.strip()[:200]}"
    tmp.replace(out)
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
    version: str = ""
    max_fds: int | None = None  # select: FD_SETSIZE
    #: False: measured only when named in --servers (a variant, not a peer)
    default: bool = True
    env: dict[str, str] | None = None  # added to the environment it starts in


def _danga_backends() -> list[str]:
    try:
        import danga.backends as b

        return list(b.available())
    except Exception:  # pragma: no cover - danga not importable
        return []


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _first_line(cmd: list[str]) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    lines = (proc.stdout or proc.stderr).strip().splitlines()
    return lines[0].strip() if lines else ""


def _danga_core() -> str:
    import danga

    return danga.CORE


def danga_version() -> str:
    """danga's version, and the git commit of its source tree when it is a checkout."""
    import danga

    version = f"danga {_dist_version('danga') or '?'}"
    src = Path(danga.__file__).resolve().parent
    git = shutil.which("git")
    if git is not None:
        commit = _first_line([git, "-C", str(src), "rev-parse", "--short", "HEAD"])
        dirty = _first_line([git, "-C", str(src), "status", "--porcelain", "--", str(src)])
        if commit and all(c in "0123456789abcdef" for c in commit):
            version += f" (git {commit}{', modified' if dirty else ''})"
    # The servers inherit this environment (DANGA_PURE included): they run this core.
    return version + f", {danga.CORE} core"


def discover_servers() -> tuple[list[Server], dict[str, str]]:
    """Every server that can run here, and a note for each one that cannot."""
    servers: list[Server] = []
    skipped: dict[str, str] = {}
    pyv = f"CPython {platform.python_version()}" if platform.python_implementation() == \
        "CPython" else f"{platform.python_implementation()} {platform.python_version()}"
    dv = f"{danga_version()} on {pyv}"
    for backend in _danga_backends():
        servers.append(Server(f"danga-{backend}",
                              [PY, str(SERVERS_DIR / "danga_echo.py"), "--backend", backend],
                              dv, max_fds=1024 if backend == "select" else None))
    if "epoll" in _danga_backends():
        servers.append(Server("danga-epoll-idle",
                              [PY, str(SERVERS_DIR / "danga_echo.py"), "--backend", "epoll",
                               "--idle-timeout", "60"], dv + ", idle timeout 60 s",
                              default=False))
    if "epoll" in _danga_backends() and _danga_core() == "compiled":
        # The same epoll server on the pure core, in the same interleaved run: what the
        # compiled core gains (docs/performance.md, "Compiled core").
        servers.append(Server("danga-epoll-pure",
                              [PY, str(SERVERS_DIR / "danga_echo.py"), "--backend", "epoll"],
                              dv.replace(", compiled core", ", pure core"),
                              env={"DANGA_PURE": "1"}))
    echo = [PY, str(SERVERS_DIR / "asyncio_echo.py"), "--loop"]
    servers.append(Server("asyncio", [*echo, "asyncio"], f"asyncio of {pyv}"))
    for loop in ("uvloop", "rloop"):
        version = _dist_version(loop)
        if version is None:
            skipped[loop] = f"{loop} is not installed (pip install 'danga[bench]')"
        else:
            servers.append(Server(loop, [*echo, loop], f"{loop} {version} on {pyv}"))
    if hasattr(select, "epoll"):
        servers.append(Server("epoll-raw", [PY, str(SERVERS_DIR / "epoll_echo.py")],
                              f"select.epoll of {pyv}"))
        path, note = build("c_echo", SERVERS_DIR / "c_echo.c")
        if path is not None:
            cc = _first_line([shutil.which("cc") or "cc", "--version"])
            servers.append(Server("c-epoll", [str(path)], f"C, {cc} -O2"))
        else:
            skipped["c-epoll"] = note
    else:
        skipped["epoll-raw"] = skipped["c-epoll"] = "no epoll on this platform"
    perl = shutil.which("perl")
    if perl is None:
        skipped["perl-danga"] = "perl is not installed"
    else:
        version = _first_line([perl, "-MDanga::Socket", "-e",
                               'print "Danga::Socket $Danga::Socket::VERSION on perl $^V\n"'])
        if version.startswith("Danga::Socket"):
            servers.append(Server("perl-danga", [perl, str(SERVERS_DIR / "perl_echo.pl")],
                                  version))
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


def pin(cpu: int | None) -> Callable[[], None] | None:
    """A ``preexec_fn`` that pins the child to *cpu* (None: no pinning).

    The harness starts no threads, so a ``preexec_fn`` is safe here; pinning before exec
    keeps the child's first instructions on its core too.
    """
    if cpu is None:
        return None

    def pin_child() -> None:
        os.sched_setaffinity(0, {cpu})

    return pin_child


def _fd_count(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def warm_up(port: int, pid: int, timeout: float = 10.0, close_wait: float = 1.0) -> bool:
    """Bring a fresh server to its steady state: one connection echoes 64 bytes and closes.

    A server that has never seen a connection close is not in the state it runs in for
    the rest of its life. asyncio (and any server reading into a large buffer) shows it
    most: glibc serves each 256 KiB ``recv`` buffer with ``mmap`` and shrinks it with
    ``mremap`` -- three extra system calls a read -- until a large chunk is freed
    unshrunk, which raises glibc's dynamic mmap threshold; that happens when a ``recv``
    returns nothing, i.e. as soon as a peer closes. Where /proc is available, the call
    waits (up to *close_wait* seconds) until the server has closed its side (its fd
    count drops) and returns whether it did; rloop 0.5 keeps the socket of a closed
    connection open.

    Raises RuntimeError when the echo is wrong, OSError when the server cannot be reached.
    """
    message = b"warm-up " * 8
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(message)
        got = b""
        while len(got) < len(message):
            chunk = sock.recv(len(message) - len(got))
            if not chunk:
                break
            got += chunk
        if got != message:
            raise RuntimeError(f"warm_up(): the server echoed {got!r}, not {message!r}")
        held = _fd_count(pid)  # the server holds the connection now
    if held is None:
        return False
    deadline = time.monotonic() + close_wait
    while (n := _fd_count(pid)) is not None and n >= held:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


class ServerProcess:
    """A running, warmed server: ``with ServerProcess(server, cpu) as s: s.port, s.pid``.

    ``warm=False`` leaves the server cold (``--cold``: only to show that state).
    """

    def __init__(self, server: Server, cpu: int | None, timeout: float = 15.0,
                 warm: bool = True) -> None:
        self.server = server
        env = None if server.env is None else {**os.environ, **server.env}
        self.proc = subprocess.Popen([*server.command, "--port", "0"], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=env,
                                     preexec_fn=pin(cpu))  # noqa: PLW1509 (see pin)
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
        self.warm_closed: bool | None = None
        if warm:
            try:
                self.warm_closed = warm_up(self.port, self.pid)
            except (OSError, RuntimeError) as exc:
                self.stop()
                raise RuntimeError(f"{server.name}: {exc}") from exc

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
    #: False: skip the warm-up connection, to see a server's cold state (never a figure).
    warm: bool = True


def run_point(server: Server, wl: Workload, st: Settings, loadgen: list[str]) -> dict[str, Any]:
    """One measurement: a fresh, warmed server, one load-generator run.

    Raises RuntimeError.
    """
    # Accepting thousands of idle connections keeps a slow server busy for a while after
    # the last one is in: give the warm-up after them more time.
    warmup = st.warmup + 1.0 if wl.idle else st.warmup
    with ServerProcess(server, st.server_cpu, warm=st.warm) as srv:
        cmd = [
            *loadgen, "--port", str(srv.port), "--conns", str(wl.conns),
            "--size", str(wl.size), "--pipeline", str(wl.pipeline), "--idle", str(wl.idle),
            "--warmup", str(warmup), "--duration", str(st.duration),
            "--server-pid", str(srv.pid),
        ]
        limit = 90 + warmup + st.duration
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=limit,
                              preexec_fn=pin(st.client_cpu), check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"loadgen failed ({proc.returncode}) against {server.name} "
                           f"{wl.key}: {proc.stderr.strip()[-300:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["warm_closed"] = srv.warm_closed
    if wl.idle and not result["idle_ok"]:
        raise RuntimeError(f"{server.name} did not accept all {wl.idle} idle connections")
    msgs = max(result["messages"], 1)
    result["value"] = result["bytes_per_s"] / 1e6 if wl.unit == "MB/s" else result["rt_per_s"]
    result["server_user_us_per_rt"] = result["server_user"] / msgs * 1e6
    result["server_sys_us_per_rt"] = result["server_sys"] / msgs * 1e6
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
                          preexec_fn=pin(cpu), check=False)
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
    names = {s.name for s in run.servers}
    timer_impls = ["danga", "asyncio"] + [x for x in ("uvloop", "rloop") if x in names]
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
                res["round"] = rnd
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
    servers = [s for s in servers if s.name in only] if only else [
        s for s in servers if s.default]
    cores = cpus()
    if len(cores) >= 2 and settings.server_cpu is None:
        settings.server_cpu, settings.client_cpu = cores[0], cores[1]
    loadgen, kind = loadgen_command()
    return Run(settings, servers, skipped, workloads or list(WORKLOADS), loadgen, kind)


# -- summarising ---------------------------------------------------------------------------

#: Per-point figures: throughput (value), the server's CPU per round trip (user, system
#: and both, µs) and the load generator's CPU (a fraction of its core).
METRICS = ("value", "server_user_us_per_rt", "server_sys_us_per_rt", "server_cpu_us_per_rt",
           "client_cpu_frac")


def stats(values: list[float]) -> dict[str, float]:
    """Median, min, max and count of *values* (not empty)."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}


def summarise(run: Run) -> dict[str, Any]:
    """The JSON document: settings, versions, per-point medians with min-max and the
    per-round figures (for ratios within a round)."""
    st = run.settings
    doc: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "cpus": len(cpus()), "server_cpu": st.server_cpu,
                    "client_cpu": st.client_cpu},
        "settings": {"warmup": st.warmup, "duration": st.duration, "rounds": st.rounds,
                     "warm_up_connection": st.warm},
        "loadgen": run.loadgen_kind,
        "servers": [s.name for s in run.servers],
        "versions": {s.name: s.version for s in run.servers},
        "skipped": run.skipped,
        "not_run": run.not_run,
        "errors": run.errors,
        "workloads": {},
        "timers": {},
        "timer_n": run.timer_n,
        "syscalls": run.syscalls,
    }
    for wl in run.workloads:
        per = run.samples.get(wl.key, {})
        entry: dict[str, Any] = {"title": wl.title, "unit": wl.unit, "servers": {}}
        for name, samples in per.items():
            s: dict[str, Any] = {m: stats([x[m] for x in samples]) for m in METRICS}
            if wl.idle:
                s["bytes_per_idle"] = stats([x["bytes_per_idle"] for x in samples])
            s["rounds"] = [{"round": x["round"], **{m: x[m] for m in METRICS}}
                           for x in samples]
            entry["servers"][name] = s
        doc["workloads"][wl.key] = entry
    # Servers that did not close the warm-up connection within a second (they were
    # still warmed: they read its end).
    doc["warm_not_closed"] = sorted({name for per in run.samples.values()
                                     for name, samples in per.items()
                                     if any(x.get("warm_closed") is False for x in samples)})
    for mode, per_impl in run.timers.items():
        doc["timers"][mode] = {impl: {**stats([run.timer_n / t for t in times]),
                                      "unit": "timers/s"}
                               for impl, times in per_impl.items()}
    return doc


def median(doc: dict[str, Any], wl: str, server: str, metric: str = "value") -> float | None:
    """The median of *metric* for *server* on workload *wl*, or None when not measured."""
    try:
        return float(doc["workloads"][wl]["servers"][server][metric]["median"])
    except KeyError:
        return None


def ratio(doc: dict[str, Any], wl: str, a: str, b: str,
          metric: str = "value") -> dict[str, float] | None:
    """*a*'s *metric* divided by *b*'s, round by round: median, min and max over the rounds
    both were measured in; None when there is no such round."""
    try:
        ra = doc["workloads"][wl]["servers"][a]["rounds"]
        rb = {x["round"]: x[metric] for x in doc["workloads"][wl]["servers"][b]["rounds"]}
    except KeyError:
        return None
    values = [x[metric] / rb[x["round"]] for x in ra if rb.get(x["round"])]
    return stats(values) if values else None


def write_json(doc: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")
    tmp.replace(path)
