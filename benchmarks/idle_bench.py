"""The cost of idle-timeout bookkeeping per activity, with 10,000 connections.

``python benchmarks/idle_bench.py [--conns 10000] [--events 200000] [--rounds 7]``
makes *conns* real ``danga.Socket`` objects in one loop (over UDP sockets: one fd each,
and nothing to report while unwatched), points their
``recv`` at a C no-op that returns 64 bytes (as benchmarks/overhead.py does, so no system
call and no kernel noise is measured), and spreads *events* reads over them, round
robin, three ways:

- ``off``: no idle timeout (the baseline: what a read costs);
- ``lazy``: ``set_idle_timeout(60)`` on every object, danga's way: each read stamps
  ``loop.now``, and one timer per object re-arms itself only when it fires early;
- ``naive``: no idle timeout in danga, and the application cancels and re-adds a
  60-second timer after every read (``timer.cancel(); loop.add_timer(60, cb)``), the
  "stop and restart the timer on activity" that libev's manual calls almost always a
  bad idea.

It prints CPU ns per read (median, min-max over interleaved rounds, after a warm-up
round), the bookkeeping cost per activity (variant - off), the ratio naive / lazy
(goal: >= 10x) and the read's cost with idle timeouts on against off.

Then a real ping-pong (``--pingpong`` seconds per round, 0 skips it): 64-byte messages
between two danga Sockets over a socketpair, through ``loop.run_once()`` with no limit
(as ``loop.run()``: with idle timeouts off the poll has no timeout, on it waits for the
idle timers), with idle timeouts off and on (both ends, 60 s), interleaved; it prints
round trips per second of the process's CPU time (``time.process_time()``: what
the other jobs of a shared machine take is not counted) and the ratio on / off, round
by round (goal: >= 0.97x). It is the worst case: one event per loop iteration, so the
per-iteration cost of having any timer at all is paid by every message.
"""

from __future__ import annotations

import argparse
import resource
import socket
import statistics
import time
from typing import Any

import danga

MSG = b"x" * 64
NOOP_IO = {65536: MSG}
noop = dict.get


class Conn(danga.Socket):
    def event_read(self) -> None:  # never dispatched here: read() is called directly
        self.read(65536)


def make(loop: danga.Loop, n: int) -> list[Any]:
    objs = [Conn(socket.socket(socket.AF_INET, socket.SOCK_DGRAM), loop=loop)
            for _ in range(n)]
    loop.run_once(0)
    for obj in objs:
        obj._io, obj._recv = NOOP_IO, noop  # the recv becomes a C no-op
    return objs


def run(objs: list[Any], loop: danga.Loop, how: str, events: int) -> float:
    n = len(objs)
    order = [objs[i % n] for i in range(events)]
    if how == "lazy":
        for obj in objs:
            obj.set_idle_timeout(60)
    timers: dict[Any, Any] = {}
    if how == "naive":
        for obj in objs:
            timers[obj] = loop.add_timer(60, obj.close, "idle_timeout")
    add = loop.add_timer
    t0 = time.process_time()  # CPU time: the other jobs of a shared machine not counted
    if how == "naive":
        for obj in order:
            obj.read(65536)
            timers[obj].cancel()
            timers[obj] = add(60, obj.close, "idle_timeout")
    else:
        for obj in order:
            obj.read(65536)
    elapsed = time.process_time() - t0
    for obj in objs:
        obj.set_idle_timeout(None)
    for timer in timers.values():
        timer.cancel()
    loop.run_once(0)  # lets the heap drop what was cancelled
    return elapsed / events * 1e9


class Pong(danga.Socket):
    """Answers every message; the ping end counts the round trips."""

    count = 0

    def event_read(self) -> None:
        data = self.read(65536)
        if data is None:
            self.close("eof")
        elif data:
            Pong.count += 1
            self.write(data)


def pingpong(seconds: float, idle: bool) -> float:
    """Round trips per second over one socketpair (both ends danga Sockets)."""
    loop = danga.Loop()
    a, b = socket.socketpair()
    ends = [Pong(a, loop=loop), Pong(b, loop=loop)]
    for end in ends:
        end.watch_read(True)
        if idle:
            end.set_idle_timeout(60)
    ends[0].write(MSG)
    Pong.count = 0
    end_at = time.perf_counter() + seconds
    run_once = loop.run_once
    cpu = time.process_time()
    while time.perf_counter() < end_at:
        for _ in range(100):
            run_once()  # no limit, as loop.run(): off, the poll has no timeout at all
    rate = Pong.count / 2 / (time.process_time() - cpu)
    for end in ends:
        end.close()
    loop.close()
    return rate


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--conns", type=int, default=10_000)
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--pingpong", type=float, default=1.0,
                   help="seconds per ping-pong round (0: skip)")
    a = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = a.conns + 100
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    loop = danga.Loop()
    objs = make(loop, a.conns)
    ways = ("off", "lazy", "naive")
    for how in ways:  # warm-up
        run(objs, loop, how, a.events // 4)
    ns: dict[str, list[float]] = {k: [] for k in ways}
    for _ in range(a.rounds):  # interleaved: off lazy naive off lazy naive ...
        for how in ways:
            ns[how].append(run(objs, loop, how, a.events))
    med = {k: statistics.median(v) for k, v in ns.items()}
    print(f"ns per read, {a.conns} connections, {a.events} reads per round "
          f"(median, min-max of {a.rounds} interleaved rounds; backend "
          f"{loop.backend.name})")
    for how in ways:
        print(f"  {how:6s} {med[how]:7.0f}  ({min(ns[how]):.0f}-{max(ns[how]):.0f})")
    lazy = med["lazy"] - med["off"]
    naive = med["naive"] - med["off"]
    print(f"  bookkeeping per activity: lazy {lazy:.0f} ns, naive {naive:.0f} ns, "
          f"naive / lazy = {naive / max(lazy, 1.0):.1f}x (goal >= 10x)")
    print(f"  read with idle timeouts on / off = {med['lazy'] / med['off']:.2f}x")
    for obj in objs:
        obj._io, obj._recv = obj.sock, socket.socket.recv
        obj.close("done")
    loop.close()
    if a.pingpong > 0:
        pingpong(a.pingpong / 4, False)  # warm-up
        pingpong(a.pingpong / 4, True)
        rates: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(a.rounds):
            for idle in (False, True):
                rates[idle].append(pingpong(a.pingpong, idle))
        ratios = [on / off for on, off in zip(rates[True], rates[False], strict=True)]
        print(f"ping-pong, 64-byte messages, round trips per CPU second (median, min-max "
              f"of {a.rounds} interleaved rounds of {a.pingpong:g} s)")
        for name, idle in (("off", False), ("on", True)):
            print(f"  idle {name:3s} {statistics.median(rates[idle]):9.0f}  "
                  f"({min(rates[idle]):.0f}-{max(rates[idle]):.0f})")
        print(f"  idle timeouts on / off = {statistics.median(ratios):.3f}x "
              f"({min(ratios):.3f}-{max(ratios):.3f}) (goal >= 0.97x)")


if __name__ == "__main__":
    main()
