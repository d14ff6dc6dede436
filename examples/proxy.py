#!/usr/bin/env python3
"""A TCP reverse proxy on danga: Perlbal's reproxy in its simplest form.

Run it::

    python examples/proxy.py --to 127.0.0.1:8001 --to 127.0.0.1:8002 --port 8000
    python examples/proxy.py --to 127.0.0.1:8001 --connect-timeout 2 --idle-timeout 30

It prints ``listening on HOST:PORT (backend NAME)`` once ready; on SIGINT or SIGTERM
it stops accepting and exits 0 once its connections are closed. Each client gets a
connection to one of the ``--to`` servers, chosen round robin; bytes flow both ways
until either side closes.

What it shows:

- **Connecting out without blocking** (``danga.connect``): the backend object exists at
  once; what the client sends meanwhile is queued and goes out once connected.
- **Failover.** A refused or timed-out connect reaches ``on_connect_error`` with the
  real errno, which is logged; the server is skipped for ``--down-for`` seconds and the
  next one is tried, with what the client sent meanwhile (nothing of it was sent: danga
  only queues while connecting). A client for whom every server failed is closed.
- **Back-pressure both ways.** A side stops reading while the other side has more than
  ``HIGH_WATER`` bytes queued, and a callable queued behind those bytes turns reading
  back on: a client that never reads costs at most that much memory.
- **Both sides close together**, the other one after its queued bytes are sent.
- **Timeouts**: ``--connect-timeout`` for the connect, ``--idle-timeout`` for both
  sides (a client that never reads is closed once both sides have been quiet that long).
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any

from echo import serve

import danga

logger = logging.getLogger("proxy")

#: Stop reading one side while the other has this many bytes queued.
HIGH_WATER = 256 * 1024
READ_SIZE = 64 * 1024


class Pool:
    """The servers, round robin, skipping one whose connect failed recently."""

    def __init__(self, servers: list[tuple[str, int]], down_for: float = 5.0) -> None:
        self.servers = servers
        self.down_for = down_for
        self.down_until: dict[tuple[str, int], float] = {}
        self.next = 0

    def pick(self, tried: set[tuple[str, int]]) -> tuple[str, int] | None:
        """The next server not in *tried*, preferring those not marked down."""
        now = time.monotonic()
        n = len(self.servers)
        order = [self.servers[(self.next + i) % n] for i in range(n)]
        fresh = [s for s in order if s not in tried]
        up = [s for s in fresh if self.down_until.get(s, 0.0) <= now]
        choice = (up or fresh or [None])[0]
        if choice is not None:
            self.next = (self.servers.index(choice) + 1) % n
        return choice

    def failed(self, server: tuple[str, int]) -> None:
        self.down_until[server] = time.monotonic() + self.down_for


class Side(danga.Socket):
    """One end of a proxied connection; ``other`` is the opposite end."""

    __slots__ = ("other", "paused")

    def __init__(self, sock: socket.socket, *, loop: danga.Loop | None = None,
                 idle: float | None = None) -> None:
        super().__init__(sock, loop=loop)
        self.other: Side | None = None
        self.paused = False
        if idle:
            self.set_idle_timeout(idle)
        self.watch_read(True)

    def event_read(self) -> None:
        data = self.read(READ_SIZE)
        if data is None:
            self.close("eof")
            return
        other = self.other
        if not data or other is None or other.closed:
            return
        other.write(data)
        if other.connecting:
            self.queued_while_connecting(data)
        if other.write_buf_size > HIGH_WATER and not self.paused:
            self.paused = True
            self.watch_read(False)
            other.write(self.resume)  # runs once the other side has sent what it had

    def resume(self) -> None:
        self.paused = False
        self.watch_read(True)

    def queued_while_connecting(self, data: bytes) -> None:
        """*data* went to the other side while it was still connecting."""

    def close(self, reason: str | None = None) -> None:
        if self.closed:
            return
        super().close(reason)
        other, self.other = self.other, None
        if other is not None and not other.closed:
            other.other = None
            # The other side sends what it has queued, then closes.
            other.write(lambda: other.close(f"peer closed ({reason})"))


class Backend(Side):
    """The connection to a server, made with danga.connect()."""

    __slots__ = ("client", "server")

    def __init__(self, sock: socket.socket, *, loop: danga.Loop | None = None,
                 client: Client, server: tuple[str, int]) -> None:
        super().__init__(sock, loop=loop, idle=client.proxy.idle)
        self.client = client
        self.server = server
        self.other = client

    def on_connect(self) -> None:
        self.client.replay = []  # sent now: a later failure cannot be failed over

    def on_connect_error(self, exc: OSError) -> None:
        logger.warning("proxy: server %s:%d failed: %s", *self.server, exc)
        client = self.client
        self.other = None  # not the client's end any more: closing it leaves the client
        super().on_connect_error(exc)
        client.proxy.pool.failed(self.server)
        client.connect_next()


class Client(Side):
    """An accepted client: connects to a server at once."""

    __slots__ = ("proxy", "replay", "tried")

    def __init__(self, sock: socket.socket, *, loop: danga.Loop | None = None,
                 proxy: Proxy) -> None:
        super().__init__(sock, loop=loop, idle=proxy.idle)
        self.proxy = proxy
        self.tried: set[tuple[str, int]] = set()
        # What the client sent while its server was connecting: nothing of it has been
        # sent yet (danga only queues while connecting), so the next server gets it all.
        self.replay: list[bytes] = []
        self.connect_next()

    def queued_while_connecting(self, data: bytes) -> None:
        self.replay.append(data)

    def connect_next(self) -> None:
        if self.closed:
            return
        server = self.proxy.pool.pick(self.tried)
        if server is None:
            logger.warning("proxy: no server could be reached for %s",
                           self.peer_addr_string())
            self.close("no_server")
            return
        self.tried.add(server)

        def factory(sock: socket.socket, loop: danga.Loop) -> Backend:
            return Backend(sock, loop=loop, client=self, server=server)

        backend = danga.connect(server, factory, loop=self.loop,
                                timeout=self.proxy.connect_timeout)
        self.other = backend
        for data in self.replay:
            backend.write(data)
        if self.paused:  # the callable that would resume it went with the failed server
            self.resume()


class Proxy(danga.Listener):
    """The listening socket: one :class:`Client` per accepted connection."""

    __slots__ = ("connect_timeout", "idle", "pool")

    def __init__(self, sock: socket.socket, *, loop: danga.Loop | None = None,
                 pool: Pool, connect_timeout: float = 10.0,
                 idle: float | None = None) -> None:
        super().__init__(sock, loop=loop)
        self.pool = pool
        self.connect_timeout = connect_timeout
        self.idle = idle

    def on_accept(self, conn: socket.socket, addr: Any) -> None:
        Client(conn, loop=self.loop, proxy=self)


def parse_server(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, not {text!r}")
    return host.strip("[]"), int(port)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="danga TCP reverse proxy")
    parser.add_argument("--to", type=parse_server, action="append", required=True,
                        metavar="HOST:PORT", help="a server to proxy to (repeatable)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port (0: pick a free one)")
    parser.add_argument("--backend", default=None,
                        help="danga backend (default: DANGA_BACKEND, else automatic)")
    parser.add_argument("--connect-timeout", type=float, default=10.0,
                        help="seconds a connect to a server may take (10)")
    parser.add_argument("--idle-timeout", type=float, default=300.0,
                        help="close both sides after this many quiet seconds (300; 0: never)")
    parser.add_argument("--down-for", type=float, default=5.0,
                        help="skip a server whose connect failed for this long (5)")
    parser.add_argument("--grace", type=float, default=10.0,
                        help="on SIGTERM/SIGINT, wait this long for responses (10s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    loop = danga.Loop(args.backend)
    proxy = Proxy(socket.create_server((args.host, args.port)), loop=loop,
                  pool=Pool(args.to, args.down_for), connect_timeout=args.connect_timeout,
                  idle=args.idle_timeout or None)
    return serve(loop, proxy, grace=args.grace)


if __name__ == "__main__":
    sys.exit(main())
