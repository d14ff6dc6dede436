"""``danga demo``: a loopback echo server and client, to see danga work in one command."""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from .listener import Listener
from .loop import Loop
from .socket import Socket

__all__ = ["run_demo"]


class _Echo(Socket):
    __slots__ = ()

    def __init__(self, sock: socket.socket, *, loop: Loop) -> None:
        super().__init__(sock, loop=loop)
        self.watch_read(True)

    def event_read(self) -> None:
        data = self.read(65536)
        if data is None:
            self.close("eof")
        elif data:
            self.write(data)


class _Client(Socket):
    __slots__ = ("expect", "got", "left", "message")

    def __init__(self, sock: socket.socket, *, loop: Loop, messages: int) -> None:
        super().__init__(sock, loop=loop)
        self.left = messages
        self.message = os.urandom(64)
        self.got = b""
        self.watch_read(True)
        self.write(self.message)

    def event_read(self) -> None:
        data = self.read(65536)
        if data is None:
            raise ConnectionError("the echo server hung up")
        self.got += data
        if len(self.got) < len(self.message):
            return
        if self.got != self.message:
            raise AssertionError("echoed bytes differ from the bytes sent")
        self.got = b""
        self.left -= 1
        if self.left:
            self.write(self.message)
        else:
            self.close("done")
            self.loop.stop()


def run_demo(backend: str | type[Any] | None, messages: int) -> int:
    """Echo *messages* 64-byte messages over 127.0.0.1; print the rate. Returns 0."""
    loop = Loop(backend)
    try:
        server = socket.create_server(("127.0.0.1", 0))
        Listener(server, loop=loop, factory=_Echo)
        client = socket.create_connection(server.getsockname())
        _Client(client, loop=loop, messages=max(1, messages))
        started = time.perf_counter()
        loop.run()
        elapsed = time.perf_counter() - started
    finally:
        for obj in list(loop.descriptor_map.values()):
            obj.close("demo over")
        loop.close()
    print(f"danga {loop.backend.name}: {messages} round trips of 64 bytes over 127.0.0.1 "
          f"in {elapsed * 1000:.1f} ms ({messages / elapsed:,.0f}/s), every byte checked")
    return 0
