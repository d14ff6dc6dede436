"""TLS on a danga.Socket (docs/tls.md): server and client mode against Python's ssl
module, on every backend."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
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
    """Echoes plaintext until EOF, with *reads* reads of *size* bytes per event_read
    (one, as Danga code does): what is left is announced again by danga (the push-back
    re-fire), never by the poller, which cannot see plaintext buffered in the TLS
    engine."""

    size = 65536
    reads = 1

    def __init__(self, sock: Any, *, loop: danga.Loop) -> None:
        super().__init__(sock, loop=loop)
        self.log: list[Any] = []
        self.watch_read(True)

    def on_tls_handshake(self) -> None:
        self.log.append(("handshake", self.tls.version()))

    def event_read(self) -> None:
        for _ in range(self.reads):
            data = self.read(self.size)
            if data is None:
                self.log.append("eof")
                self.close("eof")
                return
            if not data:
                return
            self.write(data)


def echo_class(size: int, reads: int) -> type[Echo]:
    return type("Echo", (Echo,), {"size": size, "reads": reads})


def serve(loop: danga.Loop, ctx: ssl.SSLContext, cls: type[danga.Socket]) -> tuple[
        danga.Listener, int, list[danga.Socket]]:
    made: list[danga.Socket] = []

    def factory(sock: Any, *, loop: danga.Loop) -> danga.Socket:
        obj = cls(sock, loop=loop)
        made.append(obj)
        return obj

    lsn = danga.Listener.bind(("127.0.0.1", 0), loop=loop, factory=factory, ssl=ctx)
    return lsn, lsn.sock.getsockname()[1], made


@pytest.mark.parametrize(("size", "reads"), [(1, 1), (7, 3), (65536, 1)])
def test_echo_never_stalls_whatever_the_read_size(loop, certs, size, reads):
    # The 16,000-byte message that stalled at 4,096 bytes over an SSLSocket: the rest
    # sits decrypted inside OpenSSL, where the poller never sees it. Three reads of 7
    # bytes per event also take bytes straight from OpenSSL (pending()), past what the
    # readable event decrypted.
    lsn, port, made = serve(loop, server_context(certs), echo_class(size, reads))
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


class Gather(Echo):
    """Reads nothing until told (the test turns the read watch on once the client's
    whole message sits in the kernel), then logs the size of every read."""

    def on_tls_handshake(self) -> None:
        super().on_tls_handshake()
        self.watch_read(False)

    def event_read(self) -> None:
        data = self.read(65536)
        if data:
            self.log.append(len(data))
            self.write(data)
        elif data is None:
            self.close("eof")


def test_one_read_takes_every_whole_record_the_engine_holds(loop, certs):
    # SSLObject.read gives one record (16 KiB) per call: read(65536) must gather the
    # records already received, or a 60,000-byte message needs four events and an echo
    # four sends.
    lsn, port, made = serve(loop, server_context(certs), Gather)
    msg = bytes(range(250)) * 240  # 60,000 bytes: four records, under one raw read
    go, sent = threading.Event(), threading.Event()

    def client() -> bool:
        with tls_client(port, client_context(certs)) as conn:
            assert go.wait(10)  # the server's handshake is done: the message comes alone
            conn.sendall(msg)
            sent.set()
            ok = recv_exactly(conn, len(msg)) == msg
            conn.unwrap()
            return ok

    thread = peer(client)
    run_until(loop, lambda: bool(made and made[0].log))
    go.set()
    run_until(loop, sent.is_set)
    # sendall() returning does not mean the kernel has delivered it all yet (a loaded
    # machine defers loopback delivery): wait until every record is there to be read
    # (four records of TLS 1.3 AES-GCM: 22 bytes each on top of the plaintext).
    raw = made[0].sock

    def all_arrived() -> bool:
        try:
            return len(raw.recv(1 << 17, socket.MSG_PEEK | socket.MSG_DONTWAIT)) >= (
                len(msg) + 4 * 22)
        except BlockingIOError:
            return False

    run_until(loop, all_arrived)
    made[0].watch_read(True)
    assert thread.finish(loop) is True
    run_until(loop, lambda: made[0].closed)
    assert made[0].log == [("handshake", "TLSv1.3"), len(msg)], made[0].log
    lsn.close()


class Client(danga.Socket):
    """Writes a greeting in __init__ (held until the handshake, when connect() started
    TLS), collects plaintext."""

    greeting = b"hello, held until the handshake\n"

    def __init__(self, sock: Any, *, loop: danga.Loop) -> None:
        super().__init__(sock, loop=loop)
        self.got = b""
        self.log: list[Any] = []
        if self.greeting:
            self.write(self.greeting)
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


def test_eof_without_close_notify_is_truncation(loop, certs):
    # A peer that closes the TCP connection without close_notify could be an attacker
    # cutting the stream: the object is closed with "tls_truncated", after the
    # plaintext that did arrive was read (close_notify itself is EOF: the echo test).
    lsn, port, made = serve(loop, server_context(certs), Echo)

    def client() -> bytes:
        with tls_client(port, client_context(certs)) as conn:
            conn.sendall(b"partial")
            return recv_exactly(conn, 7)  # then close() sends no close_notify

    assert peer(client).finish(loop) == b"partial"
    run_until(loop, lambda: made[0].closed)
    assert made[0].close_reason == "tls_truncated"
    lsn.close()


class Quiet(Client):
    greeting = b""


class Greeter(danga.Socket):
    """Writes *data* once the handshake is done and closes at once: close_notify goes
    after the queued data, and close() does not wait for the peer's answer."""

    def __init__(self, sock: Any, *, loop: danga.Loop, data: bytes = b"bye\n") -> None:
        super().__init__(sock, loop=loop)
        self.data = data

    def on_tls_handshake(self) -> None:
        self.write(self.data)
        self.close("done")


@pytest.mark.parametrize("size", [4, 1 << 20])
def test_close_flushes_the_queue_then_close_notify_without_waiting(loop, certs, size):
    data = b"d" * size
    lsn, port, made = serve(loop, server_context(certs),
                            lambda sock, loop: Greeter(sock, loop=loop, data=data))

    def client() -> tuple[bytes, bytes]:
        with tls_client(port, client_context(certs)) as conn:
            conn.suppress_ragged_eofs = False  # a truncation would raise SSLEOFError
            got = recv_exactly(conn, size)
            return got, conn.recv(10)  # b"": close_notify; the client never answers it

    got, eof = peer(client).finish(loop)
    assert got == data and eof == b""
    assert made[0].close_reason == "done" and made[0].tls is None
    run_until(loop, lambda: loop.descriptor_map.keys() == {lsn.fd})  # nothing lingers
    lsn.close()


def test_close_gives_up_at_the_shutdown_timeout(loop, certs):
    # The peer reads nothing: what is queued (and close_notify) cannot go, and the
    # connection is closed for real at the shutdown timeout, not later.
    made: list[danga.Socket] = []

    def factory(sock: Any, *, loop: danga.Loop) -> danga.Socket:
        obj = danga.Socket(sock, loop=loop)
        obj.start_tls(server_context(certs), server_side=True, shutdown_timeout=0.2)
        made.append(obj)
        return obj

    lsn = danga.Listener.bind(("127.0.0.1", 0), loop=loop, factory=factory)
    done = threading.Event()

    def client() -> None:
        with tls_client(lsn.sock.getsockname()[1], client_context(certs)):
            done.wait(10)  # reads nothing meanwhile

    thread = peer(client)
    try:
        run_until(loop, lambda: made and made[0].write_buf_size == 0 and made[0].tls
                  and made[0].tls.version() is not None)
        obj = made[0]
        while obj.write(b"q" * 65536):
            pass
        obj.close("done")
        assert obj.closed and obj.tls is None and obj.close_reason == "done"
        (lingering,) = (o for o in loop.descriptor_map.values() if o is not lsn)
        start = time.monotonic()
        run_until(loop, lambda: lingering.closed)
        assert 0.15 < time.monotonic() - start < 4.0  # the default: 30 s
        assert lingering.close_reason == "tls_shutdown_timeout"
    finally:
        done.set()
    thread.finish(loop)
    lsn.close()


def test_handshake_timeout_closes_a_silent_client(loop, certs):
    made: list[danga.Socket] = []

    def factory(sock: Any, *, loop: danga.Loop) -> danga.Socket:
        obj = Echo(sock, loop=loop)
        obj.start_tls(server_context(certs), server_side=True, handshake_timeout=0.2)
        made.append(obj)
        return obj

    lsn = danga.Listener.bind(("127.0.0.1", 0), loop=loop, factory=factory)
    with socket.create_connection(lsn.sock.getsockname()) as raw:  # says nothing
        start = time.monotonic()
        run_until(loop, lambda: made and made[0].closed)
        assert 0.15 < time.monotonic() - start < 4.0  # the default: 60 s
        assert made[0].close_reason == "tls_handshake_timeout"
        assert made[0].log == [] and made[0].tls is None
        raw.settimeout(5)
        assert raw.recv(100) == b""  # closed, not merely forgotten
    lsn.close()


def tls_pair(loop: danga.Loop, certs: Any, server_cls: type[danga.Socket],
             client_cls: type[danga.Socket], **server_kw: Any) -> tuple[Any, Any]:
    """Two danga objects over a socketpair, TLS started on both (no thread)."""
    a, b = socket.socketpair()
    srv = server_cls(a, loop=loop)
    cli = client_cls(b, loop=loop)
    srv.start_tls(server_context(certs, **server_kw), server_side=True)
    cli.start_tls(client_context(certs), server_side=False, server_hostname="localhost")
    return srv, cli


def test_writes_during_the_handshake_are_held_on_both_sides(loop, certs):
    srv, cli = tls_pair(loop, certs, Quiet, Quiet)
    assert srv.write(b"from the server") is False  # held: nothing can be encrypted yet
    assert cli.write(b"from the client") is False
    run_until(loop, lambda: srv.got == b"from the client" and cli.got == b"from the server")
    assert srv.log == [("handshake", None, "TLSv1.3")]
    assert cli.log == [("handshake", "localhost", "TLSv1.3")]


def test_event_read_fires_only_for_plaintext_and_tickets_are_not_eof(loop, certs):
    # A TLS 1.3 client's first readable event after the handshake may carry only
    # NewSessionTicket records: no event_read (nothing to read), and not EOF.
    class Reader(Quiet):
        def event_read(self) -> None:
            first = self.read(65536)
            self.log.append(("event_read", first))
            if first:
                self.got += first
            super().event_read()

    go = threading.Event()

    def handle(conn: ssl.SSLSocket) -> None:
        go.wait(10)
        conn.sendall(b"late data")
        conn.unwrap()

    port, thread = python_tls_server(certs, handle)
    obj = danga.connect(("127.0.0.1", port), Reader, loop=loop,
                        ssl=client_context(certs), server_hostname="localhost")
    run_until(loop, lambda: any(e[0] == "handshake" for e in obj.log if isinstance(e, tuple)))
    # The server wrote its tickets before its handshake returned: wait until every
    # byte of them has left the kernel into the engine.
    run_until(loop, lambda: unread(obj.sock) == 0 and obj._tls.starved)
    assert not obj.closed
    assert not [e for e in obj.log if e[0] == "event_read"]
    go.set()
    thread.finish(loop)
    run_until(loop, lambda: obj.closed)
    reads = [e[1] for e in obj.log if e[0] == "event_read"]
    assert reads[0] == b"late data" and b"" not in reads  # never woken for nothing
    assert obj.got == b"late data" and obj.close_reason == "eof" and "eof" in obj.log


def unread(sock: socket.socket) -> int:
    import fcntl
    import struct
    import termios

    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4))[0]


class LineServer(danga.Socket):
    """An SMTP-like line server: "STARTTLS" switches to TLS, other lines are echoed."""

    discard = False

    def __init__(self, sock: Any, *, loop: danga.Loop, certs: Any) -> None:
        super().__init__(sock, loop=loop)
        self.certs = certs
        self.lines: list[bytes] = []
        self.error: Exception | None = None
        self.write(b"220 ready\r\n")
        self.watch_read(True)

    def event_read(self) -> None:
        data = self.read(65536)
        if data is None:
            self.close("eof")
            return
        while b"\n" in data:
            line, _, data = data.partition(b"\n")
            self.lines.append(line)
            if line == b"STARTTLS\r":
                self.push_back_read(data)  # the Danga idiom: unread the rest
                self.write(b"220 go ahead\r\n")
                try:
                    self.start_tls(server_context(self.certs), server_side=True,
                                   discard_buffered=self.discard)
                except ValueError as exc:
                    self.error = exc
                    self.close("starttls refused")
                return
            self.write(b"echo " + line + b"\n")
        if data:
            self.push_back_read(data)


@pytest.mark.parametrize("discard", [False, True])
def test_starttls_refuses_or_drops_pipelined_plaintext(loop, certs, discard):
    # CVE-2011-0411: bytes the client sent after STARTTLS, before the handshake, must
    # never be processed as if they had come over TLS.
    made: list[LineServer] = []

    def factory(sock: Any, *, loop: danga.Loop) -> LineServer:
        obj = type("LineServer", (LineServer,), {"discard": discard})(
            sock, loop=loop, certs=certs)
        made.append(obj)
        return obj

    lsn = danga.Listener.bind(("127.0.0.1", 0), loop=loop, factory=factory)

    def client() -> bytes:
        with socket.create_connection(lsn.sock.getsockname(), timeout=10) as raw:
            assert recv_exactly(raw, 11) == b"220 ready\r\n"
            raw.sendall(b"STARTTLS\r\nRCPT TO:<injected>\r\n")
            assert recv_exactly(raw, 14) == b"220 go ahead\r\n"
            try:
                c = client_context(certs).wrap_socket(raw, server_hostname="localhost")
            except (ssl.SSLError, OSError):
                return b"no TLS"
            with c:
                c.sendall(b"NOOP\r\n")
                return recv_exactly(c, 11)

    reply = peer(client).finish(loop)
    server = made[0]
    if discard:
        assert reply == b"echo NOOP\r\n"
        assert server.lines == [b"STARTTLS\r", b"NOOP\r"]
    else:
        assert reply == b"no TLS"
        assert isinstance(server.error, ValueError)
        assert "discard_buffered" in str(server.error)
        assert server.lines == [b"STARTTLS\r"]
    lsn.close()


def test_starttls_bytes_left_in_the_kernel_are_taken_as_tls(loop, certs):
    # Pipelined bytes the server had not read yet go to the TLS engine, which refuses
    # them: they fail the handshake instead of being read as plaintext.
    a, b = socket.socketpair()
    srv = Client(a, loop=loop)
    srv.start_tls(server_context(certs), server_side=True)
    b.sendall(b"RCPT TO:<injected>\r\n")
    run_until(loop, lambda: srv.closed)
    assert srv.close_reason.startswith("tls_error: ")
    assert srv.got == b""
    b.close()


@pytest.mark.parametrize("when", ["handshake", "init"])
def test_write_file_over_tls_reads_encrypts_and_sends(loop, certs, tmp_path, when):
    # Written once the handshake is done, or in __init__ (held with the writes around
    # it until then); two files back to back, then data and a callable after them.
    import hashlib
    import os

    body = os.urandom(300_000)
    path = tmp_path / "body.bin"
    path.write_bytes(body)

    class FileServer(danga.Socket):
        def __init__(self, sock: Any, *, loop: danga.Loop) -> None:
            super().__init__(sock, loop=loop)
            if when == "init":
                self.send_all()

        def on_tls_handshake(self) -> None:
            if when == "handshake":
                self.send_all()

        def send_all(self) -> None:
            self.write(b"head:")
            f = open(path, "rb")  # noqa: SIM115 (open until sent: closed below)
            self.write_file(f, 10, len(body) - 10)
            self.write_file(raw_fd, 0, 10)
            self.write(b":tail")
            self.write(lambda: (f.close(), self.close("sent")))

    raw_fd = os.open(path, os.O_RDONLY)
    lsn, port, made = serve(loop, server_context(certs), FileServer)

    def client() -> bytes:
        with tls_client(port, client_context(certs)) as conn:
            conn.suppress_ragged_eofs = False
            out = bytearray()
            while chunk := conn.recv(65536):
                out += chunk
            return bytes(out)

    got = peer(client).finish(loop)
    os.close(raw_fd)
    expected = b"head:" + body[10:] + body[:10] + b":tail"
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(expected).hexdigest()
    assert made[0].close_reason == "sent"
    lsn.close()


def test_write_buf_size_counts_ciphertext_and_back_pressure_works(loop, certs):
    srv, cli = tls_pair(loop, certs, Quiet, Quiet)
    run_until(loop, lambda: srv.log and cli.log)
    cli.watch_read(False)  # the client reads nothing: the server's queue fills
    total = 0
    while srv.write(b"p" * 16384):
        total += 16384
    total += 16384
    before = srv.write_buf_size
    assert before > 0
    assert srv.write(b"x" * 1000) is False
    # One TLS 1.3 record: 5 bytes of header, 1 of content type, 16 of AEAD tag.
    assert srv.write_buf_size - before == 1000 + 22
    done: list[bool] = []
    srv.write(lambda: done.append(True))  # runs once every byte before it was sent
    assert not done
    total += 1000
    cli.watch_read(True)
    run_until(loop, lambda: len(cli.got) == total)
    assert done and srv.write_buf_size == 0
    assert cli.got == b"p" * (total - 1000) + b"x" * 1000


def test_renegotiation_is_refused_on_servers(loop, certs):
    # A TLS 1.2 client asks to renegotiate ("R" to openssl s_client): the server refuses,
    # even with a context whose OpenSSL would allow it (OpenSSL 3 allows it only with
    # SSL_OP_ALLOW_CLIENT_RENEGOTIATION, which the test sets).
    import os
    import shutil
    import subprocess

    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs the openssl command (apt-get install openssl)")
    ctx = server_context(certs, tls12=True)
    if ssl.OPENSSL_VERSION_INFO >= (3,):
        ctx.options |= 1 << 8  # SSL_OP_ALLOW_CLIENT_RENEGOTIATION
    lsn, port, made = serve(loop, ctx, Echo)
    proc = subprocess.Popen(
        [openssl, "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_2",
         "-CAfile", str(certs["ca"]), "-servername", "localhost"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = bytearray()

    def seen(text: bytes) -> bool:
        try:
            out.extend(os.read(proc.stdout.fileno(), 65536))
        except BlockingIOError:
            pass
        return text in out

    try:
        os.set_blocking(proc.stdout.fileno(), False)
        proc.stdin.write(b"hello\n")
        proc.stdin.flush()
        run_until(loop, lambda: seen(b"\nhello\n"))
        proc.stdin.write(b"R\n")
        proc.stdin.flush()
        run_until(loop, lambda: seen(b"no renegotiation") or out.count(b"verify return:1")
                  > 2 or proc.poll() is not None)
        run_until(loop, lambda: seen(b"no renegotiation") or proc.poll() is not None)
    finally:
        proc.kill()
        proc.wait()
        proc.stdin.close()
        proc.stdout.close()
    assert b"RENEGOTIATING" in out
    assert b"no renegotiation" in out, out.decode(errors="replace")[-500:]
    lsn.close()


def test_bad_arguments_name_the_call(loop, certs):
    a, b = socket.socketpair()
    obj = Quiet(a, loop=loop)
    ctx = server_context(certs)
    with pytest.raises(TypeError, match=r"start_tls\(context\) takes an ssl.SSLContext"):
        obj.start_tls(object(), server_side=True)
    with pytest.raises(TypeError, match="server_side"):
        obj.start_tls(ctx)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="server_side must be True or False"):
        obj.start_tls(ctx, server_side=1)
    with pytest.raises(ValueError, match="handshake_timeout must be > 0"):
        obj.start_tls(ctx, server_side=True, handshake_timeout=0)
    with pytest.raises(TypeError, match="shutdown_timeout must be seconds"):
        obj.start_tls(ctx, server_side=True, shutdown_timeout="1")
    with pytest.raises(ValueError, match="server_hostname"):
        obj.start_tls(client_context(certs), server_side=False)  # checks host names
    assert obj.tls is None and type(obj) is Quiet
    obj.start_tls(ctx, server_side=True)
    assert obj.tls is not None and type(obj).__name__ == "Quiet"
    with pytest.raises(ValueError, match="already started"):
        obj.start_tls(ctx, server_side=True)
    obj.close()
    assert obj.tls is None and type(obj) is Quiet
    with pytest.raises(ValueError, match="closed"):
        obj.start_tls(ctx, server_side=True)
    with pytest.raises(TypeError, match="ssl.SSLContext"):
        danga.Listener.bind(("127.0.0.1", 0), loop=loop, ssl="cert.pem")
    with pytest.raises(TypeError, match="Listener"):
        danga.Listener(socket.socket(), loop=loop, ssl=True)
    b.close()


def test_an_ssl_socket_is_refused_with_a_pointer_to_start_tls(loop, certs):
    with socket.socket() as raw:
        wrapped = client_context(certs).wrap_socket(raw, server_hostname="localhost",
                                                    do_handshake_on_connect=False)
        with pytest.raises(TypeError, match="start_tls"):
            danga.Socket(wrapped, loop=loop)
        assert loop.watched_sockets() == 0
        wrapped.close()


def test_listener_tls_covers_writes_in_init_and_on_accept_overrides(loop, certs):
    class Banner(danga.Socket):
        def __init__(self, sock: Any, *, loop: danga.Loop) -> None:
            super().__init__(sock, loop=loop)
            self.write(b"220 banner, encrypted\r\n")  # TLS has started already
            self.write(lambda: self.close("sent"))

    class MyListener(danga.Listener):
        def on_accept(self, conn: socket.socket, addr: Any) -> None:
            Banner(conn, loop=self.loop)

    lsn = MyListener(danga.Listener.listening_socket(("127.0.0.1", 0)), loop=loop,
                     ssl=server_context(certs))

    def client() -> bytes:
        with tls_client(lsn.sock.getsockname()[1], client_context(certs)) as conn:
            return recv_exactly(conn, 100)

    assert peer(client).finish(loop) == b"220 banner, encrypted\r\n"
    lsn.close()


def test_connect_defaults_server_hostname_to_the_host(loop, certs):
    lsn, port, made = serve(loop, server_context(certs), Echo)
    obj = danga.connect(("localhost", port), Client, loop=loop, ssl=client_context(certs))
    run_until(loop, lambda: obj.got == Client.greeting)
    assert obj.tls.server_hostname == "localhost"
    assert obj.log == ["connect", ("handshake", "localhost", "TLSv1.3")]
    with pytest.raises(ValueError, match="server_hostname"):
        danga.connect("/tmp/no-such.sock", Client, loop=loop, ssl=client_context(certs))
    obj.close()
    lsn.close()


def test_steal_socket_ends_the_session(loop, certs):
    srv, cli = tls_pair(loop, certs, Quiet, Quiet)
    run_until(loop, lambda: srv.log and cli.log)
    raw = srv.steal_socket()
    assert srv.tls is None and srv.closed and type(srv) is Quiet
    assert loop.descriptor_map.get(raw.fileno()) is None
    raw.close()
    run_until(loop, lambda: cli.closed)
    # A hang-up (AF_UNIX, on backends that report it) closes first, as on any Socket.
    assert cli.close_reason in ("tls_truncated", "event_hup")


def test_a_write_during_a_renegotiation_waits_for_the_read(loop, certs):
    # openssl s_server renegotiates a TLS 1.2 session ("r" on its stdin). A write made
    # while the client's renegotiation waits for the server's answer cannot be
    # encrypted yet (SSL_write wants a read): it is held, and sent after the next read
    # step, in order (DJabberd's write_when_readable, inside the Socket).
    import os
    import re
    import shutil
    import subprocess

    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs the openssl command (apt-get install openssl)")
    proc = subprocess.Popen(
        [openssl, "s_server", "-accept", "127.0.0.1:0", "-tls1_2", "-cert",
         str(certs["server"]), "-key", str(certs["server.key"])],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = bytearray()

    def seen(text: bytes) -> bool:
        try:
            out.extend(os.read(proc.stdout.fileno(), 65536))
        except BlockingIOError:
            pass
        return text in out

    try:
        os.set_blocking(proc.stdout.fileno(), False)
        run_until(loop, lambda: seen(b"ACCEPT"))
        port = int(re.search(rb"ACCEPT 127\.0\.0\.1:(\d+)", out).group(1))
        obj = danga.connect(("127.0.0.1", port), Quiet, loop=loop,
                            ssl=client_context(certs), server_hostname="localhost")
        run_until(loop, lambda: ("handshake", "localhost", "TLSv1.2") in obj.log)
        obj.write(b"before\n")
        run_until(loop, lambda: seen(b"before\n"))
        obj.watch_read(False)  # the test reads the HelloRequest itself, below
        proc.stdin.write(b"r\n")
        proc.stdin.flush()
        run_until(loop, lambda: unread(obj.sock) > 0, 5.0)  # the HelloRequest
        assert obj.read(100) == b""  # answers it: our ClientHello goes out
        assert obj.write(b"during\n") is False  # the renegotiation waits for the server
        assert obj.write(b"after\n") is False  # behind it, in order
        # Not watching read: the engine reads for itself while a write waits for it.
        run_until(loop, lambda: seen(b"during\nafter\n"))
        assert not obj.closed
    finally:
        proc.kill()
        proc.wait()
        proc.stdin.close()
        proc.stdout.close()


def test_records_split_across_reads_complete_the_handshake(loop, certs):
    # The ClientHello, the client's Finished and an application record each arrive in
    # two pieces, the loop running in between: the engine must go back to the kernel
    # for the rest, never stall on the half it has.
    a, b = socket.socketpair()
    srv = Quiet(a, loop=loop)
    srv.start_tls(server_context(certs), server_side=True)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    cli = client_context(certs).wrap_bio(incoming, outgoing, server_hostname="localhost")

    def send_in_halves(data: bytes) -> None:
        for half in (data[:len(data) // 2], data[len(data) // 2:]):
            b.sendall(half)
            run_until(loop, lambda: unread(a) == 0)
            loop.run_once(0)

    for _ in range(2):  # the ClientHello, then the client's Finished
        with contextlib.suppress(ssl.SSLWantReadError):
            cli.do_handshake()
        send_in_halves(outgoing.read())
        run_until(loop, lambda: unread(b) > 0)
        incoming.write(b.recv(65536))
    run_until(loop, lambda: srv.log)
    assert srv.log == [("handshake", None, "TLSv1.3")]
    cli.write(b"x" * 5000)
    send_in_halves(outgoing.read())
    run_until(loop, lambda: len(srv.got) == 5000)
    b.close()


def test_set_writer_func_keeps_its_meaning_on_ciphertext(loop, certs):
    # The writer function replaces send() as on any Socket: on a TLS object it gets the
    # ciphertext, close_notify included; the TLS layer itself installs none.
    srv, cli = tls_pair(loop, certs, Quiet, Quiet)
    run_until(loop, lambda: srv.log and cli.log)
    sent: list[bytes] = []

    def writer(data: Any) -> int:
        sent.append(bytes(data))
        return srv.sock.send(data)

    srv.set_writer_func(writer)
    srv.write(b"secret plaintext")
    run_until(loop, lambda: cli.got == b"secret plaintext")
    assert len(sent) == 1 and b"secret" not in sent[0] and len(sent[0]) == 16 + 22
    srv.close("done")
    assert len(sent) == 2  # close_notify: one 24-byte alert record under TLS 1.3
    assert len(sent[1]) == 24
    run_until(loop, lambda: cli.closed)
    assert cli.close_reason in ("eof", "event_hup")


def test_listener_tls_starts_on_a_socket_object_the_fd_was_handed_to(loop, certs):
    made: list[danga.Socket] = []

    def factory(conn: socket.socket, *, loop: danga.Loop) -> danga.Socket:
        obj = Echo(socket.socket(fileno=conn.detach()), loop=loop)
        made.append(obj)
        return obj

    lsn = danga.Listener.bind(("127.0.0.1", 0), loop=loop, factory=factory,
                              ssl=server_context(certs))

    def client() -> bytes:
        with tls_client(lsn.sock.getsockname()[1], client_context(certs)) as conn:
            conn.sendall(b"over TLS")
            return recv_exactly(conn, 8)

    assert peer(client).finish(loop) == b"over TLS"
    assert made[0].log[0] == ("handshake", "TLSv1.3")
    lsn.close()


def test_listener_tls_warns_when_a_dup_of_the_connection_is_used(loop, certs, caplog):
    made: list[danga.Socket] = []

    def factory(conn: socket.socket, *, loop: danga.Loop) -> danga.Socket:
        obj = Echo(socket.fromfd(conn.fileno(), conn.family, conn.type), loop=loop)
        conn.close()
        made.append(obj)
        return obj

    lsn = danga.Listener.bind(("127.0.0.1", 0), loop=loop, factory=factory,
                              ssl=server_context(certs))
    with socket.create_connection(lsn.sock.getsockname()):
        run_until(loop, lambda: made)
    assert "TLS was not started" in caplog.text
    assert made[0].tls is None
    made[0].close()
    lsn.close()


def test_listener_tls_warns_when_on_accept_makes_no_socket(loop, certs, caplog):
    kept: list[socket.socket] = []

    class Keeper(danga.Listener):
        def on_accept(self, conn: socket.socket, addr: Any) -> None:
            kept.append(conn)  # handed elsewhere, not to a danga.Socket

    lsn = Keeper(danga.Listener.listening_socket(("127.0.0.1", 0)), loop=loop,
                 ssl=server_context(certs))
    with socket.create_connection(lsn.sock.getsockname()):
        run_until(loop, lambda: kept)
    assert "TLS was not started" in caplog.text
    assert not danga.socket.TLS_PENDING  # nothing left behind for a later Socket
    kept[0].close()
    lsn.close()


@pytest.mark.parametrize("with_cert", [True, False])
def test_client_certificates(loop, certs, with_cert):
    # The server requires a client certificate. Without one, TLS 1.3 lets the client
    # finish its handshake first: the server's refusal reaches it afterwards, as an
    # alert read with the data, and still goes to on_tls_error.
    ctx = server_context(certs)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(certs["ca"])
    lsn, port, made = serve(loop, ctx, Echo)
    cctx = client_context(certs)
    if with_cert:
        cctx.load_cert_chain(certs["client"], certs["client.key"])
    obj = danga.connect(("127.0.0.1", port), Client, loop=loop, ssl=cctx)
    if with_cert:
        run_until(loop, lambda: obj.got == Client.greeting)
        subject = dict(pair[0] for pair in made[0].tls.getpeercert()["subject"])
        assert subject["commonName"] == "danga client"
        obj.close()
    else:
        run_until(loop, lambda: obj.closed and made and made[0].closed)
        assert made[0].close_reason == "tls_error: PEER_DID_NOT_RETURN_A_CERTIFICATE"
        assert obj.log[-1] == ("error", "SSLError")
        assert obj.close_reason == "tls_error: TLSV13_ALERT_CERTIFICATE_REQUIRED"
    lsn.close()
