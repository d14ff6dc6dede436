"""System calls per round trip, measured with ``strace -c`` on a server in steady state.

The server is warmed (a connection that echoes and closes, see harness.warm_up) and
runs ping-pong 64 B over 10 connections; once it is going, strace attaches,
the load generator is asked (SIGUSR1) for its round-trip count at the start and the end
of the window, and strace's summary is divided by the round trips in between. strace
slows the server down a lot; the counts per round trip are what matters, and whether
``epoll_ctl`` appears at all (it should not in the steady state: a watch that does not
change costs no system call).
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from .harness import Server, ServerProcess, Settings, pin

_ROW = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:(\d+)\s+)?(\w+)\s*$")


def _tick(proc: subprocess.Popen[str], deadline: float) -> int:
    proc.send_signal(signal.SIGUSR1)
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith('{"tick"'):
            return int(json.loads(line)["tick"])
    raise RuntimeError("the load generator did not answer SIGUSR1")


def parse_summary(text: str) -> dict[str, int]:
    """strace -c's table -> {syscall: calls}."""
    calls: dict[str, int] = {}
    for line in text.splitlines():
        m = _ROW.match(line)
        if m and m.group(3) != "total":
            calls[m.group(3)] = int(m.group(1))
    return calls


def measure(server: Server, st: Settings, loadgen: list[str], window: float = 2.0,
            conns: int = 10) -> dict[str, Any]:
    """Syscalls per round trip for *server*. Raises RuntimeError (strace missing, ...)."""
    strace = shutil.which("strace")
    if strace is None:
        raise RuntimeError("strace is not installed")
    with ServerProcess(server, st.server_cpu, warm=st.warm) as srv, \
            tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "strace.txt"
        gen = subprocess.Popen(
            [*loadgen, "--port", str(srv.port), "--conns", str(conns), "--size", "64",
             "--warmup", "0.5", "--duration", str(window + 30), "--server-pid", str(srv.pid)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            preexec_fn=pin(st.client_cpu))  # noqa: PLW1509 (see harness.pin)
        try:
            time.sleep(1.0)  # warm: connections accepted, interest settled
            tr = subprocess.Popen([strace, "-c", "-f", "-o", str(out), "-p", str(srv.pid)],
                                  stderr=subprocess.PIPE, text=True)
            assert tr.stderr is not None
            line = tr.stderr.readline()  # "strace: Process N attached"
            if "attached" not in line:
                tr.kill()
                raise RuntimeError(f"strace could not attach: {line.strip()}")
            t0 = _tick(gen, time.monotonic() + 5)
            time.sleep(window)
            t1 = _tick(gen, time.monotonic() + 5)
            tr.send_signal(signal.SIGINT)
            tr.wait(10)
        finally:
            gen.kill()
            gen.wait()
            if gen.stdout:
                gen.stdout.close()
            if gen.stderr:
                gen.stderr.close()
        calls = parse_summary(out.read_text())
    rts = max(t1 - t0, 1)
    total = sum(calls.values())
    return {"rts": rts, "calls": calls, "total": total, "per_rt": total / rts,
            "epoll_ctl": calls.get("epoll_ctl", 0), "window": window}
