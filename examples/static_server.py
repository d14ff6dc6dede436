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

- **The file is never read into Python.** The headers are written, then
  ``write_file(f, start, length)`` queues the file region behind them: danga sends it
  with ``os.sendfile`` in 128 KiB steps (read-and-send where sendfile cannot be used).
- **Cork around headers and body** (``tcp_cork``), uncorked by the callable written
  after the region: it runs once the whole file has reached the kernel, and closes the
  file and answers the next request (Perlbal's ``post_sendfile_cb``).
- **Idle connections are closed** with ``max_idle_time`` (Perlbal's name).
"""

from __future__ import annotations

import argparse
import mimetypes
import os
import re
import socket
import stat
import sys
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

from echo import serve

import danga

#: The most a request head may take (request line and headers).
MAX_HEAD = 16 * 1024
_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")
_REASONS = {200: "OK", 206: "Partial Content", 400: "Bad Request", 404: "Not Found",
            405: "Method Not Allowed", 416: "Range Not Satisfiable",
            431: "Request Header Fields Too Large", 505: "HTTP Version Not Supported"}


class HTTPConnection(danga.Socket):
    """One client: reads requests, answers them in order, one at a time."""

    __slots__ = ("buf", "busy", "closing", "root")

    max_idle_time: float | None = 60.0

    def __init__(self, sock: socket.socket, *, loop: danga.Loop | None = None,
                 root: str = ".") -> None:
        super().__init__(sock, loop=loop)
        self.root = root
        self.buf = b""
        self.busy = False  # a response is still being sent: later requests wait
        self.closing = False  # shutting down: close after the response in flight
        self.watch_read(True)

    def finish(self) -> None:
        """Graceful shutdown (examples/echo.py's GracefulShutdown): the response in
        flight is sent whole, then the connection closes."""
        if self.busy:
            self.closing = True
        else:
            self.close("shutdown")

    def event_read(self) -> None:
        data = self.read(65536)
        if data is None:
            self.close("eof")
            return
        self.buf += data
        if len(self.buf) > MAX_HEAD and b"\r\n\r\n" not in self.buf:
            self.respond_error(431, keep=False)
            return
        if self.busy and len(self.buf) > MAX_HEAD:
            self.watch_read(False)  # pipelining faster than we answer: wait
        self.next_request()

    def next_request(self) -> None:
        while not self.busy and not self.closed:
            head, sep, rest = self.buf.partition(b"\r\n\r\n")
            if not sep:
                return
            self.buf = rest
            self.handle(head.decode("latin-1"))

    def handle(self, head: str) -> None:
        lines = head.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            self.respond_error(400 if len(parts) != 3 else 505, keep=False)
            return
        method, target, version = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon:
                self.respond_error(400, keep=False)
                return
            headers[name.strip().lower()] = value.strip()
        connection = headers.get("connection", "").lower()
        keep = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
        if method not in ("GET", "HEAD"):
            self.respond_error(405, keep, extra="Allow: GET, HEAD\r\n")
            return
        path = self.resolve(target)
        if path is None:
            self.respond_error(404, keep)
            return
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed by the callable after the body
        except OSError:
            self.respond_error(404, keep)
            return
        size = os.fstat(f.fileno()).st_size
        status, start, length = 200, 0, size
        extra = ""
        wanted = headers.get("range")
        if wanted is not None:
            span = parse_range(wanted, size)
            if span is None:
                f.close()
                self.respond_error(416, keep, extra=f"Content-Range: bytes */{size}\r\n")
                return
            if span != (0, size):
                status, (start, length) = 206, (span[0], span[1] - span[0])
                extra = f"Content-Range: bytes {start}-{start + length - 1}/{size}\r\n"
        ctype = mimetypes.guess_type(path)[0] or "application/octet-stream"
        self.busy = True
        self.tcp_cork(True)
        self.write(self.head(status, length, ctype, keep, extra))
        if method == "GET":
            self.write_file(f, start, length)
        self.write(lambda: self.done(f, keep))

    def resolve(self, target: str) -> str | None:
        """The file under the root that *target* names, or None (also for a path that
        would leave the root, through ``..`` or a symlink)."""
        raw = unquote(urlsplit(target).path)
        if not raw.startswith("/") or "\0" in raw:
            return None
        root = os.path.realpath(self.root)
        path = os.path.realpath(os.path.join(root, raw.lstrip("/")))
        if os.path.commonpath([root, path]) != root:
            return None
        try:
            st = os.stat(path)
        except OSError:
            return None
        return path if stat.S_ISREG(st.st_mode) else None

    @staticmethod
    def head(status: int, length: int, ctype: str, keep: bool, extra: str = "") -> bytes:
        return (f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
                f"Content-Length: {length}\r\nContent-Type: {ctype}\r\n"
                f"Accept-Ranges: bytes\r\n{extra}"
                f"Connection: {'keep-alive' if keep else 'close'}\r\n\r\n").encode("latin-1")

    def respond_error(self, status: int, keep: bool, extra: str = "") -> None:
        body = f"{status} {_REASONS[status]}\n".encode()
        self.busy = True
        self.write(self.head(status, len(body), "text/plain", keep, extra) + body)
        self.write(lambda: self.done(None, keep))

    def done(self, f: Any, keep: bool) -> None:
        """The response has reached the kernel: uncork, close the file, go on."""
        self.tcp_cork(False)
        if f is not None:
            f.close()
        if not keep or self.closing:
            self.close("done")
            return
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
    """The listening socket: one :class:`HTTPConnection` per accepted connection."""

    __slots__ = ("idle", "root")

    def __init__(self, sock: socket.socket, *, loop: danga.Loop | None = None,
                 root: str = ".", idle: float | None = 60.0) -> None:
        super().__init__(sock, loop=loop)
        self.root = root
        self.idle = idle

    def on_accept(self, conn: socket.socket, addr: Any) -> None:
        client = HTTPConnection(conn, loop=self.loop, root=self.root)
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
    parser.add_argument("--grace", type=float, default=10.0,
                        help="on SIGTERM/SIGINT, wait this long for responses (10s)")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.root):
        parser.error(f"--root {args.root!r} is not a directory")

    loop = danga.Loop(args.backend)
    server = StaticServer(socket.create_server((args.host, args.port)), loop=loop,
                          root=args.root, idle=args.idle_timeout or None)
    return serve(loop, server, grace=args.grace)


if __name__ == "__main__":
    sys.exit(main())
