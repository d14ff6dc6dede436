"""Echo server on an asyncio Protocol, on asyncio's own loop or on a compiled one.

``--loop asyncio|uvloop|rloop`` picks the event loop: asyncio's (the standard library's
selector loop), uvloop's (libuv, in Cython) or rloop's (in Rust). Prints ``PORT <n>``
once listening on 127.0.0.1, then serves until killed. asyncio and uvloop set TCP_NODELAY
on TCP transports themselves; the server sets it too, so that every loop is alike.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import socket
from typing import cast

#: The loops this server (and the timer benchmark) can run on.
LOOPS = ("asyncio", "uvloop", "rloop")


def new_loop(name: str) -> asyncio.AbstractEventLoop:
    """A new event loop of kind *name* (one of LOOPS).

    Raises ValueError for another name and ImportError when its package is not installed.
    """
    if name not in LOOPS:
        raise ValueError(f"new_loop(): unknown loop {name!r}; known: {', '.join(LOOPS)}")
    if name == "asyncio":
        return asyncio.new_event_loop()
    # Imported by name: uvloop and rloop are optional (the `bench` extra).
    module = importlib.import_module(name)
    return cast(asyncio.AbstractEventLoop, module.new_event_loop())


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # a loop whose socket object is a read-only view
                pass

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        # rloop 0.5 closes the socket only when its transport is freed: break the
        # protocol <-> transport cycle now rather than at the next garbage collection.
        del self.transport

    def eof_received(self) -> None:
        # asyncio and uvloop close the transport when this returns None; rloop 0.5 does
        # not, so the server closes it itself, the same on every loop.
        self.transport.close()


async def serve(port: int) -> None:
    """Listen on 127.0.0.1:*port* and say so; the caller then runs the loop forever."""
    loop = asyncio.get_running_loop()
    # The listening socket is made here, the same way for every loop: rloop takes over
    # (detaches) the sockets it is given.
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", port))
    lsock.listen(4096)
    bound = lsock.getsockname()[1]
    await loop.create_server(Echo, sock=lsock, backlog=4096)
    print(f"PORT {bound} loop={type(loop).__module__}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--loop", choices=LOOPS, default="asyncio")
    args = parser.parse_args()
    loop = new_loop(args.loop)
    loop.run_until_complete(serve(args.port))
    # Not Server.serve_forever(): rloop 0.5's starts serving a second time, which stops
    # the listener. Running the loop is all serving needs on every loop.
    loop.run_forever()


if __name__ == "__main__":
    main()
