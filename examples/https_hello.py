#!/usr/bin/env python3
"""An HTTPS server on danga: TLS started on each connection with ``start_tls``.

Run it (make a certificate first, e.g. with the ``openssl`` CLI)::

    openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=localhost \\
        -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout key.pem -out cert.pem
    python examples/https_hello.py --cert cert.pem --key key.pem --port 8443
    curl --cacert cert.pem https://localhost:8443/bytes/1000000 -o /dev/null

It prints ``listening on HOST:PORT (backend NAME)`` once ready and exits 0 on SIGINT or
SIGTERM (responses in flight are finished first, ``--grace`` seconds at most).

Requests (HTTP/1.1, keep-alive, pipelining answered in order; GET and HEAD):

- ``/`` answers ``hello over TLSv1.3 (CIPHER)`` -- what the connection's ``tls``
  attribute (its ``ssl.SSLObject``) says;
- ``/bytes/N`` or ``/?size=N`` answers a body of N bytes: the bytes 0, 1, ..., 255
  repeated (:func:`body`), so a client can check every byte it got;
- anything else is a 404, a method other than GET or HEAD a 405.

What it shows:

- **TLS before the first byte.** Each connection calls ``start_tls(context,
  server_side=True, ...)`` in its constructor; from then on ``read()`` returns
  plaintext, ``write()`` takes plaintext, and ``event_read`` fires only when plaintext
  can be read (also when it is still buffered inside OpenSSL). Nothing here knows about
  ``SSLWantReadError``. (``Listener.bind(..., ssl=context)`` does the same for every
  accepted connection, with the default timeouts; this example sets its own.)
- **Back-pressure, on ciphertext.** A large body is written in 64 KiB pieces only while
  ``write_buf_size`` is under the high-water mark; a *callable* queued behind them writes
  the next pieces once the earlier ones reached the kernel, so a slow client
  (``curl --limit-rate``) holds at most about ``HIGH_WATER`` bytes in the server.
- **Timeouts.** ``--handshake-timeout`` closes a client that connects and never
  finishes the handshake (``tls_handshake_timeout``); ``--shutdown-timeout`` bounds how
  long a closing connection tries to deliver its ``close_notify``.
- ``--read-size`` sets the ``read()`` size (1 and 7 are legal, and slow): the tests run
  real clients against 1, 7 and 65,536 to show that no plaintext is left behind.
"""

from __future__ import annotations

import argparse
import re
import socket
import ssl
import sys
from collections.abc import Callable, Sequence
from functools import partial
from urllib.parse import parse_qs, urlsplit

from echo import serve

import danga

#: The longest request head accepted (request line and headers).
MAX_HEAD = 16 * 1024
#: The largest body a request may ask for.
MAX_BODY = 1 << 30
#: Keep writing body pieces while fewer than this many bytes are queued.
HIGH_WATER = 256 * 1024
#: One piece of a body.
PIECE = 64 * 1024
_PATTERN = bytes(range(256)) * (PIECE // 256 + 1)
_BYTES_PATH = re.compile(r"/bytes/(\d+)$")
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            431: "Request Header Fields Too Large", 505: "HTTP Version Not Supported"}


def body(offset: int, length: int) -> bytes:
    """The bytes at *offset* of every body this server sends (0..255 repeated);
    *length* at most :data:`PIECE`."""
    start = offset % 256
    return _PATTERN[start:start + length]


def wanted_size(target: str) -> int | None:
    """The body size a request target asks for (``/bytes/N`` or ``?size=N``), or None."""
    parts = urlsplit(target)
    m = _BYTES_PATH.match(parts.path)
    if m is not None:
        return int(m.group(1))
    sizes = parse_qs(parts.query).get("size")
    if sizes and sizes[0].isdigit():
        return int(sizes[0])
    return None


class HTTPSConnection(danga.Socket):
    """One client: reads requests, answers them in order, one at a time."""

    __slots__ = ("buf", "busy", "closing", "keep", "left", "offset", "read_size")

    def __init__(self, sock: socket.socket, *, loop: danga.Loop | None = None,
                 context: ssl.SSLContext | None = None, read_size: int = 65536,
                 handshake_timeout: float = 60.0, shutdown_timeout: float = 30.0) -> None:
        super().__init__(sock, loop=loop)
        if context is not None:  # None: a Listener(..., ssl=context) started TLS already
            self.start_tls(context, server_side=True, handshake_timeout=handshake_timeout,
                           shutdown_timeout=shutdown_timeout)
        self.read_size = read_size
        self.buf = b""
        self.busy = False  # a response is being sent: later requests wait
        self.closing = False  # shutting down: close after the response in flight
        self.keep = True
        self.left = 0  # body bytes not yet written
        self.offset = 0  # body bytes written so far
        self.watch_read(True)

    def finish(self) -> None:
        """Graceful shutdown (examples/echo.py's GracefulShutdown): the response in
        flight is sent whole, then the connection closes."""
        if self.busy:
            self.closing = True
        else:
            self.close("shutdown")

    def event_read(self) -> None:
        data = self.read(self.read_size)
        if data is None:  # the client's close_notify (or its TCP close)
            self.close("eof")
            return
        self.buf += data
        if len(self.buf) > MAX_HEAD and b"\r\n\r\n" not in self.buf:
            self.respond(431, keep=False)
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
            self.respond(400 if len(parts) != 3 else 505, keep=False)
            return
        method, target, version = parts
        connection = ""
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon:
                self.respond(400, keep=False)
                return
            if name.strip().lower() == "connection":
                connection = value.strip().lower()
        keep = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
        if method not in ("GET", "HEAD"):
            self.respond(405, keep, extra="Allow: GET, HEAD\r\n")
            return
        if target == "/":
            tls = self.tls
            text = f"hello over {tls.version()} ({tls.cipher()[0]})\n" if tls else "hello\n"
            self.respond(200, keep, text.encode(), head_only=method == "HEAD")
            return
        size = wanted_size(target)
        if size is None:
            self.respond(404, keep)
        elif size > MAX_BODY:
            self.respond(400, keep)
        else:
            self.busy, self.keep = True, keep
            self.write(self.head(200, size, "application/octet-stream", keep))
            self.offset, self.left = 0, size if method == "GET" else 0
            self.send_body()

    def send_body(self) -> None:
        """Write pieces while the queue is short; queue itself behind them to go on."""
        while self.left and self.write_buf_size < HIGH_WATER and not self.closed:
            n = min(PIECE, self.left)
            self.write(body(self.offset, n))
            self.offset += n
            self.left -= n
        if self.closed:
            return
        # A queued callable runs once everything before it has reached the kernel.
        self.write(self.send_body if self.left else self.done)

    @staticmethod
    def head(status: int, length: int, ctype: str, keep: bool, extra: str = "") -> bytes:
        return (f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
                f"Content-Length: {length}\r\nContent-Type: {ctype}\r\n{extra}"
                f"Connection: {'keep-alive' if keep else 'close'}\r\n\r\n").encode("latin-1")

    def respond(self, status: int, keep: bool, text: bytes | None = None, *,
                extra: str = "", head_only: bool = False) -> None:
        """A small response in one write, then :meth:`done`."""
        if text is None:
            text = f"{status} {_REASONS[status]}\n".encode()
        self.busy, self.keep = True, keep
        self.write(self.head(status, len(text), "text/plain", keep, extra)
                   + (b"" if head_only else text))
        self.write(self.done)

    def done(self) -> None:
        """The response has reached the kernel: close, or go on with the next request."""
        if not self.keep or self.closing:
            self.close("done")  # sends close_notify
            return
        self.busy = False
        self.watch_read(True)
        self.next_request()


def server_context(cert: str, key: str) -> ssl.SSLContext:
    """A server context for *cert* and *key* (PEM files): TLS 1.2 or later, the
    standard library's defaults otherwise (danga refuses client renegotiation).

    Raises OSError or ssl.SSLError when the files cannot be loaded."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx


def make_factory(context: ssl.SSLContext, read_size: int = 65536,
                 handshake_timeout: float = 60.0,
                 shutdown_timeout: float = 30.0) -> Callable[..., HTTPSConnection]:
    """The listener's factory: an :class:`HTTPSConnection` with these settings."""
    return partial(HTTPSConnection, context=context, read_size=read_size,
                   handshake_timeout=handshake_timeout, shutdown_timeout=shutdown_timeout)


def tls_server_arguments(description: str, argv: Sequence[str] | None
                         ) -> tuple[argparse.Namespace, ssl.SSLContext]:
    """The command line every TLS example server takes (certificate, address, backend,
    read size, TLS timeouts, grace), parsed, and the server context it names (exits
    with a usage error when the files cannot be loaded)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--cert", required=True, help="certificate chain (PEM)")
    parser.add_argument("--key", required=True, help="private key (PEM)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port (0: pick a free one)")
    parser.add_argument("--backend", default=None,
                        help="danga backend (default: DANGA_BACKEND, else automatic)")
    parser.add_argument("--read-size", type=int, default=65536,
                        help="bytes asked of each read() (65536)")
    parser.add_argument("--handshake-timeout", type=float, default=60.0,
                        help="close a client whose handshake takes longer (60s)")
    parser.add_argument("--shutdown-timeout", type=float, default=30.0,
                        help="give up delivering close_notify after this long (30s)")
    parser.add_argument("--grace", type=float, default=10.0,
                        help="on SIGTERM/SIGINT, wait this long for replies (10s)")
    args = parser.parse_args(argv)
    if args.read_size < 1:
        parser.error("--read-size must be at least 1")
    try:
        ctx = server_context(args.cert, args.key)
    except (OSError, ssl.SSLError) as exc:
        parser.error(f"cannot load --cert/--key: {exc}")
    return args, ctx


def main(argv: Sequence[str] | None = None) -> int:
    args, ctx = tls_server_arguments("danga HTTPS server", argv)

    loop = danga.Loop(args.backend)
    server = danga.Listener.bind(
        (args.host, args.port), loop=loop,
        factory=make_factory(ctx, args.read_size, args.handshake_timeout,
                             args.shutdown_timeout))
    return serve(loop, server, grace=args.grace)


if __name__ == "__main__":
    sys.exit(main())
