#!/usr/bin/env python3
"""Count the system calls of examples/echo.py in its steady state, per message.

The hot-path rules (docs/internals.md, 'hot-path-rules') promise that a steady
ping-pong costs, per message, one recv and one send, and no interest change at all (no
``epoll_ctl``). This script checks it with strace:

1. start ``examples/echo.py --port 0 --backend B``, warm it with one connection that
   echoes and closes, and start a load client in another process
   (``--connections`` connections, each ping-ponging ``--size``-byte messages and
   checking every echoed byte);
2. once the connections are up and warm, freeze the client (SIGSTOP), let the server
   go idle, and attach ``strace -c -f -p SERVER`` (so start-up and connection set-up are
   not counted);
3. thaw the client for ``--seconds``, freeze it again, let the server finish the
   messages in flight, and detach strace (SIGINT);
4. divide every syscall count by the round trips the client completed in the window.

The window's message count is exact up to the messages in flight at its two edges
(at most one per connection at each edge), which the table reports as the error bound.

Usage::

    python benchmarks/syscalls.py                      # epoll, poll and select
    python benchmarks/syscalls.py --backends epoll --seconds 5 --connections 10

strace must be installed (``apt-get install -y strace``) and ptrace allowed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from danga.bench.harness import warm_up

ROOT = Path(__file__).resolve().parent.parent
ECHO = ROOT / "examples" / "echo.py"

RECV_CALLS = ("recvfrom", "recv", "recvmsg", "read", "readv")
SEND_CALLS = ("sendto", "send", "sendmsg", "write", "writev")
WAIT_CALLS = {"epoll": ("epoll_wait", "epoll_pwait", "epoll_pwait2"),
              "poll": ("poll", "ppoll"),
              "select": ("select", "pselect6", "_newselect")}


# -- the load client (a separate process) --------------------------------------------


def client_main(port: int, connections: int, size: int, counter: Any, errors: Any) -> None:
    """Ping-pong *size*-byte messages on *connections* connections until killed,
    counting completed round trips in the shared *counter*."""
    sel = selectors.DefaultSelector()
    for i in range(connections):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        message = bytes([65 + i % 26]) * (size - 1) + b"\n"
        state = {"message": message, "got": bytearray(), "sock": sock}
        sel.register(sock, selectors.EVENT_READ, state)
        sock.sendall(message)
    while True:
        for key, _ in sel.select():
            conn: socket.socket = key.data["sock"]
            state = key.data
            try:
                chunk = conn.recv(65536)
            except BlockingIOError:
                continue
            if not chunk:
                errors.value += 1
                return
            got = state["got"]
            got += chunk
            if len(got) < size:
                continue
            if bytes(got) != state["message"]:
                errors.value += 1
            got.clear()
            counter.value += 1
            conn.send(state["message"])


# -- one measured run ---------------------------------------------------------------


def _wait_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise RuntimeError("the echo server printed nothing")
    return proc.stdout.readline().decode()


def _wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.01)


def parse_strace_summary(text: str) -> dict[str, tuple[int, int]]:
    """``strace -c`` output -> {syscall: (calls, errors)}."""
    counts: dict[str, tuple[int, int]] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) not in (5, 6) or not re.fullmatch(r"[\d.]+", fields[0]):
            continue
        name = fields[-1]
        if name == "total":
            continue
        errors = int(fields[4]) if len(fields) == 6 else 0
        counts[name] = (int(fields[3]), errors)
    return counts


def measure(backend: str, connections: int, size: int, seconds: float,
            strace: str) -> dict[str, Any]:
    """One run on *backend*: the strace command, the window's syscall counts and the
    messages completed in it."""
    server = subprocess.Popen([sys.executable, str(ECHO), "--port", "0", "--backend", backend],
                              stdout=subprocess.PIPE)
    ctx = multiprocessing.get_context("fork")
    counter = ctx.Value("q", 0, lock=False)
    errors = ctx.Value("q", 0, lock=False)
    client = None
    tracer = None
    try:
        line = _wait_line(server, 20.0)
        match = re.match(r"listening on 127\.0\.0\.1:(\d+) \(backend (\w+)\)", line)
        if not match or match.group(2) != backend:
            raise RuntimeError(f"unexpected first line from the server: {line!r}")
        port = int(match.group(1))
        # One connection that echoes and closes first: every server is measured in its
        # steady state (see danga.bench.harness.warm_up and docs/performance.md).
        warm_up(port, server.pid)
        client = ctx.Process(target=client_main,
                             args=(port, connections, size, counter, errors), daemon=True)
        client.start()
        _wait_for(lambda: counter.value >= 20 * connections, 20.0, "the warm-up")
        assert client.pid is not None
        os.kill(client.pid, signal.SIGSTOP)
        time.sleep(0.3)  # the server answers what is in flight, then blocks in its poll

        with tempfile.NamedTemporaryFile("r", suffix=".strace") as out:
            command = [strace, "-f", "-c", "-o", out.name, "-p", str(server.pid)]
            tracer = subprocess.Popen(command, stderr=subprocess.PIPE)
            assert tracer.stderr is not None
            attached = tracer.stderr.readline().decode()
            if "attached" not in attached:
                raise RuntimeError(f"strace did not attach: {attached!r}")
            start = counter.value
            os.kill(client.pid, signal.SIGCONT)
            time.sleep(seconds)
            os.kill(client.pid, signal.SIGSTOP)
            time.sleep(0.3)  # let the server finish the messages in flight
            done = counter.value - start
            tracer.send_signal(signal.SIGINT)
            tracer.wait(20.0)
            counts = parse_strace_summary(Path(out.name).read_text())
        os.kill(client.pid, signal.SIGCONT)
        if errors.value:
            raise RuntimeError(f"the client saw {errors.value} wrong echo(es) or hang-ups")
    finally:
        if tracer is not None and tracer.poll() is None:
            tracer.kill()
        if client is not None and client.is_alive():
            client.kill()
            client.join(5.0)
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(20.0)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    if server.returncode != 0:
        raise RuntimeError(f"the echo server exited {server.returncode} after SIGTERM")
    return {"backend": backend, "command": " ".join(command[:4]) + " <file> -p <echo pid>",
            "messages": done, "edge_error": 2 * connections, "connections": connections,
            "size": size, "seconds": seconds, "syscalls": counts}


def _sum(counts: dict[str, tuple[int, int]], names: tuple[str, ...]) -> int:
    return sum(counts.get(name, (0, 0))[0] for name in names)


def summarise(run: dict[str, Any]) -> dict[str, float]:
    """The per-message ratios of one run."""
    counts, n = run["syscalls"], max(1, run["messages"])
    return {
        "recv": _sum(counts, RECV_CALLS) / n,
        "send": _sum(counts, SEND_CALLS) / n,
        "wait": _sum(counts, WAIT_CALLS[run["backend"]]) / n,
        "epoll_ctl": counts.get("epoll_ctl", (0, 0))[0] / n,
        "other": (sum(c for c, _ in counts.values())
                  - _sum(counts, RECV_CALLS + SEND_CALLS + WAIT_CALLS[run["backend"]])
                  - counts.get("epoll_ctl", (0, 0))[0]) / n,
    }


def print_report(runs: list[dict[str, Any]]) -> None:
    first = runs[0]
    print(f"examples/echo.py under {first['connections']} connections ping-ponging "
          f"{first['size']}-byte messages over 127.0.0.1 for {first['seconds']}s "
          f"(client in another process)")
    print(f"traced with: {first['command']} (attached after set-up)\n")
    print(f"{'backend':<8} {'messages':>9} {'recv/msg':>9} {'send/msg':>9} {'wait/msg':>9} "
          f"{'epoll_ctl':>9} {'other/msg':>9}")
    for run in runs:
        r = summarise(run)
        print(f"{run['backend']:<8} {run['messages']:>9} {r['recv']:>9.3f} {r['send']:>9.3f} "
              f"{r['wait']:>9.3f} {run['syscalls'].get('epoll_ctl', (0, 0))[0]:>9} "
              f"{r['other']:>9.4f}")
    print(f"\n(message counts are exact up to ±{first['edge_error']} in flight at the "
          "window's edges; wait = the backend's epoll_wait/poll/select)\n")
    for run in runs:
        rows = sorted(run["syscalls"].items(), key=lambda kv: -kv[1][0])
        detail = ", ".join(f"{name} {calls}" + (f" ({err} errors)" if err else "")
                           for name, (calls, err) in rows)
        print(f"{run['backend']}: {detail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--backends", default="epoll,poll,select",
                        help="comma-separated backends (default epoll,poll,select)")
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--size", type=int, default=64, help="message size in bytes")
    parser.add_argument("--seconds", type=float, default=3.0, help="the traced window")
    parser.add_argument("--json", action="store_true", help="print the runs as JSON")
    args = parser.parse_args(argv)
    strace = shutil.which("strace")
    if strace is None:
        print("syscalls.py: strace is not installed (apt-get install -y strace)",
              file=sys.stderr)
        return 2
    runs = [measure(name, args.connections, args.size, args.seconds, strace)
            for name in args.backends.split(",") if name]
    if args.json:
        print(json.dumps(runs, indent=1))
    else:
        print_report(runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
