import socket

import danga
from danga.testing import run_until


class Echo(danga.Socket):
    def __init__(self, sock, *, loop):
        super().__init__(sock, loop=loop)
        self.watch_read(True)

    def event_read(self):
        data = self.read(4096)
        if data is None:
            self.close("eof")
        elif data:
            self.write(data)


def test_echo_roundtrip(loop):
    a, b = socket.socketpair()
    Echo(a, loop=loop)
    b.sendall(b"hello")
    got = bytearray()
    b.setblocking(False)

    def done():
        try:
            got.extend(b.recv(100))
        except BlockingIOError:
            pass
        return bytes(got) == b"hello"

    run_until(loop, done)
    b.close()
