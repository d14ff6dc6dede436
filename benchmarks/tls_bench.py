"""TLS figures: danga's TLS echo against asyncio and uvloop, handshakes, idle memory.

Run from the repository root (Linux, 2 cores or more, a C compiler and OpenSSL's headers,
``pip install -e '.[bench]'`` for uvloop)::

    python benchmarks/tls_bench.py                  # 3 rounds of 2 s, about 2 minutes
    python benchmarks/tls_bench.py --rounds 5 --duration 3 --json out.json

Servers (benchmarks/tls/tls_server.py): danga.bench's echo ``Socket`` behind
``danga.Listener(..., ssl=context)`` on epoll, and danga.bench's echo ``Protocol`` behind
``loop.create_server(..., ssl=context)`` on asyncio and on uvloop. One context for all:
the same certificate (ECDSA P-256, made here with the ``openssl`` CLI), TLS 1.3, no
session tickets. The client (benchmarks/tls/tls_loadgen.c, C on OpenSSL) offers one
cipher suite (TLS_AES_128_GCM_SHA256), so every server runs the same cipher.

Workloads:

- ``echo 64 B x 10``: 10 connections, one 64-byte message in flight on each (round
  trips per second); ``echo 64 KiB x 10``: the same with 64 KiB messages (MB/s echoed);
- ``handshakes``: 50 slots, each connecting, doing a full TLS 1.3 handshake (no
  resumption), a 1-byte echo and close_notify, over and over (connections per second);
- ``idle 2,000``: the server's RSS grows by how much for 2,000 idle TLS connections
  (bytes per connection; lower is better).

Method (as danga.bench, whose harness this reuses): each point starts a fresh server
pinned to one core (the load generator to another), warms it with one TLS connection
that echoes and closes, then measures; rounds are interleaved (every server once per
round, in an order that rotates per round) and each ratio is taken within a round:
median (min-max) over the rounds. The server's CPU per operation comes from its own
kernel accounting (/proc/PID/stat), which a busy machine disturbs less than throughput.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from danga.bench import harness

HERE = Path(__file__).resolve().parent / "tls"
PY = sys.executable
SUITE = "TLS_AES_128_GCM_SHA256"


@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    mode: str
    conns: int
    size: int = 64
    metric: str = "per_s"
    unit: str = "rt/s"
    higher_is_better: bool = True


WORKLOADS = [
    Workload("echo64", "echo 64 B x 10 conns", "echo", 10, 64),
    Workload("echo64k", "echo 64 KiB x 10 conns", "echo", 10, 65536, "mb_per_s", "MB/s"),
    Workload("handshake", "handshakes, 50 at a time", "handshake", 50, 1, unit="conn/s"),
    Workload("idle", "idle TLS connections: 2,000", "idle", 2000, 1, "bytes_per_conn",
             "bytes/conn", higher_is_better=False),
]


def make_certificate(directory: Path) -> tuple[str, str]:
    """An ECDSA P-256 certificate for localhost made with the openssl CLI: (cert, key).

    Raises RuntimeError when openssl is missing or fails."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("the openssl CLI is not installed (apt-get install openssl)")
    cert, key = directory / "cert.pem", directory / "key.pem"
    proc = subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "2", "-subj", "/CN=localhost", "-keyout", str(key),
         "-out", str(cert), "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl req failed: {proc.stderr.strip()[-300:]}")
    return str(cert), str(key)


def build_loadgen() -> Path:
    """Compile tls_loadgen.c against OpenSSL, once per version of the source.

    Raises RuntimeError without a compiler or OpenSSL's headers."""
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        raise RuntimeError("no C compiler (cc) found")
    source = HERE / "tls_loadgen.c"
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:12]
    out = harness.cache_dir() / f"tls_loadgen-{digest}"
    if not out.exists():
        tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
        proc = subprocess.run([cc, "-O2", "-o", str(tmp), str(source), "-lssl", "-lcrypto"],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"cannot build tls_loadgen (apt-get install libssl-dev?): "
                               f"{proc.stderr.strip()[-300:]}")
        tmp.replace(out)
    return out


def servers(cert: str, key: str) -> tuple[list[harness.Server], dict[str, str]]:
    pyv = f"CPython {platform.python_version()}"
    base = [PY, str(HERE / "tls_server.py"), "--cert", cert, "--key", key, "--impl"]
    found = [harness.Server("danga-epoll", [*base, "danga", "--backend", "epoll"],
                            f"{harness.danga_version()} on {pyv}"),
             harness.Server("asyncio", [*base, "asyncio"], f"asyncio of {pyv}")]
    skipped = {}
    version = _version("uvloop")
    if version is None:
        skipped["uvloop"] = "uvloop is not installed (pip install -e '.[bench]')"
    else:
        found.append(harness.Server("uvloop", [*base, "uvloop"], f"uvloop {version} on {pyv}"))
    return found, skipped


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def tls_warm_up(port: int, pid: int, timeout: float = 10.0, close_wait: float = 1.0) -> None:
    """harness.warm_up over TLS, twice: a connection echoes 64 bytes and ends with
    close_notify, then another echoes and hangs up without it (as many HTTPS clients
    do), so that the server has read a peer's EOF (harness.warm_up says why that
    matters: glibc's mmap threshold). Each time it waits (up to *close_wait*) until the
    server has closed its side.

    Raises RuntimeError when the echo is wrong, OSError when the server is unreachable."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    message = b"warm-up " * 8
    for clean in (True, False):
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw, \
                ctx.wrap_socket(raw, server_hostname="localhost") as sock:
            sock.sendall(message)
            got = b""
            while len(got) < len(message) and (chunk := sock.recv(len(message) - len(got))):
                got += chunk
            if got != message:
                raise RuntimeError(f"tls_warm_up(): the server echoed {got!r}")
            held = _fds(pid)
            if clean:
                sock.unwrap()
            else:
                sock.shutdown(socket.SHUT_WR)  # a TCP FIN, no close_notify
                while sock.recv(4096):  # the plain socket now: until the server's FIN
                    pass
        deadline = time.monotonic() + close_wait
        while held is not None and (n := _fds(pid)) is not None and n >= held:
            if time.monotonic() > deadline:
                break
            time.sleep(0.002)


def run_point(server: harness.Server, wl: Workload, st: harness.Settings,
              loadgen: Path) -> dict[str, Any]:
    """One measurement on a fresh, warmed server. Raises RuntimeError."""
    srv = harness.ServerProcess(server, st.server_cpu, warm=False)
    try:
        try:
            tls_warm_up(srv.port, srv.pid)
        except (OSError, RuntimeError) as exc:
            raise RuntimeError(f"{server.name}: warm-up: {exc}") from exc
        cmd = [str(loadgen), "--mode", wl.mode, "--port", str(srv.port), "--server-pid",
               str(srv.pid), "--conns", str(wl.conns), "--size", str(wl.size),
               "--warmup", str(st.warmup), "--duration", str(st.duration),
               "--ciphersuite", SUITE]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False,
                              timeout=120 + st.warmup + st.duration,
                              preexec_fn=harness.pin(st.client_cpu))
    finally:
        err = srv.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"tls_loadgen failed ({proc.returncode}) against {server.name} "
                           f"{wl.key}: {proc.stderr.strip()[-300:]} {err.strip()[-300:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["value"] = float(result[wl.metric])
    return result


def execute(srvs: list[harness.Server], workloads: list[Workload], st: harness.Settings,
            loadgen: Path) -> tuple[dict[str, dict[str, list[dict[str, Any]]]], list[str]]:
    """Every (workload, server) point once per round, interleaved; errors are recorded."""
    samples: dict[str, dict[str, list[dict[str, Any]]]] = {}
    errors: list[str] = []
    for rnd in range(st.rounds):
        for wl in workloads:
            order = srvs[rnd % len(srvs):] + srvs[:rnd % len(srvs)]
            for srv in order:
                print(f"round {rnd + 1}/{st.rounds}  {wl.key:<10} {srv.name}",
                      file=sys.stderr, flush=True)
                try:
                    res = run_point(srv, wl, st, loadgen)
                except (RuntimeError, subprocess.TimeoutExpired) as exc:
                    errors.append(f"round {rnd + 1}: {exc}")
                    continue
                res["round"] = rnd
                samples.setdefault(wl.key, {}).setdefault(srv.name, []).append(res)
    return samples, errors


def ratio(per: dict[str, list[dict[str, Any]]], a: str, b: str,
          metric: str = "value") -> dict[str, float] | None:
    """*a*'s *metric* over *b*'s, round by round: median, min, max."""
    rb = {x["round"]: x[metric] for x in per.get(b, [])}
    values = [x[metric] / rb[x["round"]] for x in per.get(a, []) if rb.get(x["round"])]
    return harness.stats(values) if values else None


def _fmt(s: dict[str, float] | None, digits: int = 2) -> str:
    if s is None:
        return "n/a"
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"


def report(samples: dict[str, dict[str, list[dict[str, Any]]]], srvs: list[harness.Server],
           workloads: list[Workload]) -> str:
    """Markdown tables: medians with min-max, and danga's ratios to the others."""
    names = [s.name for s in srvs]
    others = [n for n in names if n != "danga-epoll"]
    lines = ["| workload | " + " | ".join(names) + " | "
             + " | ".join(f"danga / {o}" for o in others) + " |",
             "|---" * (1 + len(names) + len(others)) + "|"]
    cpu = list(lines)
    busy = ["| workload | " + " | ".join(f"{n}: server / client" for n in names) + " |",
            "|---" * (1 + len(names)) + "|"]
    for wl in workloads:
        per = samples.get(wl.key, {})
        cells = [_fmt(harness.stats([x["value"] for x in per[n]]) if per.get(n) else None,
                      0 if wl.unit != "MB/s" else 1) for n in names]
        ratios = [_fmt(ratio(per, "danga-epoll", o)) for o in others]
        lines.append(f"| {wl.title} ({wl.unit}) | " + " | ".join(cells + ratios) + " |")
        if wl.mode == "idle":
            continue
        cells = [_fmt(harness.stats([x["server_cpu_us"] for x in per[n]]) if per.get(n)
                      else None, 1) for n in names]
        ratios = [_fmt(ratio(per, "danga-epoll", o, "server_cpu_us")) for o in others]
        unit = "µs/conn" if wl.mode == "handshake" else "µs/rt"
        cpu.append(f"| {wl.title} (server CPU, {unit}) | " + " | ".join(cells + ratios) + " |")
        cells = [" / ".join(f"{harness.stats([x[k] for x in per[n]])['median']:.2f}"
                            for k in ("server_busy", "client_cpu")) if per.get(n) else "n/a"
                 for n in names]
        busy.append(f"| {wl.title} | " + " | ".join(cells) + " |")
    better = ("Throughput and memory (median (min-max) over the rounds; ratios per round, "
              "danga first: above 1 is danga faster, for memory above 1 is danga larger):")
    return "\n".join([better, "", *lines, "",
                      "Server CPU per operation (ratios below 1: danga spends less):", "",
                      *cpu, "",
                      "CPU used, as a fraction of one core (medians): the server's, and the "
                      "load generator's (near 1: the client, not the server, was the limit):",
                      "", *busy])


def profile(server: harness.Server, wl: Workload, st: harness.Settings, loadgen: Path,
            top: int = 20) -> str:
    """Where *server* spends its time on *wl*: py-spy samples it (``--native`` off: the
    Python frames) while the load generator runs; the report lists the functions with
    the most samples, by their own time and including what they call.

    Raises RuntimeError when py-spy is missing or fails."""
    pyspy = shutil.which("py-spy")
    if pyspy is None:
        raise RuntimeError("py-spy is not installed (pip install py-spy)")
    srv = harness.ServerProcess(server, st.server_cpu, warm=False)
    try:
        tls_warm_up(srv.port, srv.pid)
        gen = subprocess.Popen(
            [str(loadgen), "--mode", wl.mode, "--port", str(srv.port), "--server-pid",
             str(srv.pid), "--conns", str(wl.conns), "--size", str(wl.size), "--warmup",
             str(st.warmup), "--duration", str(st.duration), "--ciphersuite", SUITE],
            stdout=subprocess.DEVNULL, preexec_fn=harness.pin(st.client_cpu))
        with tempfile.NamedTemporaryFile(suffix=".txt") as out:
            time.sleep(st.warmup)  # profile the measured part only
            proc = subprocess.run([pyspy, "record", "-p", str(srv.pid), "-r", "400", "-d",
                                   str(max(1, int(st.duration))), "-f", "raw", "-o", out.name],
                                  capture_output=True, text=True, timeout=60, check=False)
            gen.wait(timeout=60)
            if proc.returncode != 0:
                raise RuntimeError(f"py-spy failed: {proc.stderr.strip()[-300:]}")
            stacks = Path(out.name).read_text().splitlines()
    finally:
        srv.stop()
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in stacks:
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        frames = [f.split(" (")[0] + " (" + f.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1]
                  + ")" for f in stack.split(";") if f]
        if frames:
            own[frames[-1]] = own.get(frames[-1], 0) + n
        for f in set(frames):
            incl[f] = incl.get(f, 0) + n
    lines = [f"{server.name} on {wl.title}: {total} samples", "",
             "| own time | function | | including callees | function |",
             "|---|---|---|---|---|"]
    by_own = sorted(own.items(), key=lambda kv: -kv[1])[:top]
    by_incl = sorted(incl.items(), key=lambda kv: -kv[1])[:top]
    for (f1, n1), (f2, n2) in zip(by_own, by_incl, strict=False):
        lines.append(f"| {n1 / total:.1%} | `{f1}` | | {n2 / total:.1%} | `{f2}` |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/tls_bench.py",
                                description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=2.0, help="seconds measured per point")
    p.add_argument("--warmup", type=float, default=0.5, help="load before measuring (s)")
    p.add_argument("--only", action="append", choices=[w.key for w in WORKLOADS],
                   help="run this workload only (repeatable)")
    p.add_argument("--json", type=Path, default=None, help="also write the samples here")
    p.add_argument("--profile", choices=[w.key for w in WORKLOADS if w.mode != "idle"],
                   help="instead: profile danga's server on this workload with py-spy")
    args = p.parse_args(argv)
    harness.raise_nofile()
    st = harness.Settings(warmup=args.warmup, duration=args.duration, rounds=args.rounds)
    cores = harness.cpus()
    if len(cores) >= 2:
        st.server_cpu, st.client_cpu = cores[0], cores[1]
    workloads = [w for w in WORKLOADS if not args.only or w.key in args.only]
    with tempfile.TemporaryDirectory(prefix="danga-tls-bench-") as tmp:
        try:
            cert, key = make_certificate(Path(tmp))
            loadgen = build_loadgen()
        except RuntimeError as exc:
            print(f"tls_bench: {exc}", file=sys.stderr)
            return 2
        srvs, skipped = servers(cert, key)
        if args.profile:
            wl = next(w for w in WORKLOADS if w.key == args.profile)
            try:
                print(profile(srvs[0], wl, st, loadgen))
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                print(f"tls_bench: {exc}", file=sys.stderr)
                return 2
            return 0
        samples, errors = execute(srvs, workloads, st, loadgen)
    print(f"python {platform.python_version()}, {ssl.OPENSSL_VERSION}, "
          f"{len(cores)} cores (server on {st.server_cpu}, load generator on {st.client_cpu}), "
          f"{st.rounds} rounds of {st.duration} s after {st.warmup} s, cipher {SUITE}")
    for s in srvs:
        print(f"- {s.name}: {s.version}")
    for name, why in skipped.items():
        print(f"- {name}: not run: {why}")
    print()
    print(report(samples, srvs, workloads))
    for e in errors:
        print(f"error: {e}")
    if args.json:
        args.json.write_text(json.dumps({"samples": samples, "errors": errors}, indent=1))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
