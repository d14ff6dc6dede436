"""An independent cross-check of the harness's ratios to asyncio.

``python benchmarks/crosscheck.py [--rounds 7] [--duration 2]`` measures 64-byte ping-pong
over 10 connections against three servers -- danga on epoll, asyncio and uvloop --
with nothing from ``danga.bench``: its own client (a few lines of C, compiled here with
``cc``), its own servers (``examples/echo.py`` for danga, a minimal asyncio Protocol
below for asyncio and uvloop), its own warm-up and its own CPU accounting. It prints
the throughput and the server's user CPU per round trip, and each server's ratio to
asyncio (median and min-max of the per-round ratios), to be compared with the same
ratios from ``python benchmarks/run.py`` (docs/performance.md).

Each server is warmed the way a server that has run for a while is: one connection
echoes a message and closes before the measurement (see docs/performance.md for why
this matters to asyncio). Server and client are pinned to different cores; rounds are
interleaved (danga, asyncio, uvloop, danga, ...).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CLIENT_C = r"""
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>

static double now(void) {
    struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    int port = atoi(argv[1]), n = atoi(argv[2]);
    double warm = atof(argv[3]), dur = atof(argv[4]);
    char msg[64], buf[64]; int got[1024] = {0};
    int ep = epoll_create1(0);
    for (int i = 0; i < n; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
        struct sockaddr_in a = {0};
        a.sin_family = AF_INET; a.sin_port = htons(port); a.sin_addr.s_addr = htonl(0x7f000001);
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (connect(fd, (struct sockaddr *)&a, sizeof a)) { perror("connect"); return 2; }
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
        memset(msg, 'a' + fd % 26, 64);
        if (send(fd, msg, 64, 0) != 64) { perror("send"); return 2; }
    }
    long count = 0; int measuring = 0; double t0 = now(), start = 0;
    struct epoll_event evs[1024];
    for (;;) {
        int k = epoll_wait(ep, evs, 1024, 100);
        for (int j = 0; j < k; j++) {
            int fd = evs[j].data.fd;
            ssize_t r = recv(fd, buf, 64 - got[fd], 0);
            if (r <= 0) { fprintf(stderr, "recv: closed or failed\n"); return 2; }
            memset(msg, 'a' + fd % 26, 64);
            if (memcmp(buf, msg, r)) { fprintf(stderr, "wrong echo\n"); return 3; }
            got[fd] += r;
            if (got[fd] == 64) { got[fd] = 0; count++; send(fd, msg, 64, 0); }
        }
        double t = now();
        if (!measuring && t - t0 >= warm) {
            measuring = 1; count = 0; start = t; printf("start\n"); fflush(stdout);
        } else if (measuring && t - start >= dur) {
            printf("end %ld %.6f\n", count, t - start); fflush(stdout); return 0;
        }
    }
}
"""

SERVER_PY = """
import asyncio, socket, sys

class Echo(asyncio.Protocol):
    def connection_made(self, t):
        self.t = t
    def data_received(self, d):
        self.t.write(d)

if sys.argv[1] == "uvloop":
    import uvloop
    loop = uvloop.new_event_loop()
else:
    loop = asyncio.new_event_loop()
srv = loop.run_until_complete(loop.create_server(Echo, "127.0.0.1", 0))
print("port", srv.sockets[0].getsockname()[1], flush=True)
loop.run_forever()
"""


def cpu_user(pid: int) -> tuple[float, float]:
    """The user and system CPU seconds of *pid* (/proc/PID/stat fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    hz = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / hz, int(fields[12]) / hz


def start_server(name: str, tmp: Path, cpu: int) -> tuple[subprocess.Popen[str], int]:
    if name == "danga-epoll":
        cmd = [sys.executable, str(ROOT / "examples" / "echo.py"), "--backend", "epoll"]
    else:
        script = tmp / "server.py"
        script.write_text(SERVER_PY)
        cmd = [sys.executable, str(script), name]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True,
                            preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))
    assert proc.stdout is not None
    line = proc.stdout.readline()
    # "listening on 127.0.0.1:PORT (backend epoll)" or "port PORT"
    port = int(line.split(":")[1].split()[0]) if "listening" in line else int(line.split()[1])
    return proc, port


def warm(port: int) -> None:
    """One connection that echoes 64 bytes and closes; then give the server a moment."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"w" * 64)
        got = b""
        while len(got) < 64:
            got += s.recv(64)
    time.sleep(0.3)


def point(name: str, client: Path, tmp: Path, args: argparse.Namespace) -> tuple[float, float]:
    """(round trips per second, server user µs per round trip) for one fresh server."""
    server, port = start_server(name, tmp, args.server_cpu)
    try:
        warm(port)
        proc = subprocess.Popen(
            [str(client), str(port), "10", str(args.warmup), str(args.duration)],
            stdout=subprocess.PIPE, text=True,
            preexec_fn=lambda: os.sched_setaffinity(0, {args.client_cpu}))
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "start":
            raise RuntimeError(f"the client failed against {name}")
        u0 = cpu_user(server.pid)[0]
        end = proc.stdout.readline().split()
        u1 = cpu_user(server.pid)[0]
        proc.wait(10)
        if proc.returncode != 0 or end[0] != "end":
            raise RuntimeError(f"the client failed against {name}")
        count, secs = int(end[1]), float(end[2])
        return count / secs, (u1 - u0) / max(count, 1) * 1e6
    finally:
        server.terminate()
        server.wait(10)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--duration", type=float, default=2.0)
    p.add_argument("--warmup", type=float, default=0.5)
    p.add_argument("--servers", default="danga-epoll,asyncio,uvloop")
    args = p.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    args.server_cpu, args.client_cpu = cores[0], cores[-1]
    cc = shutil.which("cc")
    if cc is None:
        print("crosscheck.py needs a C compiler (cc)", file=sys.stderr)
        return 2
    names = args.servers.split(",")
    rt: dict[str, list[float]] = {n: [] for n in names}
    user: dict[str, list[float]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        (tmp / "client.c").write_text(CLIENT_C)
        client = tmp / "client"
        subprocess.run([cc, "-O2", "-o", str(client), str(tmp / "client.c")], check=True)
        for rnd in range(args.rounds):
            for name in names:
                r, u = point(name, client, tmp, args)
                rt[name].append(r)
                user[name].append(u)
                print(f"round {rnd + 1} {name}: {r:.0f} rt/s, {u:.2f} µs user/rt",
                      file=sys.stderr)
    print(f"crosscheck: ping-pong 64 B x 10 connections, {args.rounds} interleaved rounds of "
          f"{args.duration} s, every server warmed by one connection that echoed and closed")
    print("| server | rt/s median (min-max) | user µs/rt | rt/s / asyncio | user / asyncio |")
    print("|---|---|---|---|---|")
    for name in names:
        ratios = [a / b for a, b in zip(rt[name], rt["asyncio"], strict=True)]
        uratios = [a / b for a, b in zip(user[name], user["asyncio"], strict=True) if b]
        print(f"| {name} | {statistics.median(rt[name]):.0f} ({min(rt[name]):.0f}-"
              f"{max(rt[name]):.0f}) | {statistics.median(user[name]):.2f} | "
              f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) | "
              f"{statistics.median(uratios):.2f}x ({min(uratios):.2f}-{max(uratios):.2f}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
