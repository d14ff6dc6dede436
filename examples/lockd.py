#!/usr/bin/env python3
"""A lock server on danga, speaking the line protocol of ddlockd (hachi/ddlockd).

Run it::

    python examples/lockd.py                       # 127.0.0.1, a free port
    python examples/lockd.py --port 7002 --idle-timeout 30

It prints ``listening on HOST:PORT (backend NAME)`` once ready and exits 0 on SIGINT or
SIGTERM. Try it with ``nc 127.0.0.1 PORT``.

Protocol: one command per line (LF or CRLF); arguments are URL-encoded ``key=value``
pairs joined by ``&``, as in ddlockd. Every reply is one line, except ``locks``.

=========================  ===============================================================
``trylock lock=NAME``      ``OK`` if this connection now holds NAME; ``ERR taken`` if any
                           connection (this one included) holds it; ``ERR empty_lock``
``releaselock lock=NAME``  ``OK``; ``ERR didnthave`` if this connection does not hold it
``noop``                   ``OK`` (keeps an idle connection alive)
``locks``                  ``LOCKS:``, then ``  NAME = HOLDER`` per lock, then an empty line
anything else              ``ERR unknown_command``
=========================  ===============================================================

Rules:

- A lock belongs to a connection. When the connection ends for any reason (the client
  disconnects, an error, the idle timeout, shutdown) its locks are released; the
  ``close`` override does it, so every path that closes the object releases them.
- Idle timeout (a timer): a connection that sends nothing for ``--idle-timeout``
  seconds gets ``ERR idle_timeout`` and is closed. The timer is not re-armed on every
  line (that would churn the timer heap): it fires at the old deadline and, if the
  client was active since, re-arms for the time that is left.
- Back-pressure: a client that pipelines commands without reading the replies stops
  being read once ``write_buf_size`` passes the high-water mark, until its replies have
  drained (a callable queued behind them resumes it). Lines already received wait.
- A line longer than ``MAX_LINE`` bytes gets ``ERR line_too_long`` and the connection is
  closed, so a client cannot make the server buffer without limit.

Unlike ddlockd, every complete line of a read is processed (ddlockd handled one line per
read and left pipelined commands waiting for more input).
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import parse_qsl

# The signal wake-up and the shutdown are the echo example's (examples/ is on sys.path
# when this file runs as a script).
from echo import close_all, stop_on_signals

import danga

#: The longest command line accepted, in bytes.
MAX_LINE = 4096
#: Stop reading from a client once this many reply bytes wait in its queue.
HIGH_WATER = 64 * 1024
#: Seconds of silence after which a client is disconnected.
IDLE_TIMEOUT = 60.0


class LockServer(danga.Listener):
    """The listening socket and the shared lock table (lock name -> holding client)."""

    __slots__ = ("high_water", "holders", "idle_timeout")

    def __init__(self, sock: socket.socket, *, loop: danga.Loop | None = None,
                 idle_timeout: float = IDLE_TIMEOUT, high_water: int = HIGH_WATER) -> None:
        super().__init__(sock, loop=loop)
        self.idle_timeout = idle_timeout
        self.high_water = high_water
        self.holders: dict[str, LockClient] = {}

    def on_accept(self, conn: socket.socket, addr: Any) -> None:
        LockClient(conn, self)


class LockClient(danga.Socket):
    """One client connection: reads lines, runs commands, holds locks."""

    __slots__ = ("buf", "idle_timer", "last_active", "locks", "paused", "pauses", "server")

    def __init__(self, sock: socket.socket, server: LockServer) -> None:
        super().__init__(sock, loop=server.loop)
        self.server = server
        self.locks: set[str] = set()
        self.buf = bytearray()
        self.paused = False
        self.pauses = 0
        self.last_active = time.monotonic()
        self.idle_timer: danga.Timer | None = self.loop.add_timer(
            server.idle_timeout, self.check_idle)
        self.watch_read(True)

    # -- input -------------------------------------------------------------------------

    def event_read(self) -> None:
        data = self.read(MAX_LINE)
        if data is None:
            self.close("eof")
            return
        if not data:
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
                    self.fail("line_too_long")
                return
            line = bytes(buf[:end]).rstrip(b"\r")
            del buf[:end + 1]
            if end > MAX_LINE:
                self.fail("line_too_long")
                return
            self.run_command(line.decode("utf-8", "replace"))
            if self.write_buf_size > self.server.high_water and not self.closed:
                self.pause()

    def run_command(self, line: str) -> None:
        cmd, _, rest = line.strip().partition(" ")
        handler = self.COMMANDS.get(cmd.lower())
        if handler is None:
            self.reply("ERR unknown_command")
            return
        args = dict(parse_qsl(rest.strip(), keep_blank_values=True))
        handler(self, args)

    # -- commands ----------------------------------------------------------------------

    def cmd_trylock(self, args: dict[str, str]) -> None:
        name = args.get("lock", "")
        if not name:
            self.reply("ERR empty_lock")
        elif name in self.server.holders:
            self.reply("ERR taken")
        else:
            self.server.holders[name] = self
            self.locks.add(name)
            self.reply("OK")

    def cmd_releaselock(self, args: dict[str, str]) -> None:
        name = args.get("lock", "")
        if not name:
            self.reply("ERR empty_lock")
        elif name not in self.locks:
            self.reply("ERR didnthave")
        else:
            self.release(name)
            self.reply("OK")

    def cmd_noop(self, args: dict[str, str]) -> None:
        self.reply("OK")

    def cmd_locks(self, args: dict[str, str]) -> None:
        holders = self.server.holders
        lines = [f"  {name} = {holders[name].peer_addr_string()}" for name in sorted(holders)]
        self.reply("\r\n".join(["LOCKS:", *lines, ""]))

    COMMANDS: dict[str, Callable[[LockClient, dict[str, str]], None]] = {
        "trylock": cmd_trylock,
        "releaselock": cmd_releaselock,
        "noop": cmd_noop,
        "locks": cmd_locks,
    }

    # -- output, back-pressure, timers -------------------------------------------------

    def reply(self, line: str) -> None:
        self.write(line.encode() + b"\r\n")

    def fail(self, code: str) -> None:
        """Send ``ERR code`` and close (the reply goes out first: the queue was empty
        or it is dropped with the connection, which is what a misbehaving client gets)."""
        self.reply(f"ERR {code}")
        self.close(code)

    def pause(self) -> None:
        if self.paused:
            return
        self.paused = True
        self.pauses += 1
        self.watch_read(False)
        self.write(self.resume)  # called once the replies before it are in the kernel

    def resume(self) -> None:
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
            self.fail("idle_timeout")

    # -- closing -----------------------------------------------------------------------

    def release(self, name: str) -> None:
        self.locks.discard(name)
        if self.server.holders.get(name) is self:
            del self.server.holders[name]

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
    args = parser.parse_args(argv)

    loop = danga.Loop(args.backend)
    server = LockServer(socket.create_server((args.host, args.port)), loop=loop,
                        idle_timeout=args.idle_timeout)
    restore = stop_on_signals(loop)
    print(f"listening on {server.local_addr_string()} (backend {loop.backend.name})",
          flush=True)
    try:
        loop.run()
    finally:
        restore()
        close_all(loop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
