#!/usr/bin/env python3
"""A minimal HTTP/1.1 static file server on danga: files go out with ``write_file``.

Run it::

    python examples/static_server.py --root ./public            # 127.0.0.1, a free port
    python examples/static_server.py --root . --port 8000 --idle-timeout 30

It prints ``listening on HOST:PORT (backend NAME)`` once ready; on SIGINT or SIGTERM
it stops accepting and exits 0 once the responses in flight are sent (``--grace``
seconds at most). It serves GET and HEAD of regular files under ``--root`` (keep-alive,
pipelining answered in order, one ``Range: bytes=a-b`` range, 404, 405, 416); a path
that leaves the root (``..``, a symlink pointing out) is answered 404.

What it shows:

- **Large files are never read into Python.** The head is written, then
  ``write_file(fd, start, length)`` queues the file region behind it: danga sends it
  with ``os.sendfile``, up to 2 MiB per writable event (read-and-send where sendfile
  cannot be used).
- **Cork around head and body** (``tcp_cork``), only where they leave in two system
  calls (a large file); the callable written after the region uncorks once the whole
  file has reached the kernel, and answers the next request (Perlbal's
  ``post_sendfile_cb``).
- **An open-file cache** (examples/file_cache.py, nginx's ``open_file_cache``): a path
  is resolved, opened and ``stat``-ed once, then checked again every ``--cache-valid``
  seconds (1); a change on disk is served at most that late. Files of at most
  ``--small-file-max`` bytes (16 KiB) are kept in memory, and their response -- head
  and bytes -- goes out with one ``write()``, one ``send()``; nginx does not keep file
  contents, this server does for small files only (``--small-file-max 0``: every body
  goes through ``write_file``).
- **Idle connections are closed** with ``max_idle_time`` (Perlbal's name).
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import sys
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from echo import serve
from file_cache import FileCache, OpenFile

import danga

#: The most a request head may take (request line and headers).
MAX_HEAD = 16 * 1024
_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")
_REASONS = {200: "OK", 206: "Partial Content", 400: "Bad Request", 404: "Not Found",
            405: "Method Not Allowed", 416: "Range Not Satisfiable",
            431: "Request Header Fields Too Large", 505: "HTTP Version Not Supported"}


class HTTPConnection(danga.Socket):
    """One client: reads requests, answers them in order, one at a time."""

    __slots__ = ("buf", "busy", "cache", "closing", "entry", "keep")

    max_idle_time: float | None = 60.0
    # nginx's default sendfile_max_chunk (danga's default is Perlbal's 128 KiB step): a
    # 1 MiB file goes in one sendfile when the client keeps up.
    sendfile_max_chunk = 2 * 1024 * 1024

    def __init__(self, sock: socket.socket, *, loop: danga.Loop | None = None,
                 cache: FileCache) -> None:
        super().__init__(sock, loop=loop)
        self.cache = cache
        self.buf = b""
        self.busy = False  # a response is still being sent: later requests wait
        self.closing = False  # shutting down: close after the response in flight
        self.keep = True  # the response in flight keeps the connection open
        self.entry: OpenFile | None = None  # the cached file it sends from (its fd)
        self.watch_read(True)

    def finish(self) -> None:
        """Graceful shutdown (examples/echo.py's GracefulShutdown): the response in
        flight is sent whole, then the connection closes."""
        if self.busy:
            self.closing = True
        else:
            self.close("shutdown")

    def close(self, reason: str | None = None) -> None:
        super().close(reason)
        entry = self.entry
        if entry is not None:  # the file region was dropped with the write queue
            self.entry = None
            self.cache.release(entry)

    def event_read(self) -> None:
        data = self.read(65536)
        if data is None:
            self.close("eof")
            return
        buf = self.buf + data if self.buf else data
        self.buf = buf
        if len(buf) > MAX_HEAD and b"\r\n\r\n" not in buf:
            self.respond_error(431, keep=False)
            return
        if self.busy and len(buf) > MAX_HEAD:
            self.watch_read(False)  # pipelining faster than we answer: wait
        self.next_request()

    def next_request(self) -> None:
        while not self.busy and not self.closed:
            head, sep, rest = self.buf.partition(b"\r\n\r\n")
            if not sep:
                return
            self.buf = rest
            self.handle(head)

    def handle(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            self.respond_error(400 if len(parts) != 3 else 505, keep=False)
            return
        method, target, version = parts
        connection = b""
        wanted = None
        for line in lines[1:]:  # only the two headers this server acts on
            name, colon, value = line.partition(b":")
            if not colon:
                self.respond_error(400, keep=False)
                return
            name = name.strip().lower()
            if name == b"connection":
                connection = value.strip().lower()
            elif name == b"range":
                wanted = value.strip().decode("latin-1")
        keep = (connection != b"close" if version == b"HTTP/1.1"
                else connection == b"keep-alive")
        if method != b"GET" and method != b"HEAD":
            self.respond_error(405, keep, extra="Allow: GET, HEAD\r\n")
            return
        path = target.decode("latin-1")
        if "?" in path or "#" in path or not path.startswith("/"):
            path = urlsplit(path).path
        entry = self.cache.get(path)
        if entry is None:
            self.respond_error(404, keep)
            return
        if wanted is not None:
            self.respond_range(entry, method, wanted, keep)
            return
        first = entry.extra.get((method, keep))
        if first is None:  # the head (and a small file's bytes), built once per entry
            first = self.head(200, entry.size, entry.ctype, keep)
            if method == b"GET" and entry.data is not None:
                first += entry.data
            entry.extra[(method, keep)] = first
        if method == b"HEAD" or entry.data is not None:
            self.respond(first, keep)  # one write(): one send() when the kernel takes it
        else:
            self.respond_file(first, entry, 0, entry.size, keep)

    def respond_range(self, entry: OpenFile, method: bytes, wanted: str, keep: bool) -> None:
        size = entry.size
        span = parse_range(wanted, size)
        if span is None:
            self.respond_error(416, keep, extra=f"Content-Range: bytes */{size}\r\n")
            return
        start, end = span
        if span == (0, size):
            head = self.head(200, size, entry.ctype, keep)
        else:
            head = self.head(206, end - start, entry.ctype, keep,
                             f"Content-Range: bytes {start}-{end - 1}/{size}\r\n")
        if method == b"HEAD":
            self.respond(head, keep)
        elif entry.data is not None:
            self.respond(head + entry.data[start:end], keep)
        else:
            self.respond_file(head, entry, start, end - start, keep)

    def respond(self, data: bytes, keep: bool) -> None:
        """A response that is all in *data*: the next request is read at once if the
        kernel took it all, else once it has (a callable queued behind it)."""
        self.keep = keep
        if self.write(data):
            self.sent()
        else:
            self.busy = True
            self.write(self.sent)

    def respond_file(self, head: bytes, entry: OpenFile, start: int, length: int,
                     keep: bool) -> None:
        """*head*, then *length* bytes of the cached file from *start* with
        ``write_file`` (``os.sendfile``), corked so that the head and the first bytes
        leave in one segment; the callable behind them uncorks."""
        self.keep = keep
        self.entry = entry
        fd = self.cache.acquire(entry)
        self.tcp_cork(True)
        self.write(head)
        if self.write_file(fd, start, length):
            self.sent()  # all in the kernel already (the usual case for a fast client)
        else:
            self.busy = True
            self.write(self.sent)

    @staticmethod
    def head(status: int, length: int, ctype: str, keep: bool, extra: str = "") -> bytes:
        return (f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
                f"Content-Length: {length}\r\nContent-Type: {ctype}\r\n"
                f"Accept-Ranges: bytes\r\n{extra}"
                f"Connection: {'keep-alive' if keep else 'close'}\r\n\r\n").encode("latin-1")

    def respond_error(self, status: int, keep: bool, extra: str = "") -> None:
        body = f"{status} {_REASONS[status]}\n".encode()
        self.respond(self.head(status, len(body), "text/plain", keep, extra) + body, keep)

    def sent(self) -> None:
        """The response has reached the kernel: uncork, let go of the file, go on."""
        entry = self.entry
        if entry is not None:
            self.tcp_cork(False)
            self.entry = None
            self.cache.release(entry)
        if not self.keep or self.closing:
            self.close("done")
            return
        if self.busy:
            self.busy = False
            self.watch_read(True)
            self.next_request()


def parse_range(value: str, size: int) -> tuple[int, int] | None:
    """``bytes=a-b`` as (start, end exclusive); (0, size) for what is ignored (several
    ranges, another unit); None when unsatisfiable."""
    m = _RANGE.match(value.strip())
    if m is None:
        return (0, size)
    first, last = m.groups()
    if not first:
        if not last:
            return (0, size)
        n = int(last)
        return (max(0, size - n), size) if n else None
    start = int(first)
    end = min(int(last) + 1, size) if last else size
    if start >= size or end <= start:
        return None
    return (start, end)


class StaticServer(danga.Listener):
    """The listening socket: one :class:`HTTPConnection` per accepted connection, all
    sharing one :class:`FileCache` of *root*."""

    __slots__ = ("cache", "idle")

    def __init__(self, sock: socket.socket, *, loop: danga.Loop | None = None,
                 root: str = ".", idle: float | None = 60.0, cache_valid: float = 1.0,
                 small_file_max: int = 16 * 1024) -> None:
        super().__init__(sock, loop=loop)
        self.cache = FileCache(root, valid=cache_valid, small_max=small_file_max)
        self.idle = idle

    def on_accept(self, conn: socket.socket, addr: Any) -> None:
        client = HTTPConnection(conn, loop=self.loop, cache=self.cache)
        if self.idle != HTTPConnection.max_idle_time:
            client.set_idle_timeout(self.idle)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="danga static file server")
    parser.add_argument("--root", default=".", help="directory to serve (.)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port (0: pick a free one)")
    parser.add_argument("--backend", default=None,
                        help="danga backend (default: DANGA_BACKEND, else automatic)")
    parser.add_argument("--idle-timeout", type=float, default=60.0,
                        help="close a connection idle this many seconds (60; 0: never)")
    parser.add_argument("--cache-valid", type=float, default=1.0,
                        help="check a cached file on disk again after this many seconds "
                             "(1; 0: on every request)")
    parser.add_argument("--small-file-max", type=int, default=16 * 1024,
                        help="keep files up to this many bytes in memory (16384; 0: none)")
    parser.add_argument("--grace", type=float, default=10.0,
                        help="on SIGTERM/SIGINT, wait this long for responses (10s)")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.root):
        parser.error(f"--root {args.root!r} is not a directory")
    if args.cache_valid < 0 or args.small_file_max < 0:
        parser.error("--cache-valid and --small-file-max must be >= 0")

    loop = danga.Loop(args.backend)
    server = StaticServer(socket.create_server((args.host, args.port)), loop=loop,
                          root=args.root, idle=args.idle_timeout or None,
                          cache_valid=args.cache_valid, small_file_max=args.small_file_max)
    return serve(loop, server, grace=args.grace)


if __name__ == "__main__":
    sys.exit(main())
