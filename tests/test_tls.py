"""TLS on a danga.Socket (docs/tls.md): server and client mode against Python's ssl
module, on every backend."""

from __future__ import annotations

import socket
import ssl
from typing import Any

import pytest

import danga
from danga.testing import run_until
from tls_helpers import (
    client_context,
    make_certs,
    peer,
    recv_exactly,
    server_context,
    tls_client,
)


@pytest.fixture(scope="session")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("tls-certs"))


class Echo(danga.Socket):
    """Echoes plaintext, reading *size* bytes at a time, until EOF."""

    size = 65536

    def __init__(self, sock: Any, *, loop: danga.Loop) -> None:
        super().__init__(sock, loop=loop)
        self.log: list[Any] = []
        self.watch_read(True)

    def on_tls_handshake(self) -> None:
        self.log.append(("handshake", self.tls.version()))

    def event_read(self) -> None:
        while True:
            data = self.read(self.size)
            if data is None:
                self.log.append("eof")
                self.close("eof")
                return
            if not data:
                return
            self.write(data)


def echo_class(size: int) -> type[Echo]:
    return type("Echo", (Echo,), {"size": size})


def serve(loop: danga.Loop, ctx: ssl.SSLContext, cls: type[danga.Socket]) -> tuple[
        danga.Listener, int, list[danga.Socket]]:
    made: list[danga.Socket] = []

    def factory(sock: Any, *, loop: danga.Loop) -> danga.Socket:
        obj = cls(sock, loop=loop)
        made.append(obj)
        return obj

    lsn = danga.Listener.bind(("127.0.0.1", 0), loop=loop, factory=factory, ssl=ctx)
    return lsn, lsn.sock.getsockname()[1], made


@pytest.mark.parametrize("size", [1, 7, 65536])
def test_echo_never_stalls_whatever_the_read_size(loop, certs, size):
    # The 16,000-byte message that stalled at 4,096 bytes over an SSLSocket: the rest
    # sits decrypted inside OpenSSL, where the poller never sees it.
    lsn, port, made = serve(loop, server_context(certs), echo_class(size))
    messages = [b"ping", bytes(range(256)) * 62 + b"0123456789abcdef"]
    if size == 65536:
        messages.append(b"m" * (1 << 20))

    def client() -> list[bool]:
        with tls_client(port, client_context(certs)) as conn:
            ok = []
            for msg in messages:
                conn.sendall(msg)
                ok.append(recv_exactly(conn, len(msg)) == msg)
            conn.unwrap()  # close_notify: the server reads EOF and closes
            return ok

    assert peer(client).finish(loop) == [True] * len(messages)
    run_until(loop, lambda: made[0].closed)
    assert made[0].log == [("handshake", "TLSv1.3"), "eof"]
    assert made[0].close_reason == "eof"
    assert made[0].tls is None
    lsn.close()


class Client(danga.Socket):
    """Writes a greeting in __init__ (held until the handshake), collects plaintext."""

    def __init__(self, sock: Any, *, loop: danga.Loop) -> None:
        super().__init__(sock, loop=loop)
        self.got = b""
        self.log: list[Any] = []
        self.write(b"hello, held until the handshake\n")
        self.watch_read(True)

    def on_connect(self) -> None:
        self.log.append("connect")

    def on_tls_handshake(self) -> None:
        self.log.append(("handshake", self.tls.server_hostname, self.tls.version()))

    def on_tls_error(self, exc: Exception) -> None:
        self.log.append(("error", type(exc).__name__))
        super().on_tls_error(exc)

    def event_read(self) -> None:
        while True:
            data = self.read(65536)
            if data is None:
                self.log.append("eof")
                self.close("eof")
                return
            if not data:
                return
            self.got += data


def python_tls_server(certs: Any, handle: Any) -> tuple[int, Any]:
    """A one-connection blocking ssl server in a thread: handle(conn) runs on it."""
    lsn = socket.create_server(("127.0.0.1", 0))
    lsn.settimeout(10)
    ctx = server_context(certs)

    def run() -> Any:
        with lsn:
            raw, _ = lsn.accept()
            raw.settimeout(10)
            with ctx.wrap_socket(raw, server_side=True) as conn:
                return handle(conn)

    return lsn.getsockname()[1], peer(run)


def test_client_mode_against_python_ssl_server(loop, certs):
    def handle(conn: ssl.SSLSocket) -> bytes:
        line = b""
        while not line.endswith(b"\n"):
            line += conn.recv(100)
        conn.sendall(line.upper() + b"x" * 100_000)
        conn.unwrap()
        return line

    port, thread = python_tls_server(certs, handle)
    obj = danga.connect(("127.0.0.1", port), Client, loop=loop, ssl=client_context(certs),
                        server_hostname="localhost")
    assert thread.finish(loop) == b"hello, held until the handshake\n"
    run_until(loop, lambda: obj.closed)
    assert obj.got == b"HELLO, HELD UNTIL THE HANDSHAKE\n" + b"x" * 100_000
    assert obj.log == ["connect", ("handshake", "localhost", "TLSv1.3"), "eof"]


@pytest.mark.parametrize(("hostname", "ca", "words"), [
    ("wrong.example", "ca", "Hostname mismatch"),
    ("localhost", "other-ca", "unable to get local issuer certificate"),
])
def test_verification_failures_name_their_cause(loop, certs, hostname, ca, words):
    lsn, port, made = serve(loop, server_context(certs), Echo)
    obj = danga.connect(("127.0.0.1", port), Client, loop=loop,
                        ssl=client_context(certs, ca), server_hostname=hostname)
    run_until(loop, lambda: obj.closed and made and made[0].closed)
    assert obj.log == ["connect", ("error", "SSLCertVerificationError")]
    assert obj.close_reason.startswith("tls_error: CERTIFICATE_VERIFY_FAILED: ")
    assert words in obj.close_reason
    # The server hears why from the client's alert.
    assert made[0].close_reason.startswith("tls_error: ")
    assert obj.got == b""
    lsn.close()
