#!/usr/bin/env python3
"""examples/proxy.py's peer for benchmarks/http_bench.py: a TCP proxy on asyncio (or uvloop).

``python proxy_asyncio.py --to HOST:PORT [--uvloop]`` listens on 127.0.0.1 (a free
port, printed as ``listening on HOST:PORT``) and forwards each client to the server,
both ways, with asyncio Protocols (no streams, no tasks per connection): what a client
sends before its server connection is made is kept and sent once it is; back-pressure
uses the transports' flow control (a side that cannot write pauses the other side's
reading); either side closing closes the other once its buffer is written.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import cast


class Side(asyncio.Protocol):
    """One end; ``other`` is the opposite end (None until the server side exists)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.other: Side | None = None
        self.pending: list[bytes] = []  # what arrived for this side before it connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not derive from asyncio.Transport: no isinstance check.
        self.transport = cast(asyncio.Transport, transport)
        if self.pending:
            self.transport.write(b"".join(self.pending))
            self.pending = []

    def send(self, data: bytes) -> None:
        if self.transport is None:
            self.pending.append(data)
        else:
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        if self.other is not None:
            self.other.send(data)

    def pause_writing(self) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        other, self.other = self.other, None
        if other is not None:
            other.other = None
            if other.transport is not None:
                other.transport.close()  # writes what is buffered, then closes


class Backend(Side):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.other is None:  # the client left while this side was connecting
            transport.close()


class Client(Side):
    def __init__(self, server: tuple[str, int]) -> None:
        super().__init__()
        self.server = server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        backend = Backend()
        backend.other, self.other = self, backend
        loop = asyncio.get_running_loop()
        task = loop.create_task(loop.create_connection(lambda: backend, *self.server))
        task.add_done_callback(self.connected)

    def connected(self, task: asyncio.Task[object]) -> None:
        failed = task.cancelled() or task.exception() is not None
        if failed and self.transport is not None:
            self.transport.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="asyncio TCP proxy (benchmark peer)")
    parser.add_argument("--to", required=True, metavar="HOST:PORT")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    args = parser.parse_args()
    host, _, port = args.to.rpartition(":")
    server_addr = (host, int(port))
    loop: asyncio.AbstractEventLoop
    if args.uvloop:
        import uvloop

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    server = loop.run_until_complete(
        loop.create_server(lambda: Client(server_addr), "127.0.0.1", 0))
    name = server.sockets[0].getsockname()
    print(f"listening on {name[0]}:{name[1]}", flush=True)
    try:
        loop.run_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
