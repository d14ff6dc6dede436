"""The Python cost of one event, with the I/O replaced by C no-ops.

``python benchmarks/overhead.py [--events 100] [--rounds 9]`` dispatches the same batch
of READ events again and again through three loops whose ``recv``/``send`` are
``dict.get`` (a C call that returns the 64-byte message, then its length), so that no
system call and no kernel noise is measured, only Python:

- ``raw``: the body of ``servers/epoll_echo.py``: look the socket up, recv, send;
- ``floor``: the least a Socket-style API can do per event: look the object up, check
  it is open, not new on a reused fd and watching read, then call its ``event_read``,
  which calls ``read()`` and ``write()``, each one C call and nothing else;
- ``danga``: ``Loop._dispatch`` over real ``danga.Socket`` objects (the echo server's
  class), whose I/O slots are pointed at the no-ops.

It prints ns per event (median, min-max over interleaved rounds) and the ratios. The
difference floor - raw is what any event_read/read/write design costs in CPython;
danga - floor is what danga's own checks cost on top.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import time
from typing import Any

import danga
from danga.bench.servers.danga_echo import Echo  # the benchmarked server's own class
from danga.poller import ERR, HUP, READ, WRITE

MSG = b"x" * 64
NOOP_IO = {65536: MSG, MSG: len(MSG)}  # recv(io, 65536) -> MSG, send(io, MSG) -> 64
noop = dict.get


class Floor:
    """The least per-object state and code an event_read/read/write API needs."""

    __slots__ = ("_event_watch", "_gen", "_io", "closed")

    def __init__(self) -> None:
        self.closed = False
        self._gen = -1
        self._event_watch = READ | ERR | HUP
        self._io = NOOP_IO

    def event_read(self) -> None:
        data = self.read(65536)
        if data is None:
            self.close()
        elif data:
            self.write(data)

    def read(self, n: int) -> bytes | None:
        return noop(self._io, n) or None  # type: ignore[return-value]

    def write(self, data: bytes) -> bool:
        noop(self._io, data)
        return True

    def close(self) -> None:
        self.closed = True


def run_raw(n: int, reps: int) -> float:
    conns = dict.fromkeys(range(n), NOOP_IO)
    events = [(fd, READ) for fd in range(n)]
    recv = send = noop
    t0 = time.perf_counter()
    for _ in range(reps):
        for fd, _mask in events:
            s = conns[fd]
            data = recv(s, 65536)
            if data:
                send(s, data)
    return time.perf_counter() - t0


def run_floor(n: int, reps: int) -> float:
    objs = {fd: Floor() for fd in range(n)}
    events = [(fd, READ) for fd in range(n)]
    get = objs.get
    t0 = time.perf_counter()
    for batch in range(reps):
        for fd, mask in events:
            obj = get(fd)
            if obj is None:
                continue
            if obj.closed or obj._gen >= batch:
                continue
            mask &= obj._event_watch
            try:
                if mask & READ:
                    obj.event_read()
                if mask & WRITE and not obj.closed:
                    pass
            except Exception:  # the shape of a dispatcher; never raised here
                pass
    return time.perf_counter() - t0


def run_danga(n: int, reps: int) -> float:
    loop = danga.Loop("epoll" if hasattr(__import__("select"), "epoll") else None)
    pairs = [socket.socketpair() for _ in range(n)]
    objs: list[Any] = [Echo(a, loop=loop) for a, _ in pairs]
    for obj in objs:
        obj.watch_read(True)
    loop.run_once(0)  # registrations flushed; the objects are no longer "new"
    for obj in objs:
        obj._io, obj._recv, obj._send = NOOP_IO, noop, noop  # the I/O becomes C no-ops
    events = [(obj.fd, READ) for obj in objs]
    registry = getattr(loop, "_registry", None)
    if registry is not None:  # the v2 core: dispatch(events, the poll's generation)
        batch = registry.gen + 1
        core = loop._dispatch

        def dispatch(events: list[tuple[int, int]]) -> None:
            core(events, batch)
    else:  # the core before v2 (for benchmarks/ab.py --before)
        dispatch = loop._dispatch
    t0 = time.perf_counter()
    for _ in range(reps):
        dispatch(events)
    elapsed = time.perf_counter() - t0
    for obj in objs:
        obj._io, obj._recv, obj._send = obj.sock, socket.socket.recv, socket.socket.send
        obj.close("done")
    loop.close()
    for a, b in pairs:
        a.close()
        b.close()
    return elapsed


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--events", type=int, default=100, help="events per batch")
    p.add_argument("--reps", type=int, default=3000, help="batches per measurement")
    p.add_argument("--rounds", type=int, default=9)
    a = p.parse_args()
    runs = {"raw": run_raw, "floor": run_floor, "danga": run_danga}
    ns: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(a.rounds):  # interleaved: raw floor danga raw floor danga ...
        for name, fn in runs.items():
            ns[name].append(fn(a.events, a.reps) / (a.events * a.reps) * 1e9)
    med = {k: statistics.median(v) for k, v in ns.items()}
    print(f"Python cost per event, ns (median, min-max of {a.rounds} interleaved rounds, "
          f"{a.events} events x {a.reps} batches each)")
    for name, vals in ns.items():
        print(f"  {name:6s} {med[name]:7.0f}  ({min(vals):.0f}-{max(vals):.0f})")
    print(f"  floor - raw  = {med['floor'] - med['raw']:.0f} ns: the cost of any "
          "event_read/read/write API")
    print(f"  danga - floor = {med['danga'] - med['floor']:.0f} ns: danga's own checks")
    print(f"  danga / floor = {med['danga'] / med['floor']:.2f}x, "
          f"danga / raw = {med['danga'] / med['raw']:.2f}x")


if __name__ == "__main__":
    main()
