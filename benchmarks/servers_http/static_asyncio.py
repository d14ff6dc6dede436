#!/usr/bin/env python3
"""examples/static_server.py's peer for benchmarks/http_bench.py, on asyncio (or uvloop).

``python static_asyncio.py --root DIR [--uvloop]`` serves GET and HEAD of the regular
files under DIR on 127.0.0.1 (a free port, printed as ``listening on HOST:PORT``),
with keep-alive, 404 and the same path checks as the danga server (``realpath``, no
leaving the root). Ranges are not served: the benchmark does not ask for them.

Each response is corked (TCP_CORK) around the head and the body, like the danga
server, and the body goes out with ``loop.sendfile``: on asyncio's own loops that is
``os.sendfile``; uvloop does not implement ``loop.sendfile`` (it raises
NotImplementedError), so there the file is read and written (:func:`send_file`), as
asyncio's own fallback does.
"""

from __future__ import annotations

import argparse
import asyncio
import mimetypes
import os
import socket
import stat
from typing import BinaryIO
from urllib.parse import unquote, urlsplit


def resolve(root: str, target: str) -> str | None:
    """The regular file under *root* that *target* names, or None."""
    raw = unquote(urlsplit(target).path)
    if not raw.startswith("/") or "\0" in raw:
        return None
    path = os.path.realpath(os.path.join(root, raw.lstrip("/")))
    if os.path.commonpath([root, path]) != root:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return path if stat.S_ISREG(st.st_mode) else None


CHUNK = 256 * 1024


async def send_file(loop: asyncio.AbstractEventLoop, writer: asyncio.StreamWriter,
                    f: BinaryIO, size: int) -> None:
    """*size* bytes of *f* to *writer*: ``loop.sendfile``, or read-and-write on a loop
    that lacks it (uvloop raises NotImplementedError before sending anything)."""
    try:
        await loop.sendfile(writer.transport, f, 0, size)
        return
    except NotImplementedError:
        pass
    # The file is in the page cache here: read it on the loop thread (asyncio's own
    # fallback reads in a thread pool, which would only cost more).
    left = size
    while left:
        data = f.read(min(CHUNK, left))
        if not data:
            raise RuntimeError("file truncated")
        writer.write(data)
        left -= len(data)
        await writer.drain()


def head(status: str, length: int, ctype: str, keep: bool) -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Length: {length}\r\nContent-Type: {ctype}\r\n"
            f"Accept-Ranges: none\r\nConnection: {'keep-alive' if keep else 'close'}"
            "\r\n\r\n").encode("latin-1")


async def serve(root: str, reader: asyncio.StreamReader,
                writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    try:
        await answer(root, reader, writer, sock)
    except ConnectionError:
        pass  # wrk stops in the middle of responses
    finally:
        writer.close()


async def answer(root: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 sock: socket.socket) -> None:
    """Requests on one connection, answered in order, until it is closed."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError):
            return
        lines = raw.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            writer.write(head("400 Bad Request", 0, "text/plain", False))
            return
        method, target, version = parts
        connection = ""
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "connection":
                connection = value.strip().lower()
        keep = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
        path = resolve(root, target) if method in ("GET", "HEAD") else None
        if path is None:
            body = b"404 Not Found\n"
            writer.write(head("404 Not Found", len(body), "text/plain", keep) + body)
        else:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                ctype = mimetypes.guess_type(path)[0] or "application/octet-stream"
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
                writer.write(head("200 OK", size, ctype, keep))
                if method == "GET" and size:
                    await send_file(loop, writer, f, size)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)
        await writer.drain()
        if not keep:
            return


def main() -> None:
    parser = argparse.ArgumentParser(description="asyncio static file server (benchmark peer)")
    parser.add_argument("--root", required=True)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    args = parser.parse_args()
    root = os.path.realpath(args.root)
    loop: asyncio.AbstractEventLoop
    if args.uvloop:
        import uvloop

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await serve(root, reader, writer)

    server = loop.run_until_complete(asyncio.start_server(client, "127.0.0.1", 0))
    host, port = server.sockets[0].getsockname()[:2]
    print(f"listening on {host}:{port}", flush=True)
    try:
        loop.run_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
