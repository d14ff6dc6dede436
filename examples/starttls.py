#!/usr/bin/env python3
"""STARTTLS on danga: an SMTP-style line protocol that turns on TLS in mid-connection.

Run it::

    python examples/starttls.py --cert cert.pem --key key.pem --port 2525
    openssl s_client -starttls smtp -connect 127.0.0.1:2525 -CAfile cert.pem -quiet

or with Python's ``smtplib``: ``s = smtplib.SMTP("127.0.0.1", 2525); s.starttls(context=
ctx); s.noop(); s.quit()``. It prints ``listening on HOST:PORT (backend NAME)`` once ready
and exits 0 on SIGINT or SIGTERM.

The dialogue (one command per line, CRLF or LF; replies are SMTP's)::

    S: 220 danga ESMTP ready
    C: EHLO client.example          S: 250-danga Hello ... / 250-PIPELINING / 250 STARTTLS
    C: STARTTLS                     S: 220 2.0.0 Ready to start TLS
       ... the TLS handshake, then the same protocol over TLS ...
    C: EHLO client.example          S: 250-danga Hello ... / 250-PIPELINING / 250 8BITMIME
    C: NOOP                         S: 250 2.0.0 OK
    C: QUIT                         S: 221 2.0.0 Bye   (and close_notify)

``HELO`` and ``RSET`` are answered too; any other command gets ``502``. Nothing but
EHLO, HELO, STARTTLS, NOOP and QUIT is accepted before TLS (``530 Must issue a STARTTLS
command first``), so a client cannot be talked into sending anything in plaintext.

What it shows:

- **One command per event, the rest pushed back.** ``event_read`` reads, runs the first
  complete line and hands the bytes after it back with ``push_back_read``: danga
  re-fires ``event_read`` for them (Danga::Socket's idiom for line protocols).
- **STARTTLS without plaintext injection** (CVE-2011-0411). A client may send bytes
  right after ``STARTTLS`` without waiting for the reply, hoping that the server reads
  them as if they had come over TLS. Here they sit in the push-back buffer, and
  ``start_tls`` refuses to start with plaintext still buffered (``ValueError``): after
  its ``220`` the server answers ``554 5.5.1 Error: plaintext after STARTTLS refused``
  and closes the connection with the reason ``starttls_pipelined``. Bytes that were still in the
  kernel when TLS started are read as TLS records, fail the handshake and close the
  connection (``on_tls_error``): they are never run as commands either.
- **A lingering close** after a final reply (QUIT, the 554, a shutdown): half-close,
  then read and drop the client's input until it closes, so that unread input does not
  make the kernel reset the connection and destroy the reply (``reply``).
- **Timeouts**: ``--handshake-timeout`` closes a client that says STARTTLS and then never
  finishes the handshake; ``--shutdown-timeout`` bounds the ``close_notify`` delivery.
"""

from __future__ import annotations

import socket
import ssl
import sys
from collections.abc import Sequence
from typing import Any

from echo import serve
from https_hello import tls_server_arguments

import danga

#: The longest command line accepted, in bytes.
MAX_LINE = 1000
#: How long a connection that is closing waits for its client to close after the last
#: reply (a lingering close: see ``SMTPConnection.reply``).
LINGER = 2.0
#: What may be said before STARTTLS.
_BEFORE_TLS = {b"EHLO", b"HELO", b"STARTTLS", b"NOOP", b"QUIT"}


class SMTPConnection(danga.Socket):
    """One client: the greeting, then one command per line."""

    __slots__ = ("buf", "closing", "context", "handshake_timeout", "linger", "read_size",
                 "shutdown_timeout")

    def __init__(self, sock: socket.socket, *, loop: danga.Loop | None = None,
                 context: ssl.SSLContext, read_size: int = 65536,
                 handshake_timeout: float = 60.0, shutdown_timeout: float = 30.0) -> None:
        super().__init__(sock, loop=loop)
        self.context = context
        self.read_size = read_size
        self.handshake_timeout = handshake_timeout
        self.shutdown_timeout = shutdown_timeout
        self.buf = b""  # a line not complete yet
        self.closing: str | None = None  # the close reason, once closing
        self.linger: danga.Timer | None = None
        self.write(b"220 danga ESMTP ready\r\n")
        self.watch_read(True)

    def finish(self) -> None:
        """Graceful shutdown (examples/echo.py's GracefulShutdown)."""
        self.reply(b"421 4.3.2 Shutting down", close="shutdown")

    def event_read(self) -> None:
        data = self.read(self.read_size)
        if data is None:
            self.close(self.closing or "eof")
            return
        if self.closing:  # input after the last reply is read and dropped
            return
        buf = self.buf + data
        line, sep, rest = buf.partition(b"\n")
        if not sep:
            if len(buf) > MAX_LINE:
                self.reply(b"500 5.5.0 Line too long", close="line_too_long")
            else:
                self.buf = buf
            return
        self.buf = b""
        if rest:  # danga calls event_read again for them, after this command
            self.push_back_read(rest)
        self.command(line.rstrip(b"\r"))

    def command(self, line: bytes) -> None:
        verb, _, arg = line.partition(b" ")
        verb = verb.upper()
        if self.tls is None and verb not in _BEFORE_TLS:
            self.reply(b"530 5.7.0 Must issue a STARTTLS command first")
        elif verb == b"EHLO":
            lines = [b"250-danga Hello " + (arg or b"there"), b"250-PIPELINING"]
            lines.append(b"250 STARTTLS" if self.tls is None else b"250 8BITMIME")
            self.reply(b"\r\n".join(lines))
        elif verb == b"HELO":
            self.reply(b"250 danga")
        elif verb == b"STARTTLS":
            self.starttls()
        elif verb in (b"NOOP", b"RSET"):
            self.reply(b"250 2.0.0 OK")
        elif verb == b"QUIT":
            self.reply(b"221 2.0.0 Bye", close="quit")
        else:
            self.reply(b"502 5.5.2 Error: command not recognized")

    def starttls(self) -> None:
        if self.tls is not None:
            self.reply(b"554 5.5.1 Error: TLS already active")
            return
        self.reply(b"220 2.0.0 Ready to start TLS")
        try:
            # Raises ValueError while plaintext that came after the command is still
            # buffered (pushed back): it must never be read as if it came over TLS.
            self.start_tls(self.context, server_side=True,
                           handshake_timeout=self.handshake_timeout,
                           shutdown_timeout=self.shutdown_timeout)
        except ValueError:
            self.reply(b"554 5.5.1 Error: plaintext after STARTTLS refused",
                       close="starttls_pipelined")

    def reply(self, text: bytes, close: str | None = None) -> None:
        """Write one reply line; with *close*, close once it has been sent.

        The close lingers: closing a socket with unread input makes the kernel reset
        the connection, and a reset can destroy the reply before the client reads it.
        So a plaintext connection half-closes once the reply is sent and reads (and
        drops) the client's input until the client closes too, ``LINGER`` seconds at
        most; a TLS connection closes at once (its close_notify tells the client to
        stop)."""
        self.write(text + b"\r\n")
        if close is None or self.closing:
            return
        self.closing = close
        self.linger = self.loop.add_timer(LINGER, self.close, close)
        self.write(self.half_close)  # runs once the reply has reached the kernel

    def half_close(self) -> None:
        if self.closed:
            return
        if self.tls is not None:
            self.close(self.closing)
            return
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.close(self.closing)

    def event_hup(self) -> None:
        # The client's close after our half-close ends the linger (both ways shut).
        self.close(self.closing or "event_hup")

    def close(self, reason: str | None = None) -> None:
        if self.linger is not None:
            self.linger.cancel()
            self.linger = None
        super().close(reason)


class SMTPServer(danga.Listener):
    """The listening socket: one :class:`SMTPConnection` per accepted connection."""

    __slots__ = ("settings",)

    def __init__(self, sock: socket.socket, *, loop: danga.Loop | None = None,
                 **settings: Any) -> None:
        super().__init__(sock, loop=loop)
        self.settings = settings

    def on_accept(self, conn: socket.socket, addr: Any) -> None:
        SMTPConnection(conn, loop=self.loop, **self.settings)


def main(argv: Sequence[str] | None = None) -> int:
    args, ctx = tls_server_arguments("danga STARTTLS (SMTP-style) server", argv)

    loop = danga.Loop(args.backend)
    server = SMTPServer(socket.create_server((args.host, args.port)), loop=loop,
                        context=ctx, read_size=args.read_size,
                        handshake_timeout=args.handshake_timeout,
                        shutdown_timeout=args.shutdown_timeout)
    return serve(loop, server, grace=args.grace)


if __name__ == "__main__":
    sys.exit(main())
