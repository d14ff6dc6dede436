"""danga's TLS against real peers: curl, the openssl CLI and Python's ssl module.

The servers are the examples (examples/https_hello.py and examples/starttls.py) run
in-process on the ``loop`` fixture (every backend of the matrix) with their read size set
to 1, 7 and 65,536 bytes: a read size smaller than a TLS record leaves plaintext buffered
inside OpenSSL, where no poller sees it, and a server that forgets it stalls. The tools
run as subprocesses (or, for Python's ssl module, on a thread) while the test runs the
loop until they are done, against a deadline. The certificates (a CA and a server
certificate for localhost and 127.0.0.1) are made once per session with the ``openssl``
CLI. The examples' scripts are also run as real subprocesses on every installed backend.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import select
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import danga
from danga.testing import backend_matrix, run_until

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))
import https_hello  # noqa: E402  (examples/https_hello.py)
import starttls  # noqa: E402  (examples/starttls.py)

from test_examples import Script  # noqa: E402

OPENSSL = shutil.which("openssl")
CURL = shutil.which("curl")
needs_curl = pytest.mark.skipif(CURL is None, reason="curl is not installed (apt-get install curl)")
pytestmark = [
    pytest.mark.skipif(OPENSSL is None, reason="the openssl CLI is not installed "
                       "(apt-get install openssl); it makes the certificates"),
    pytest.mark.timeout(60),
]
#: How long any one peer may take: none of them should come near it.
DEADLINE = 20.0
READ_SIZES = [1, 7, 65536]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "installed_backend" in metafunc.fixturenames:
        names = [name for name, _ in backend_matrix(metafunc.config)
                 if name in danga.backends.names()]
        metafunc.parametrize("installed_backend", names)


def pattern(n: int) -> bytes:
    """What https_hello sends for /bytes/N: the bytes 0..255 repeated."""
    return (bytes(range(256)) * (n // 256 + 1))[:n]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- certificates ------------------------------------------------------------------------

@dataclass(frozen=True)
class Certs:
    ca: str  # the CA certificate the clients trust
    cert: str  # the server's certificate (localhost, 127.0.0.1), signed by the CA
    key: str

    def server_context(self) -> ssl.SSLContext:
        return https_hello.server_context(self.cert, self.key)

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca)
        ctx.verify_flags |= ssl.VERIFY_X509_STRICT
        return ctx


def _openssl(*args: str, cwd: Path) -> None:
    assert OPENSSL is not None
    proc = subprocess.run([OPENSSL, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=DEADLINE, check=False)
    assert proc.returncode == 0, f"openssl {' '.join(args)}: {proc.stderr}"


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """A CA and a server certificate for localhost and 127.0.0.1, made with the CLI."""
    d = tmp_path_factory.mktemp("tls")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", "-new", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=danga test CA", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    _openssl("req", "-new", *ec, "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=localhost", cwd=d)
    (d / "ext.cnf").write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf",
             cwd=d)
    return Certs(str(d / "ca.pem"), str(d / "server.pem"), str(d / "server.key"))


# -- running peers while the loop runs --------------------------------------------------

@dataclass
class ToolResult:
    returncode: int
    stdout: bytes
    stderr: bytes


def run_tool(loop: danga.Loop, argv: list[str], stdin: bytes = b"",
             timeout: float = DEADLINE) -> ToolResult:
    """Run a command to completion while running *loop* (the server it talks to).

    Its output goes to files, never pipes: a peer blocked on a full pipe would stall."""
    with tempfile.TemporaryFile() as fin, tempfile.TemporaryFile() as fout, \
            tempfile.TemporaryFile() as ferr:
        fin.write(stdin)
        fin.seek(0)
        proc = subprocess.Popen(argv, stdin=fin, stdout=fout, stderr=ferr)
        try:
            run_until(loop, lambda: proc.poll() is not None, timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            fout.seek(0)
            ferr.seek(0)
            out, err = fout.read(), ferr.read()
    return ToolResult(proc.returncode, out, err)


def in_thread(loop: danga.Loop, fn: Callable[[], Any], timeout: float = DEADLINE) -> Any:
    """Run ``fn()`` on a thread while running *loop*; returns its result (or raises)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:  # handed to the test thread
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    run_until(loop, lambda: not thread.is_alive(), timeout)
    if "error" in box:
        raise box["error"]
    return box["result"]


def connections(loop: danga.Loop, cls: type) -> list[Any]:
    return [obj for obj in loop.descriptor_map.values() if isinstance(obj, cls)]


# -- the HTTPS example, in-process -------------------------------------------------------

@pytest.fixture(params=READ_SIZES, ids=lambda n: f"read{n}")
def read_size(request: pytest.FixtureRequest) -> int:
    return int(request.param)


def https_listen(loop: danga.Loop, certs: Certs, read_size: int = 65536, *,
                 handshake_timeout: float = 10.0, shutdown_timeout: float = 10.0,
                 sndbuf: int | None = None, cls: type | None = None) -> int:
    """examples/https_hello.py's listener on *loop*; returns its port. *sndbuf* sets the
    accepted sockets' SO_SNDBUF (small: the kernel pushes back sooner); *cls* replaces
    the connection class (a subclass that records what it does)."""
    make = https_hello.make_factory(certs.server_context(), read_size, handshake_timeout,
                                    shutdown_timeout)
    if cls is not None:
        make = functools.partial(cls, **make.keywords)  # type: ignore[attr-defined]

    def factory(conn: socket.socket, *, loop: danga.Loop) -> Any:
        if sndbuf is not None:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        return make(conn, loop=loop)

    lsn = danga.Listener.bind(("127.0.0.1", 0), loop=loop, factory=factory)
    return int(lsn.sock.getsockname()[1])


@pytest.fixture
def https_port(loop: danga.Loop, certs: Certs, read_size: int) -> int:
    return https_listen(loop, certs, read_size)


def curl(loop: danga.Loop, certs: Certs, port: int, *args: str) -> ToolResult:
    assert CURL is not None
    return run_tool(loop, [CURL, "-sS", "--max-time", str(DEADLINE), "--cacert", certs.ca,
                           "--resolve", f"localhost:{port}:127.0.0.1", *args])


@needs_curl
def test_curl_1mb_body_and_keep_alive(loop, certs, https_port, tmp_path):
    base = f"https://localhost:{https_port}"
    res = curl(loop, certs, https_port, "-w", "%{http_code} %{num_connects} %{ssl_verify_result}\n",
               "-o", str(tmp_path / "big"), f"{base}/bytes/1000000",
               "-o", str(tmp_path / "small"), f"{base}/?size=300")
    assert res.returncode == 0, res.stderr
    # One connection (keep-alive), certificate verified, both answered 200.
    assert res.stdout.decode().splitlines() == ["200 1 0", "200 0 0"]
    assert sha((tmp_path / "big").read_bytes()) == sha(pattern(1_000_000))
    assert (tmp_path / "small").read_bytes() == pattern(300)


@needs_curl
def test_curl_through_listener_ssl(loop, certs, tmp_path):
    # The same connection class behind Listener.bind(..., ssl=context): the listener
    # starts TLS on each accepted connection before the class sees a byte.
    lsn = danga.Listener.bind(("127.0.0.1", 0), loop=loop, ssl=certs.server_context(),
                              factory=functools.partial(https_hello.HTTPSConnection,
                                                        read_size=7))
    port = lsn.sock.getsockname()[1]
    res = curl(loop, certs, port, "-w", "%{http_code}", "-o", str(tmp_path / "body"),
               f"https://localhost:{port}/bytes/1000000")
    assert res.returncode == 0, res.stderr
    assert res.stdout == b"200"
    assert sha((tmp_path / "body").read_bytes()) == sha(pattern(1_000_000))


@needs_curl
def test_curl_limit_rate_back_pressure(loop, certs, read_size, tmp_path):
    # curl reads at 8 MB/s and the server's socket buffer is small: the kernel pushes
    # back, the example stops writing pieces (its write queue stays bounded) and goes
    # on as curl drains it. (Loopback's default buffers would take the whole body.)
    steps: list[tuple[int, int]] = []  # (body bytes left, bytes queued) after each step

    class Probe(https_hello.HTTPSConnection):
        __slots__ = ()

        def send_body(self) -> None:
            super().send_body()
            steps.append((self.left, self.write_buf_size))

    https_port = https_listen(loop, certs, read_size, sndbuf=32768, cls=Probe)
    res = curl(loop, certs, https_port, "--limit-rate", "8M", "-w", "%{http_code}",
               "-o", str(tmp_path / "body"), f"https://localhost:{https_port}/bytes/1000000")
    assert res.returncode == 0, res.stderr
    assert res.stdout == b"200"
    assert sha((tmp_path / "body").read_bytes()) == sha(pattern(1_000_000))
    paused = [left for left, _ in steps if left]
    assert paused, f"the kernel never pushed back: {steps}"
    # High water, plus one piece and its TLS framing.
    assert max(queued for _, queued in steps) < https_hello.HIGH_WATER + 2 * https_hello.PIECE


def s_client(loop: danga.Loop, certs: Certs, port: int, *args: str,
             stdin: bytes = b"") -> ToolResult:
    assert OPENSSL is not None
    return run_tool(loop, [OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}",
                           "-servername", "localhost", "-CAfile", certs.ca,
                           "-verify_return_error", *args], stdin=stdin)


def test_s_client_quiet(loop, certs, https_port):
    request = b"GET /bytes/100000 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    res = s_client(loop, certs, https_port, "-quiet", stdin=request)
    assert res.returncode == 0, res.stderr
    head, _, body = res.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Length: 100000\r\n" in head
    assert body == pattern(100_000)


def test_s_client_tls12_session_resumption(loop, certs, https_port):
    res = s_client(loop, certs, https_port, "-tls1_2", "-reconnect")
    assert res.returncode == 0, res.stderr
    out = res.stdout.decode()
    # One full handshake, then five resumed sessions.
    assert len(re.findall(r"^New, TLSv1\.2", out, re.M)) == 1, out
    assert len(re.findall(r"^Reused, TLSv1\.2", out, re.M)) == 5, out


def test_s_client_renegotiation_is_refused(loop, certs, https_port):
    # "R" on a line of its own asks s_client (interactive: no -quiet) to renegotiate.
    # The server refuses: s_client reports it and gives up. Had the server accepted,
    # s_client would wait on its open stdin until the deadline.
    assert OPENSSL is not None
    argv = [OPENSSL, "s_client", "-connect", f"127.0.0.1:{https_port}", "-tls1_2",
            "-servername", "localhost", "-CAfile", certs.ca]
    with tempfile.TemporaryFile() as fout:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=fout,
                                stderr=subprocess.STDOUT)
        assert proc.stdin is not None
        try:
            proc.stdin.write(b"R\n")
            proc.stdin.flush()
            run_until(loop, lambda: proc.poll() is not None, DEADLINE)
        finally:
            proc.stdin.close()
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        fout.seek(0)
        out = fout.read().decode(errors="replace")
    assert "RENEGOTIATING" in out, out
    assert "no renegotiation" in out, out
    # The server closed that connection with a TLS error, and nothing else is left.
    run_until(loop, lambda: not connections(loop, https_hello.HTTPSConnection))


def test_python_ssl_client_reads_until_close_notify(loop, certs, https_port):
    ctx = certs.client_context()

    def client() -> tuple[bytes, str | None]:
        raw = socket.create_connection(("127.0.0.1", https_port), timeout=DEADLINE)
        # suppress_ragged_eofs=False: an EOF without close_notify raises SSLEOFError.
        with ctx.wrap_socket(raw, server_hostname="localhost",
                             suppress_ragged_eofs=False) as s:
            s.sendall(b"GET /bytes/200000 HTTP/1.1\r\nHost: localhost\r\n"
                      b"Connection: close\r\n\r\n")
            data = bytearray()
            while chunk := s.recv(65536):
                data += chunk
            return bytes(data), s.version()

    data, version = in_thread(loop, client)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert version == "TLSv1.3"
    assert body == pattern(200_000)


# -- client mode: danga.connect(..., ssl=ctx) --------------------------------------------

class Fetch(danga.Socket):
    """Sends a request at once (held until the handshake is done), reads to EOF."""

    def __init__(self, sock: socket.socket, *, loop: danga.Loop, request: bytes = b"",
                 read_size: int = 65536) -> None:
        super().__init__(sock, loop=loop)
        self.read_size = read_size
        self.got = bytearray()
        self.eof = False
        self.handshakes = 0
        self.tls_version: str | None = None
        self.errors: list[Exception] = []
        if request:
            self.write(request)
        self.watch_read(True)

    def on_tls_handshake(self) -> None:
        self.handshakes += 1
        self.tls_version = self.tls.version()

    def on_tls_error(self, exc: Exception) -> None:
        self.errors.append(exc)
        super().on_tls_error(exc)

    def event_read(self) -> None:
        data = self.read(self.read_size)
        if data is None:
            self.eof = True
            self.close("eof")
        elif data:
            self.got += data


def fetch(loop: danga.Loop, port: int, ctx: ssl.SSLContext, hostname: str = "localhost",
          request: bytes = b"GET / HTTP/1.0\r\n\r\n", read_size: int = 65536) -> Fetch:
    obj = danga.connect(("127.0.0.1", port),
                        functools.partial(Fetch, request=request, read_size=read_size),
                        loop=loop, ssl=ctx, server_hostname=hostname)
    assert isinstance(obj, Fetch)
    run_until(loop, lambda: obj.closed, DEADLINE)
    return obj


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def s_server(certs: Certs) -> Iterator[int]:
    """``openssl s_server -www`` on a free port (one per test process); yields the port."""
    assert OPENSSL is not None
    for _ in range(5):  # the free port can be taken again before s_server binds it
        port = _free_port()
        proc = subprocess.Popen([OPENSSL, "s_server", "-www", "-accept", f"127.0.0.1:{port}",
                                 "-cert", certs.cert, "-key", certs.key],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        out, deadline = b"", time.monotonic() + DEADLINE
        while b"ACCEPT" not in out and proc.poll() is None:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if select.select([proc.stdout], [], [], left)[0]:
                out += os.read(proc.stdout.fileno(), 4096)
        if b"ACCEPT" in out:
            break
        proc.kill()
        proc.wait()
        proc.stdout.close()
    else:
        pytest.fail(f"openssl s_server did not start: {out!r}")
    try:
        yield port
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def test_connect_to_openssl_s_server(loop, certs, s_server, read_size):
    obj = fetch(loop, s_server, certs.client_context(), read_size=read_size)
    assert obj.errors == []
    assert obj.eof, obj.close_reason  # s_server -www ends with close_notify
    assert obj.handshakes == 1
    assert obj.tls_version == "TLSv1.3"
    assert obj.got.startswith(b"HTTP/1.0 200 ok\r\n")
    assert b"Ciphers supported in s_server binary" in obj.got
    assert obj.got.rstrip().endswith(b"</HTML>")


def test_connect_to_python_ssl_server(loop, certs, read_size):
    ctx = certs.server_context()
    payload = pattern(40_000)  # three TLS records and a bit: read a byte at a time too
    lsn = socket.create_server(("127.0.0.1", 0))
    lsn.settimeout(DEADLINE)

    def server() -> bytes:
        conn, _ = lsn.accept()
        conn.settimeout(DEADLINE)
        with ctx.wrap_socket(conn, server_side=True) as s:
            request = b""
            while not request.endswith(b"\r\n\r\n"):
                chunk = s.recv(1024)
                assert chunk, "the client hung up"
                request += chunk
            s.sendall(payload)
            s.unwrap()  # close_notify, and wait for the client's
        return request

    box: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: box.update(request=server()), daemon=True)
    thread.start()
    try:
        obj = fetch(loop, lsn.getsockname()[1], certs.client_context(),
                    request=b"HELLO\r\n\r\n", read_size=read_size)
        run_until(loop, lambda: not thread.is_alive(), DEADLINE)
    finally:
        lsn.close()
    assert box.get("request") == b"HELLO\r\n\r\n"
    assert obj.errors == [] and obj.eof, obj.close_reason
    assert bytes(obj.got) == payload


def test_connect_wrong_host_name_fails(loop, certs, s_server):
    obj = fetch(loop, s_server, certs.client_context(), hostname="wrong.example")
    assert len(obj.errors) == 1, obj.errors
    exc = obj.errors[0]
    assert isinstance(exc, ssl.SSLCertVerificationError)
    assert "hostname mismatch" in exc.verify_message.lower()
    assert obj.got == b""
    assert obj.close_reason is not None and "hostname mismatch" in obj.close_reason.lower()


def test_connect_untrusted_certificate_fails(loop, certs, s_server, tmp_path):
    # A client that trusts another CA, made here. (Not the server's own certificate as
    # the "CA": from Python 3.13 on the default context sets VERIFY_X509_PARTIAL_CHAIN,
    # which accepts a trusted leaf as it stands.)
    _openssl("req", "-x509", "-new", "-newkey", "ec", "-pkeyopt",
             "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "other.key", "-out",
             "other.pem", "-days", "2", "-subj", "/CN=another CA", "-addext",
             "basicConstraints=critical,CA:TRUE", cwd=tmp_path)
    ctx = ssl.create_default_context(cafile=str(tmp_path / "other.pem"))
    obj = fetch(loop, s_server, ctx)
    assert len(obj.errors) == 1, obj.errors
    exc = obj.errors[0]
    assert isinstance(exc, ssl.SSLCertVerificationError)
    assert "hostname" not in exc.verify_message.lower()
    assert "issuer" in exc.verify_message.lower(), exc.verify_message
    assert obj.got == b""
    assert obj.close_reason is not None and "issuer" in obj.close_reason.lower()


# -- STARTTLS ----------------------------------------------------------------------------

def smtp_listen(loop: danga.Loop, certs: Certs, read_size: int = 65536,
                **timeouts: float) -> int:
    srv = starttls.SMTPServer(socket.create_server(("127.0.0.1", 0)), loop=loop,
                              context=certs.server_context(), read_size=read_size,
                              **timeouts)
    return int(srv.sock.getsockname()[1])


def test_starttls_with_smtplib(loop, certs, read_size):
    port = smtp_listen(loop, certs, read_size)
    ctx = certs.client_context()

    def client() -> list[Any]:
        with smtplib.SMTP("127.0.0.1", port, timeout=DEADLINE) as smtp:
            smtp.ehlo("client.example")
            before = smtp.has_extn("starttls")
            code, _ = smtp.starttls(context=ctx, )
            # smtplib forgets what it knew and says EHLO again, now over TLS.
            smtp.ehlo("client.example")
            after = smtp.has_extn("starttls")
            noop = smtp.noop()[0]
            version = smtp.sock.version()
            return [before, code, after, noop, version, smtp.quit()[0]]

    assert in_thread(loop, client) == [True, 220, False, 250, "TLSv1.3", 221]


def test_starttls_with_openssl_s_client(loop, certs, read_size):
    port = smtp_listen(loop, certs, read_size)
    res = s_client(loop, certs, port, "-starttls", "smtp", "-quiet",
                   stdin=b"NOOP\r\nMAIL FROM:<a@example.org>\r\nQUIT\r\n")
    assert res.returncode == 0, res.stderr
    # s_client said EHLO and STARTTLS itself; then our lines went over TLS.
    assert res.stdout.splitlines() == [b"250 2.0.0 OK",
                                       b"502 5.5.2 Error: command not recognized",
                                       b"221 2.0.0 Bye"]


def _recv_until_eof(sock: socket.socket) -> bytes:
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def test_starttls_pipelined_plaintext_is_refused(loop, certs, read_size, monkeypatch):
    # CVE-2011-0411: "NOOP" sent in the same packet as STARTTLS must never be run as if
    # it had come over TLS (its reply would be encrypted in the new session).
    port = smtp_listen(loop, certs, read_size)

    def attacker() -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            greeting = b""
            while not greeting.endswith(b"\r\n"):
                chunk = s.recv(1)
                assert chunk, f"closed after {greeting!r}"
                greeting += chunk
            assert greeting.startswith(b"220 ")
            s.sendall(b"STARTTLS\r\nNOOP\r\n")
            return _recv_until_eof(s)

    conns: list[starttls.SMTPConnection] = []
    real = starttls.SMTPConnection.command

    def spy(self: starttls.SMTPConnection, line: bytes) -> None:
        conns.append(self)
        commands.append(line)
        real(self, line)

    commands: list[bytes] = []
    monkeypatch.setattr(starttls.SMTPConnection, "command", spy)
    reply = in_thread(loop, attacker)
    run_until(loop, lambda: all(c.closed for c in conns))
    assert commands == [b"STARTTLS"], commands  # NOOP never ran
    assert reply.startswith(b"220 2.0.0 Ready to start TLS\r\n")
    assert b"250" not in reply
    reason = conns[0].close_reason or ""
    if read_size == 1:
        # STARTTLS was read a byte at a time: "NOOP" was still in the kernel when TLS
        # started, so it was read as a (broken) TLS record and failed the handshake.
        assert reason.startswith("tls"), reason
    else:
        assert reason == "starttls_pipelined"
        assert reply.endswith(b"554 5.5.1 Error: plaintext after STARTTLS refused\r\n")


# -- timeouts ----------------------------------------------------------------------------

def test_silent_client_is_closed_at_the_handshake_timeout(loop, certs):
    port = https_listen(loop, certs, handshake_timeout=0.2)
    start = time.monotonic()  # before the connection, so before its timer
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as s:
        run_until(loop, lambda: connections(loop, https_hello.HTTPSConnection))
        (conn,) = connections(loop, https_hello.HTTPSConnection)
        run_until(loop, lambda: conn.closed, DEADLINE)
        assert time.monotonic() - start >= 0.2  # the timer's, not another reason
        assert conn.close_reason == "tls_handshake_timeout"
        assert s.recv(100) == b""  # closed, nothing sent


def test_unanswered_close_notify_does_not_hold_close(loop, certs):
    # The client handshakes, asks for 4 MB and never reads (a small receive buffer): the
    # server's queue cannot drain, so neither can its close_notify, and the client never
    # answers it. Whatever finishes the close may hold the fd for the shutdown timeout,
    # no longer.
    port = https_listen(loop, certs, shutdown_timeout=0.2)
    ctx = certs.client_context()
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.settimeout(DEADLINE)
    raw.connect(("127.0.0.1", port))
    try:
        tls = ctx.wrap_socket(raw, server_hostname="localhost", do_handshake_on_connect=False)
        in_thread(loop, tls.do_handshake)
        tls.sendall(b"GET /bytes/4000000 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        run_until(loop, lambda: any(c.write_buf_size for c in
                                    connections(loop, https_hello.HTTPSConnection)))
        (conn,) = connections(loop, https_hello.HTTPSConnection)
        fd = conn.fd
        start = time.monotonic()
        conn.close("test")
        assert conn.tls is None
        holder = loop.descriptor_map.get(fd)  # what finishes the close, if anything
        run_until(loop, lambda: fd not in loop.descriptor_map, DEADLINE)
        elapsed = time.monotonic() - start
        assert elapsed < 5.0, elapsed  # 0.2 s, and slack for a busy machine
        if holder is not None:
            assert holder.close_reason == "tls_shutdown_timeout"
    finally:
        raw.close()


def test_close_notify_is_sent_without_waiting_for_the_reply(loop, certs):
    # A client that reads everything but never answers close_notify (nor closes): the
    # server's fd is released as soon as its close_notify is out, long before the
    # (default, 10 s here) shutdown timeout.
    port = https_listen(loop, certs)
    ctx = certs.client_context()
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost", suppress_ragged_eofs=False,
                            do_handshake_on_connect=False) as tls:
        in_thread(loop, tls.do_handshake)
        in_thread(loop, lambda: tls.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n"
                                            b"Connection: close\r\n\r\n"))
        run_until(loop, lambda: not loop.descriptor_map.keys()
                  - {lsn.fd for lsn in connections(loop, danga.Listener)}, DEADLINE / 4)

        def read_all() -> bytes:
            data = b""
            while chunk := tls.recv(4096):
                data += chunk
            return data

        assert in_thread(loop, read_all).startswith(b"HTTP/1.1 200 OK\r\n")


# -- the scripts -------------------------------------------------------------------------

@needs_curl
def test_https_hello_script(installed_backend, certs, tmp_path):
    script = Script("https_hello", "--cert", certs.cert, "--key", certs.key,
                    "--read-size", "7", "--backend", installed_backend)
    try:
        assert CURL is not None
        res = subprocess.run([CURL, "-sS", "--max-time", str(DEADLINE), "--cacert", certs.ca,
                              "--resolve", f"localhost:{script.port}:127.0.0.1",
                              "-o", str(tmp_path / "body"), "-w", "%{http_code}",
                              f"https://localhost:{script.port}/bytes/300000"],
                             capture_output=True, timeout=DEADLINE, check=False)
        assert res.returncode == 0, res.stderr
        assert res.stdout == b"200"
        assert (tmp_path / "body").read_bytes() == pattern(300_000)
    finally:
        code = script.stop(signal.SIGTERM)
    assert code == 0


def test_starttls_script(installed_backend, certs):
    script = Script("starttls", "--cert", certs.cert, "--key", certs.key,
                    "--backend", installed_backend)
    try:
        with smtplib.SMTP("127.0.0.1", script.port, timeout=DEADLINE) as smtp:
            smtp.starttls(context=certs.client_context())
            assert smtp.noop()[0] == 250
            # Left open: the shutdown closes it with a 421 reply.
            code = script.stop(signal.SIGTERM)
            assert smtp.noop()[0] == 421
    finally:
        if script.proc.poll() is None:
            code = script.stop(signal.SIGTERM)
    assert code == 0
