"""PYTHON FALLBACK load generator, used only when no C compiler is available.

Same options, phases and JSON output as loadgen.c (see there), with ``"loadgen":
"python-fallback"``. It is much slower than the servers it measures, so its figures are
floors: the table says so. Every echoed byte is still checked (exit status 3 on a
mismatch).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import selectors
import signal
import socket
import struct
import sys
import time
from typing import Any

PERIOD = 65521
CHUNK = 65536


def _table() -> bytes:
    x = 2463534242
    out = bytearray(PERIOD)
    for i in range(PERIOD):
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        out[i] = x & 0xFF
    return bytes(out + out[:CHUNK])


def _fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return -1


def _cpu(pid: int) -> tuple[float, float]:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    hz = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / hz, int(fields[12]) / hz


def _connect(host: str, port: int) -> socket.socket:
    s = socket.create_connection((host, port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    return s


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--conns", type=int, default=10)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--pipeline", type=int, default=1)
    p.add_argument("--warmup", type=float, default=0.5)
    p.add_argument("--duration", type=float, default=2.0)
    p.add_argument("--idle", type=int, default=0)
    p.add_argument("--server-pid", type=int, default=0)
    a = p.parse_args()
    table = _table()
    size, depth, pid = a.size, a.pipeline, a.server_pid
    total = [0]
    tick = [False]
    signal.signal(signal.SIGUSR1, lambda *_: tick.__setitem__(0, True))
    sel = selectors.DefaultSelector()
    conns = []
    for i in range(a.conns):
        s = _connect(a.host, a.port)
        s.setblocking(False)
        st = [s, 0, 0, i * 977, False]  # sock, sent, recvd, offset, want_out
        conns.append(st)
        sel.register(s, selectors.EVENT_READ, st)

    def pump(st: list[Any]) -> None:
        s, sent, recvd, off, want_out = st
        allowed = (recvd // size) * size + depth * size
        while sent < allowed:
            n = min(allowed - sent, CHUNK)
            start = (sent + off) % PERIOD
            try:
                w = s.send(table[start:start + n])
            except BlockingIOError:
                break
            sent += w
        st[1] = sent
        out = sent < allowed
        if out != want_out:
            sel.modify(s, selectors.EVENT_READ | (selectors.EVENT_WRITE if out else 0), st)
            st[4] = out

    for st in conns:
        pump(st)
    rss0 = rss1 = -1
    idle_ok = True
    keep = []
    phase, phase_end = 0, time.monotonic() + a.warmup / 2
    t_start = t_end = 0.0
    ru0 = ru1 = None
    s0 = s1 = (0.0, 0.0)
    at_start = 0
    while True:
        for key, ev in sel.select(0.05):
            st = key.data
            if ev & selectors.EVENT_READ:
                try:
                    data = st[0].recv(CHUNK)
                except BlockingIOError:
                    data = None
                if data == b"":
                    print(f"loadgen: the server closed connection {st[3] // 977}", file=sys.stderr)
                    return 2
                if data:
                    recvd = st[2]
                    start = (recvd + st[3]) % PERIOD
                    if recvd + len(data) > st[1] or table[start:start + len(data)] != data:
                        print(f"loadgen: echoed bytes differ at offset {recvd}", file=sys.stderr)
                        return 3
                    st[2] = recvd + len(data)
                    total[0] += st[2] // size - recvd // size
            pump(st)
        if tick[0]:
            tick[0] = False
            print(json.dumps({"tick": total[0]}), flush=True)
        now = time.monotonic()
        if now < phase_end:
            continue
        if phase == 0:
            if pid:
                rss0 = _rss(pid)
            if a.idle:
                base = _fd_count(pid) if pid else 0
                keep = [_connect(a.host, a.port) for _ in range(a.idle)]
                if pid:
                    deadline = time.monotonic() + 60
                    while _fd_count(pid) < base + a.idle and time.monotonic() < deadline:
                        time.sleep(0.002)
                    idle_ok = _fd_count(pid) >= base + a.idle
                    time.sleep(0.1)
            if pid:
                rss1 = _rss(pid)
            phase, phase_end = 1, time.monotonic() + a.warmup / 2
        elif phase == 1:
            phase, t_start = 2, time.monotonic()
            phase_end = t_start + a.duration
            at_start = total[0]
            ru0 = resource.getrusage(resource.RUSAGE_SELF)
            if pid:
                s0 = _cpu(pid)
        else:
            t_end = time.monotonic()
            ru1 = resource.getrusage(resource.RUSAGE_SELF)
            if pid:
                s1 = _cpu(pid)
            break
    assert ru0 is not None and ru1 is not None
    secs = t_end - t_start
    msgs = total[0] - at_start
    print(json.dumps({
        "loadgen": "python-fallback", "messages": msgs, "seconds": secs,
        "rt_per_s": msgs / secs, "bytes_per_s": msgs * size / secs,
        "client_user": ru1.ru_utime - ru0.ru_utime, "client_sys": ru1.ru_stime - ru0.ru_stime,
        "server_user": s1[0] - s0[0], "server_sys": s1[1] - s0[1],
        "rss0": rss0, "rss1": rss1, "idle": a.idle, "idle_ok": idle_ok,
    }), flush=True)
    del keep
    return 0


if __name__ == "__main__":
    sys.exit(main())
