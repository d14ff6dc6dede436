#!/usr/bin/env python3
"""The echo server of examples/echo.py on every core: ``danga.prefork`` workers.

Run it::

    python examples/prefork_echo.py --workers 2 --port 7000
    python examples/prefork_echo.py --http --port 8080     # a fixed 200 reply, for wrk
    wrk -c 64 -d 5 http://127.0.0.1:8080/

The master forks ``--workers`` processes (default: one per CPU). Each starts on a fresh
loop and runs ``setup``, which binds its listener with ``EchoServer.bind(...,
reuse_port=True)``; under ``danga.prefork`` that gives every worker its own
SO_REUSEPORT socket on Linux and FreeBSD, and one socket made by the master and shared
by all workers elsewhere (or with ``--reuse-port no``). Each worker prints ``worker ID
pid PID listening on HOST:PORT (backend NAME)`` when it is ready, and its counts when a
shutdown begins (``worker ID pid PID served connections=N requests=N bytes=N``).

Signals to the master (the pid printed first): TERM or INT drain and exit (every
response already queued is delivered whole; exit status 0 when nothing was cut short), a
second TERM or INT is quick, HUP replaces the workers one at a time, TTIN and TTOU add
and remove a worker. A worker that dies, or whose loop stops turning for
``--heartbeat`` seconds, is replaced.

``--http`` answers every request (a GET without a body, as wrk and curl send) with a
fixed ``200 OK``; the echo is the default.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

# echo.py is a sibling: a script's directory is on sys.path (as for lockd.py).
from echo import READ_SIZE, Echo, EchoServer, drain

import danga

#: This worker's counts (each worker is its own process, so module state is per worker).
STATS = {"connections": 0, "requests": 0, "bytes": 0}

RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n\r\n"
            b"hello\n")


class CountingEcho(Echo):
    """The echo connection, counting every read (one "request") and its bytes."""

    __slots__ = ()

    def read(self, n: int) -> Any:
        data = super().read(n)
        if data:
            STATS["requests"] += 1
            STATS["bytes"] += len(data)
        return data


class Hello(Echo):
    """Answers each HTTP request (up to its blank line) with :data:`RESPONSE`."""

    __slots__ = ("tail",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tail = b""

    def event_read(self) -> None:
        data = self.read(READ_SIZE)
        if data is None:
            self.finish("eof")
            return
        if not data:
            return
        buf = self.tail + data
        count = buf.count(b"\r\n\r\n")
        # Keep what could be the start of the next request's blank line.
        self.tail = buf[buf.rfind(b"\r\n\r\n") + 4:][-3:] if count else buf[-3:]
        if count:
            STATS["requests"] += count
            STATS["bytes"] += len(data)
            self.write(RESPONSE * count)


class Server(EchoServer):
    """One listener per worker (or one shared): counts connections, makes the handler."""

    __slots__ = ("handler",)

    def __init__(self, sock: Any, *, loop: danga.Loop | None = None) -> None:
        super().__init__(sock, loop=loop)
        self.handler: type[Echo] = CountingEcho

    def on_accept(self, conn: Any, addr: Any) -> None:
        STATS["connections"] += 1
        self.handler(conn, loop=self.loop, high_water=self.high_water)


def say(line: str) -> None:
    """Print one line with one write(): the workers share stdout, and print() may split
    a line into several writes that another worker's line lands between."""
    sys.stdout.flush()
    os.write(sys.stdout.fileno(), f"{line}\n".encode())


def make_setup(args: argparse.Namespace) -> Callable[[danga.Loop, int], Any]:
    """The ``setup(loop, worker_id)`` each worker runs."""

    def setup(loop: danga.Loop, worker_id: int) -> Callable[[], None]:
        # The same call binds a worker's own SO_REUSEPORT socket or takes the master's
        # shared one: danga.prefork decides, as its reuse_port says.
        server = Server.bind((args.host, args.port), loop=loop, reuse_port=True)
        server.high_water = args.high_water
        server.handler = Hello if args.http else CountingEcho
        say(f"worker {worker_id} pid {os.getpid()} listening on "
            f"{server.local_addr_string()} (backend {loop.backend.name})")

        def on_shutdown() -> None:
            counts = " ".join(f"{key}={value}" for key, value in STATS.items())
            say(f"worker {worker_id} pid {os.getpid()} served {counts}")
            drain(loop)  # idle connections close now, busy ones once their reply is sent

        return on_shutdown

    return setup


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="danga echo server, one process per core")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=0,
                        help="port (0: a free one, the same for every worker)")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes (default: the CPU count)")
    parser.add_argument("--reuse-port", choices=("auto", "yes", "no"), default="auto",
                        help="yes: a SO_REUSEPORT listener per worker; no: one listener"
                             " made by the master; auto: yes where the kernel balances")
    parser.add_argument("--grace", type=float, default=30.0,
                        help="graceful shutdown limit in seconds (30)")
    parser.add_argument("--heartbeat", type=float, default=10.0,
                        help="kill a worker whose loop is stuck this long (10s)")
    parser.add_argument("--backend", default=None,
                        help="danga backend (default: DANGA_BACKEND, else automatic)")
    parser.add_argument("--high-water", type=int, default=256 * 1024,
                        help="pause reading above this many queued bytes (262144)")
    parser.add_argument("--http", action="store_true",
                        help="answer HTTP requests with a fixed 200 instead of echoing")
    parser.add_argument("--verbose", action="store_true", help="log the master's events")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(process)d %(levelname)s %(message)s")
    if args.backend is not None:
        os.environ["DANGA_BACKEND"] = args.backend  # each worker's fresh loop reads it
    reuse: bool | str = {"auto": "auto", "yes": True, "no": False}[args.reuse_port]
    print(f"master pid {os.getpid()}", flush=True)
    return danga.prefork(make_setup(args), args.workers, reuse_port=reuse,
                         graceful_timeout=args.grace, heartbeat=args.heartbeat)


if __name__ == "__main__":
    sys.exit(main())
