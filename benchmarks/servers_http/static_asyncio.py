#!/usr/bin/env python3
"""examples/static_server.py's peer for benchmarks/http_bench.py, on asyncio (or uvloop).

``python static_asyncio.py --root DIR [--uvloop]`` serves GET and HEAD of the regular
files under DIR on 127.0.0.1 (a free port, printed as ``listening on HOST:PORT``),
with keep-alive and 404. Ranges are not served: the benchmark does not ask for them.

It is the danga server's algorithm on asyncio, so that the comparison is between the
loops: the same open-file cache (examples/file_cache.py: a path resolved, opened and
checked once per second; files up to 16 KiB kept in memory and answered, head and
bytes, with one ``write``), and for larger files a head corked (TCP_CORK) together with
a body sent by ``loop.sendfile``: on asyncio's own loops that is ``os.sendfile``; uvloop
does not implement ``loop.sendfile`` (it raises NotImplementedError), so there the file
is read and written (:func:`send_file`), as asyncio's own fallback does.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
from file_cache import FileCache, OpenFile  # examples/ is not a package

CHUNK = 256 * 1024


async def send_file(loop: asyncio.AbstractEventLoop, writer: asyncio.StreamWriter,
                    fd: int, size: int) -> None:
    """*size* bytes of the file open at *fd* to *writer*: ``loop.sendfile``, or
    read-and-write on a loop that lacks it (uvloop raises NotImplementedError before
    sending anything)."""
    with open(fd, "rb", buffering=0, closefd=False) as f:  # the cache keeps the fd
        try:
            await loop.sendfile(writer.transport, f, 0, size)
            return
        except NotImplementedError:
            pass
    # The file is in the page cache here: read it on the loop thread (asyncio's own
    # fallback reads in a thread pool, which would only cost more).
    offset = 0
    while offset < size:
        data = os.pread(fd, min(CHUNK, size - offset), offset)
        if not data:
            raise RuntimeError("file truncated")
        writer.write(data)
        offset += len(data)
        await writer.drain()


def head(status: str, length: int, ctype: str, keep: bool) -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Length: {length}\r\nContent-Type: {ctype}\r\n"
            f"Accept-Ranges: none\r\nConnection: {'keep-alive' if keep else 'close'}"
            "\r\n\r\n").encode("latin-1")


async def serve(cache: FileCache, reader: asyncio.StreamReader,
                writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    try:
        await answer(cache, reader, writer, sock)
    except ConnectionError:
        pass  # wrk stops in the middle of responses
    finally:
        writer.close()


async def answer(cache: FileCache, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, sock: socket.socket) -> None:
    """Requests on one connection, answered in order, until it is closed."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError):
            return
        lines = raw[:-4].split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3:
            writer.write(head("400 Bad Request", 0, "text/plain", False))
            return
        method, target, version = parts
        connection = b""
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"connection":
                connection = value.strip().lower()
        keep = (connection != b"close" if version == b"HTTP/1.1"
                else connection == b"keep-alive")
        entry = (cache.get(target.decode("latin-1").partition("?")[0])
                 if method in (b"GET", b"HEAD") else None)
        if entry is None:
            body = b"404 Not Found\n"
            writer.write(head("404 Not Found", len(body), "text/plain", keep) + body)
        elif method == b"HEAD" or entry.data is not None:
            writer.write(first(entry, method, keep))
        else:
            await send_large(loop, cache, entry, writer, sock, keep)
        await writer.drain()
        if not keep:
            return


def first(entry: OpenFile, method: bytes, keep: bool) -> bytes:
    """The head (and a small file's bytes), built once per cache entry."""
    got = entry.extra.get((method, keep))
    if got is None:
        got = head("200 OK", entry.size, entry.ctype, keep)
        if method == b"GET" and entry.data is not None:
            got += entry.data
        entry.extra[(method, keep)] = got
    return got


async def send_large(loop: asyncio.AbstractEventLoop, cache: FileCache, entry: OpenFile,
                     writer: asyncio.StreamWriter, sock: socket.socket, keep: bool) -> None:
    fd = cache.acquire(entry)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
        writer.write(first(entry, b"GET", keep))
        if entry.size:
            await send_file(loop, writer, fd, entry.size)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)
    finally:
        cache.release(entry)


def main() -> None:
    parser = argparse.ArgumentParser(description="asyncio static file server (benchmark peer)")
    parser.add_argument("--root", required=True)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    args = parser.parse_args()
    cache = FileCache(args.root)
    loop: asyncio.AbstractEventLoop
    if args.uvloop:
        import uvloop

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await serve(cache, reader, writer)

    server = loop.run_until_complete(asyncio.start_server(client, "127.0.0.1", 0))
    host, port = server.sockets[0].getsockname()[:2]
    print(f"listening on {host}:{port}", flush=True)
    try:
        loop.run_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
