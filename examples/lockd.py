#!/usr/bin/env python3
"""A lock server on danga that answers like ddlockd, Danga's lock daemon.

Run it::

    python examples/lockd.py                       # 127.0.0.1, a free port
    python examples/lockd.py --port 7002 --idle-timeout 30

It prints ``listening on HOST:PORT (backend NAME)`` once ready and exits 0 on SIGINT or
SIGTERM. Try it with ``nc 127.0.0.1 PORT``.

Protocol: one command per line (LF or CRLF); the command is a word (any case), its
arguments URL-encoded ``key=value`` pairs joined by ``&``. The replies are ddlockd's
(its ``internal`` lock type, ``server/lib/DDLockd/Client.pm`` and ``Client/Internal.pm``
of github.com/hachi/ddlockd), byte for byte::

    trylock lock=NAME      "OK \r\n" if this connection now holds NAME;
                           "ERR taken \r\n" if any connection (this one too) holds it;
                           "ERR empty_lock \r\n" without a name
    releaselock lock=NAME  "OK \r\n"; "ERR didnthave \r\n" if this connection does not
                           hold it; "ERR empty_lock \r\n"
    noop                   "OK \r\n"
    locks                  "LOCKS:\n", the lines "  NAME = HOLDER" (sorted by name) joined
                           by "\n", then "\n"; HOLDER is the holder's as_string()
    anything else          "ERR unknown_command Unknown+server+command\r\n"

(ddlockd's ``ok_line`` writes "OK ", then its URL-encoded reply arguments, of which
there are none; ``err_line`` writes "ERR CODE ", then the code's URL-encoded text, which
only ``unknown_command`` has. Names and arguments are bytes: every byte a client sends
comes back unchanged in ``locks``.)

What differs from ddlockd, and why:

- HOLDER in the ``locks`` listing names the Python class: ``LockClient(R): open to
  127.0.0.1:52810`` where ddlockd says ``DDLockd::Client::Internal(R): open to ...``
  (both are the ``as_string()`` of the holding connection, whose first word is the class).
- ``status`` and ``load`` (ddlockd's statistics: lock successes and failures, uptime, the
  trylocks of the last five minutes) are not implemented: they get the unknown-command
  reply.
- Every complete line of a read is run. ddlockd ran one line per read and left the
  rest waiting for more input; a client that pipelines commands would wait for ever.
- An empty line sent as a bare LF gets the unknown-command reply. ddlockd needs at least
  one byte before the line end: a bare LF stays in its buffer and every later line of
  that connection is ignored (an empty CRLF line gets the unknown-command reply in both).
- Two additions a production server needs, in ddlockd's error format:
  ``ERR idle_timeout \r\n`` then close, after ``--idle-timeout`` seconds of silence;
  ``ERR line_too_long \r\n`` then close, for a line longer than ``MAX_LINE`` bytes
  (ddlockd buffers any length).

Rules:

- A lock belongs to a connection. When the connection ends for any reason (the client
  disconnects, an error, the idle timeout, shutdown) its locks are released; the
  ``close`` override does it, so every path that closes the object releases them.
- Idle timeout (a timer): the timer is not re-armed on every line (that would churn the
  timer heap): it fires at the old deadline and, if the client was active since,
  re-arms for the time that is left.
- Back-pressure: a client that pipelines commands without reading the replies stops
  being read once ``write_buf_size`` passes the high-water mark, until its replies have
  drained (a callable queued behind them resumes it). Lines already received wait.
"""

from __future__ import annotations

import argparse
import re
import socket
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import unquote_to_bytes

# The signal wake-up and the shutdown are the echo example's (examples/ is on sys.path
# when this file runs as a script).
from echo import serve

import danga

#: The longest command line accepted, in bytes.
MAX_LINE = 4096
#: Stop reading from a client once this many reply bytes wait in its queue.
HIGH_WATER = 64 * 1024
#: How long a connection finishing a graceful shutdown waits for its client to close
#: after the last reply (nginx's lingering close, shorter).
LINGER = 2.0
#: Seconds of silence after which a client is disconnected.
IDLE_TIMEOUT = 60.0

# A command line, as ddlockd's /^(\w+)\s*(.*)/ (Perl's \w and \s on bytes: ASCII).
_COMMAND = re.compile(rb"(\w+)\s*(.*)", re.ASCII | re.DOTALL)
# The text ddlockd's err_line appends to a code, URL-encoded as its eurl() does; the
# other codes have none.
_ERR_TEXT = {b"unknown_command": b"Unknown+server+command"}


def decode_url_args(text: bytes) -> dict[bytes, bytes]:
    """ddlockd's decode_url_args: ``&``-separated ``name=value`` pairs, ``+`` and ``%XX``
    decoded, a name given twice keeps both values joined by a NUL byte."""
    args: dict[bytes, bytes] = {}
    for pair in text.split(b"&") if text else []:
        fields = pair.split(b"=")
        name = unquote_to_bytes(fields[0].replace(b"+", b" "))
        value = unquote_to_bytes(fields[1].replace(b"+", b" ")) if len(fields) > 1 else b""
        previous = args.get(name, b"")
        # Perl: $ret->{$name} .= $ret->{$name} ? "\0$value" : $value ("0" is false)
        args[name] = previous + (b"\0" + value if previous not in (b"", b"0") else value)
    return args


class LockServer(danga.Listener):
    """The listening socket and the shared lock table (lock name -> holding client)."""

    __slots__ = ("high_water", "holders", "idle_timeout")

    def __init__(self, sock: socket.socket, *, loop: danga.Loop | None = None,
                 idle_timeout: float = IDLE_TIMEOUT, high_water: int = HIGH_WATER) -> None:
        super().__init__(sock, loop=loop)
        self.idle_timeout = idle_timeout
        self.high_water = high_water
        self.holders: dict[bytes, LockClient] = {}

    def on_accept(self, conn: socket.socket, addr: Any) -> None:
        LockClient(conn, self)


class LockClient(danga.Socket):
    """One client connection: reads lines, runs commands, holds locks."""

    __slots__ = ("buf", "finishing", "idle_timer", "last_active", "locks", "paused", "pauses",
                 "server")

    def __init__(self, sock: socket.socket, server: LockServer) -> None:
        super().__init__(sock, loop=server.loop)
        self.server = server
        self.locks: set[bytes] = set()
        self.buf = bytearray()
        self.paused = False
        self.pauses = 0
        self.finishing = False
        self.last_active = time.monotonic()
        self.idle_timer: danga.Timer | None = self.loop.add_timer(
            server.idle_timeout, self.check_idle)
        self.watch_read(True)

    # -- input -------------------------------------------------------------------------

    def event_read(self) -> None:
        data = self.read(MAX_LINE)
        if data is None:
            self.close("shutdown" if self.finishing else "eof")
            return
        if not data or self.finishing:  # shutting down: input is read and dropped
            return
        self.last_active = time.monotonic()
        self.buf += data
        self.process_lines()

    def process_lines(self) -> None:
        """Run every complete line in the buffer, unless paused or closed."""
        buf = self.buf
        while not self.paused and not self.closed:
            end = buf.find(b"\n")
            if end < 0:
                if len(buf) > MAX_LINE:
                    self.fail(b"line_too_long")
                return
            line = bytes(buf[:end])
            del buf[:end + 1]
            if end > MAX_LINE:
                self.fail(b"line_too_long")
                return
            self.run_command(line[:-1] if line.endswith(b"\r") else line)
            if self.write_buf_size > self.server.high_water and not self.closed:
                self.pause()

    def run_command(self, line: bytes) -> None:
        # ddlockd: /^(\w+)\s*(.*)/, the command lower-cased, the rest URL arguments.
        match = _COMMAND.match(line)
        handler = self.COMMANDS.get(match[1].lower()) if match else None
        if match is None or handler is None:
            self.err_line(b"unknown_command")
            return
        handler(self, decode_url_args(match[2]))

    # -- commands ----------------------------------------------------------------------

    def cmd_trylock(self, args: dict[bytes, bytes]) -> None:
        name = args.get(b"lock", b"")
        if not name:
            self.err_line(b"empty_lock")
        elif name in self.server.holders:
            self.err_line(b"taken")
        else:
            self.server.holders[name] = self
            self.locks.add(name)
            self.ok_line()

    def cmd_releaselock(self, args: dict[bytes, bytes]) -> None:
        name = args.get(b"lock", b"")
        if not name:
            self.err_line(b"empty_lock")
        elif name not in self.locks:
            self.err_line(b"didnthave")
        else:
            self.release(name)
            self.ok_line()

    def cmd_noop(self, args: dict[bytes, bytes]) -> None:
        self.ok_line()

    def cmd_locks(self, args: dict[bytes, bytes]) -> None:
        holders = self.server.holders
        lines = [b"  %s = %s" % (name, holders[name].as_string().encode())
                 for name in sorted(holders)]
        self.write(b"LOCKS:\n" + b"\n".join(lines) + b"\n")

    COMMANDS: dict[bytes, Callable[[LockClient, dict[bytes, bytes]], None]] = {
        b"trylock": cmd_trylock,
        b"releaselock": cmd_releaselock,
        b"noop": cmd_noop,
        b"locks": cmd_locks,
    }

    # -- output, back-pressure, timers -------------------------------------------------

    def ok_line(self) -> None:
        """ddlockd's success: "OK ", its reply arguments (none here), CRLF."""
        self.write(b"OK \r\n")

    def err_line(self, code: bytes) -> None:
        """ddlockd's failure: "ERR CODE ", the code's URL-encoded text (often none), CRLF."""
        self.write(b"ERR %s %s\r\n" % (code, _ERR_TEXT.get(code, b"")))

    def fail(self, code: bytes) -> None:
        """Send ``ERR code`` and close (the reply goes out first: the queue was empty
        or it is dropped with the connection, which is what a misbehaving client gets)."""
        self.err_line(code)
        self.close(code.decode())

    def pause(self) -> None:
        if self.paused:
            return
        self.paused = True
        self.pauses += 1
        self.watch_read(False)
        self.write(self.resume)  # called once the replies before it are in the kernel

    def resume(self) -> None:
        if self.finishing:  # shutting down: no more commands
            return
        self.paused = False
        self.watch_read(True)
        self.process_lines()  # lines that arrived before the pause

    def check_idle(self) -> None:
        """The idle timer: close a silent client, or re-arm for the time left."""
        self.idle_timer = None
        if self.closed:
            return
        left = self.last_active + self.server.idle_timeout - time.monotonic()
        if left > 0:
            self.idle_timer = self.loop.add_timer(left, self.check_idle)
        else:
            self.fail(b"idle_timeout")

    # -- closing -----------------------------------------------------------------------

    def release(self, name: bytes) -> None:
        self.locks.discard(name)
        if self.server.holders.get(name) is self:
            del self.server.holders[name]

    def finish(self, reason: str = "shutdown") -> None:
        """Graceful shutdown (echo.drain calls it): answer no more commands, send every
        queued reply, then half-close and read and drop the client's input until it
        closes too (at most LINGER seconds). Closing with unread input would make the
        kernel reset the connection and throw away the replies still in flight."""
        if self.closed or self.finishing:
            return
        self.finishing = True
        self.paused = True
        del self.buf[:]
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        self.idle_timer = self.loop.add_timer(LINGER, self.close, reason)
        self.watch_read(True)
        self.write(self.half_close)  # after the replies queued before it

    def half_close(self) -> None:
        """Every reply is in the kernel: send FIN, keep reading until the client's."""
        if self.closed:
            return
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.close("shutdown")

    def close(self, reason: str | None = None) -> None:
        """Release every lock this connection holds, stop its timer, then close."""
        if self.closed:
            return
        for name in list(self.locks):
            self.release(name)
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        super().close(reason)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="danga lock server (ddlockd protocol)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port (0: pick a free one)")
    parser.add_argument("--backend", default=None,
                        help="danga backend (default: DANGA_BACKEND, else automatic)")
    parser.add_argument("--idle-timeout", type=float, default=IDLE_TIMEOUT,
                        help=f"disconnect clients silent this many seconds ({IDLE_TIMEOUT})")
    parser.add_argument("--grace", type=float, default=30.0,
                        help="on SIGTERM/SIGINT, wait this long for replies (30s)")
    args = parser.parse_args(argv)

    loop = danga.Loop(args.backend)
    server = LockServer(socket.create_server((args.host, args.port)), loop=loop,
                        idle_timeout=args.idle_timeout)
    return serve(loop, server, grace=args.grace)


if __name__ == "__main__":
    sys.exit(main())
