"""TLS echo server for benchmarks/tls_bench.py: danga, asyncio or uvloop, one context.

``--impl danga`` is danga.bench's echo Socket (``danga/bench/servers/danga_echo.py``)
behind ``danga.Listener(..., ssl=context)``; ``--impl asyncio|uvloop`` is danga.bench's
asyncio Protocol (``asyncio_echo.py``) behind ``loop.create_server(..., ssl=context)``.
Every server gets the same context: the certificate and key given, TLS 1.3 only, no
session tickets (no resumption). Prints ``PORT <n>`` once listening on 127.0.0.1, then
serves until killed.
"""

from __future__ import annotations

import argparse
import socket
import ssl

from danga.bench.servers import asyncio_echo, danga_echo


def context(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.num_tickets = 0  # resumption off: every connection is a full handshake
    return ctx


def listening_socket(port: int) -> socket.socket:
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", port))
    lsock.listen(4096)
    return lsock


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--impl", choices=("danga", *asyncio_echo.LOOPS), default="danga")
    parser.add_argument("--backend", default=None, help="danga's backend")
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    ctx = context(args.cert, args.key)
    lsock = listening_socket(args.port)
    port = lsock.getsockname()[1]
    if args.impl == "danga":
        import danga

        loop = danga.Loop(args.backend)
        danga.Listener(lsock, loop=loop, factory=danga_echo.accept, ssl=ctx)
        print(f"PORT {port} danga backend={loop.backend.name}", flush=True)
        loop.run()
        return
    aloop = asyncio_echo.new_loop(args.impl)
    aloop.run_until_complete(aloop.create_server(asyncio_echo.Echo, sock=lsock, ssl=ctx,
                                                 backlog=4096))
    print(f"PORT {port} {args.impl}", flush=True)
    aloop.run_forever()


if __name__ == "__main__":
    main()
