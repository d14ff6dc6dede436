"""The examples (examples/echo.py, examples/lockd.py), driven over 127.0.0.1.

In-process tests import the example classes and run them on the ``loop`` fixture (every
backend of the matrix), with plain non-blocking client sockets pumped from the
``run_until`` condition. Subprocess tests start the real scripts with ``--port 0`` on
every installed backend, talk to them, send SIGTERM (or SIGINT) and check they exit 0.
"""

from __future__ import annotations

import importlib.util
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

import danga
from danga.testing import backend_matrix, run_until

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _load(name: str) -> ModuleType:
    # lockd.py imports echo.py as a sibling, exactly as when run as a script.
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


echo = _load("echo")
lockd = _load("lockd")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # The subprocess tests need a backend the script itself can name with --backend:
    # the matrix's installed backends (not test-only emulations registered in-process).
    if "installed_backend" in metafunc.fixturenames:
        names = [name for name, _ in backend_matrix(metafunc.config)
                 if name in danga.backends.names()]
        metafunc.parametrize("installed_backend", names)


class Peer:
    """A non-blocking client socket with an outbox and an inbox, pumped by hand."""

    def __init__(self, addr: tuple[str, int], rcvbuf: int | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.connect(addr)
        self.sock.setblocking(False)
        self.out = bytearray()
        self.inbox = bytearray()
        self.eof = False
        self.sent = 0

    def send(self, data: bytes) -> None:
        self.out += data

    def pump(self, read: bool = True) -> None:
        while self.out:
            try:
                n = self.sock.send(self.out)
            except BlockingIOError:
                break
            self.sent += n
            del self.out[:n]
        while read and not self.eof:
            try:
                chunk = self.sock.recv(65536)
            except BlockingIOError:
                break
            except ConnectionResetError:
                self.eof = True
                break
            if not chunk:
                self.eof = True
            self.inbox += chunk

    def close(self) -> None:
        self.sock.close()


def _pump_until(loop: danga.Loop, peers: list[Peer], condition, timeout: float = 10.0,
                read: bool = True) -> None:
    def check() -> bool:
        for peer in peers:
            peer.pump(read)
        return bool(condition())

    run_until(loop, check, timeout)


def _objects(loop: danga.Loop, cls: type) -> list:
    return [obj for obj in loop.descriptor_map.values()
            if isinstance(obj, cls) and not obj.closed]


def _watching(obj: danga.Socket) -> str:
    """The watch flags of as_string(): "Echo(RW): open to ..." -> "RW"."""
    match = re.match(r"\w+\((\w*)\)", obj.as_string())
    assert match, obj.as_string()
    return match.group(1)


# -- echo, in process ------------------------------------------------------------------


@pytest.fixture
def echo_server(loop: danga.Loop):
    server = echo.EchoServer(socket.create_server(("127.0.0.1", 0)), loop=loop)
    yield server, server.sock.getsockname()


def test_echo_every_byte_comes_back(loop, echo_server):
    _, addr = echo_server
    payloads = [b"x", os.urandom(64), os.urandom(1000), os.urandom(300_000)]
    peers = [Peer(addr) for _ in payloads]
    for peer, payload in zip(peers, payloads, strict=True):
        peer.send(payload)
    _pump_until(loop, peers,
                lambda: all(len(p.inbox) >= len(d) for p, d in zip(peers, payloads, strict=True)))
    for peer, payload in zip(peers, payloads, strict=True):
        assert bytes(peer.inbox) == payload
    assert len(_objects(loop, echo.Echo)) == len(peers)
    for peer in peers:
        peer.close()
    # A client hanging up closes its server-side connection; only the listener stays.
    run_until(loop, lambda: not _objects(loop, echo.Echo))
    assert list(loop.descriptor_map.values()) == [echo_server[0]]


def test_echo_ping_pong_many_messages(loop, echo_server):
    _, addr = echo_server
    peer = Peer(addr)
    for i in range(200):
        message = f"message {i:04d}\n".encode()
        peer.send(message)
        _pump_until(loop, [peer], lambda m=message: peer.inbox.endswith(m))
    assert peer.inbox == b"".join(f"message {i:04d}\n".encode() for i in range(200))
    peer.close()


class CountingPoller:
    """Wraps a loop's poller and counts its modify() and poll() calls."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.name = inner.name
        self.modifies = 0
        self.polls = 0

    def modify(self, fd, old, new):
        self.modifies += 1
        return self.inner.modify(fd, old, new)

    def poll(self, timeout):
        self.polls += 1
        return self.inner.poll(timeout)

    def close(self):
        self.inner.close()


def test_echo_steady_state_changes_no_interest(loop, echo_server):
    # The in-process twin of benchmarks/syscalls.py: once the connections are set up, a
    # ping-pong of small messages never changes a registration (no epoll_ctl), on any
    # backend. (The syscall counts themselves need strace: see the benchmark.)
    _, addr = echo_server
    peers = [Peer(addr) for _ in range(10)]
    messages = [bytes([65 + i]) * 63 + b"\n" for i in range(len(peers))]

    def round_trip() -> None:
        for peer, message in zip(peers, messages, strict=True):
            peer.inbox.clear()
            peer.send(message)
        _pump_until(loop, peers, lambda: all(
            len(p.inbox) >= len(m) for p, m in zip(peers, messages, strict=True)))
        for peer, message in zip(peers, messages, strict=True):
            assert bytes(peer.inbox) == message

    round_trip()  # accepts and first registrations happen here
    counting = CountingPoller(loop.backend)
    loop.backend = counting
    try:
        for _ in range(50):
            round_trip()
    finally:
        loop.backend = counting.inner
    assert counting.modifies == 0
    assert counting.polls >= 50  # at least one poll per round trip
    for peer in peers:
        peer.close()


def test_echo_back_pressure_pauses_and_resumes(loop):
    # A small high-water mark and small kernel buffers, so a client that sends without
    # reading fills the server's queue quickly.
    class SmallBuffers(echo.EchoServer):
        __slots__ = ()

        def on_accept(self, conn, addr):
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
            echo.Echo(conn, loop=self.loop, high_water=self.high_water)

    server = SmallBuffers(socket.create_server(("127.0.0.1", 0)), loop=loop,
                          high_water=16 * 1024)
    peer = Peer(server.sock.getsockname(), rcvbuf=8192)
    pattern = bytes(range(256)) * 256  # 64 KiB, position-dependent
    limit = 64 * len(pattern)

    def paused() -> bool:
        if len(peer.out) < len(pattern) and peer.sent + len(peer.out) < limit:
            peer.send(pattern)
        conns = _objects(loop, echo.Echo)
        return bool(conns) and conns[0].paused

    _pump_until(loop, [peer], paused, read=False)
    conn = _objects(loop, echo.Echo)[0]
    assert "R" not in _watching(conn)  # not reading while paused
    assert conn.write_buf_size > 16 * 1024

    # Stop producing; read everything back. The server resumes once its queue drains.
    peer.out.clear()
    total = peer.sent
    _pump_until(loop, [peer], lambda: len(peer.inbox) >= total and not conn.paused)
    expected = (pattern * (total // len(pattern) + 1))[:total]
    assert bytes(peer.inbox) == expected
    assert conn.pauses >= 1 and not conn.paused
    assert "R" in _watching(conn)

    # Reading really resumed: a new message is echoed.
    peer.send(b"after")
    _pump_until(loop, [peer], lambda: len(peer.inbox) >= total + 5)
    assert bytes(peer.inbox[total:]) == b"after"
    peer.close()


# -- lockd, in process -----------------------------------------------------------------


@pytest.fixture
def lock_server(loop: danga.Loop):
    return lockd.LockServer(socket.create_server(("127.0.0.1", 0)), loop=loop,
                            idle_timeout=60.0)


# ddlockd's replies, byte for byte (server/lib/DDLockd/Client.pm: ok_line writes "OK "
# and its URL arguments, none here; err_line writes "ERR CODE " and the code's text).
OK = b"OK \r\n"
TAKEN = b"ERR taken \r\n"
DIDNTHAVE = b"ERR didnthave \r\n"
EMPTY_LOCK = b"ERR empty_lock \r\n"
UNKNOWN = b"ERR unknown_command Unknown+server+command\r\n"


def _ask(loop, peer: Peer, line: bytes, newlines: int = 1) -> bytes:
    """Send *line* and CRLF; return every byte received up to the *newlines*-th LF."""
    have = len(peer.inbox)
    peer.send(line + b"\r\n")
    _pump_until(loop, [peer], lambda: peer.inbox.count(b"\n", have) >= newlines or peer.eof)
    return bytes(peer.inbox[have:])


def test_lockd_a_held_lock_cannot_be_taken(loop, lock_server):
    addr = lock_server.sock.getsockname()
    a, b = Peer(addr), Peer(addr)
    assert _ask(loop, a, b"trylock lock=foo") == OK
    assert _ask(loop, b, b"trylock lock=foo") == TAKEN
    assert _ask(loop, a, b"trylock lock=foo") == TAKEN  # not re-entrant, as ddlockd
    assert _ask(loop, b, b"releaselock lock=foo") == DIDNTHAVE
    assert _ask(loop, b, b"trylock lock=bar") == OK
    assert _ask(loop, a, b"releaselock lock=foo") == OK
    assert _ask(loop, b, b"trylock lock=foo") == OK
    assert _ask(loop, a, b"trylock lock=foo") == TAKEN
    assert set(lock_server.holders) == {b"foo", b"bar"}
    a.close()
    b.close()


def test_lockd_locks_are_released_when_the_holder_disconnects(loop, lock_server):
    addr = lock_server.sock.getsockname()
    a, b = Peer(addr), Peer(addr)
    assert _ask(loop, a, b"trylock lock=one") == OK
    assert _ask(loop, a, b"trylock lock=two") == OK
    assert _ask(loop, b, b"trylock lock=one") == TAKEN
    a.close()
    run_until(loop, lambda: not lock_server.holders)
    assert _ask(loop, b, b"trylock lock=one") == OK
    assert _ask(loop, b, b"trylock lock=two") == OK
    b.close()


def test_lockd_other_commands(loop, lock_server):
    addr = lock_server.sock.getsockname()
    a = Peer(addr)
    assert _ask(loop, a, b"noop") == OK
    assert _ask(loop, a, b"NOOP") == OK  # ddlockd lower-cases the command
    assert _ask(loop, a, b"noop\tignored") == OK  # /^(\w+)\s*(.*)/: any blank separates
    assert _ask(loop, a, b"frobnicate lock=x") == UNKNOWN
    assert _ask(loop, a, b"status") == UNKNOWN  # ddlockd's statistics: not implemented
    assert _ask(loop, a, b"") == UNKNOWN
    assert _ask(loop, a, b" noop") == UNKNOWN  # a command starts the line, as in ddlockd
    assert _ask(loop, a, b"trylock") == EMPTY_LOCK
    assert _ask(loop, a, b"releaselock lock=") == EMPTY_LOCK
    assert _ask(loop, a, b"trylock lock=a%20b+c&x=1") == OK  # URL-encoded, as ddlockd
    assert _ask(loop, a, b"trylock lock=%ff%00") == OK  # names are bytes
    assert {b"a b c", b"\xff\x00"} <= set(lock_server.holders)
    assert _ask(loop, a, b"trylock lock=zed") == OK
    holder = f"LockClient(R): open to 127.0.0.1:{a.sock.getsockname()[1]}".encode()
    # ddlockd: "LOCKS:\n", then join("\n", "  NAME = " . as_string), then "\n".
    assert _ask(loop, a, b"locks", newlines=4) == (
        b"LOCKS:\n  a b c = " + holder + b"\n  zed = " + holder + b"\n  \xff\x00 = "
        + holder + b"\n")
    a.close()
    b = Peer(addr)
    run_until(loop, lambda: not lock_server.holders)
    assert _ask(loop, b, b"locks", newlines=2) == b"LOCKS:\n\n"  # none held
    b.close()


def test_lockd_decodes_arguments_as_ddlockd():
    args = lockd.decode_url_args
    assert args(b"") == {}
    assert args(b"lock=a+b%2Fc&x") == {b"lock": b"a b/c", b"x": b""}
    assert args(b"lock=a=b") == {b"lock": b"a"}  # split(/=/) keeps the first two fields
    assert args(b"lock=a&lock=b") == {b"lock": b"a\0b"}
    assert args(b"lock=0&lock=b") == {b"lock": b"0b"}  # Perl: "0" is false
    assert args(b"lock=%zz%4") == {b"lock": b"%zz%4"}  # not %XX: kept as it is


def test_lockd_pipelined_and_split_lines(loop, lock_server):
    addr = lock_server.sock.getsockname()
    a = Peer(addr)
    # Several commands in one segment, LF and CRLF mixed: each gets its reply, in order.
    a.send(b"trylock lock=p\nnoop\r\ntrylock lock=p\r\nreleaselock lock=p\n")
    _pump_until(loop, [a], lambda: a.inbox.count(b"\n") >= 4)
    assert bytes(a.inbox) == OK + OK + TAKEN + OK
    # One command dribbled a byte at a time.
    for byte in b"trylock lock=q\r\n":
        a.send(bytes([byte]))
        a.pump()
        loop.run_once(0)
    _pump_until(loop, [a], lambda: a.inbox.count(b"\n") >= 5)
    assert bytes(a.inbox) == OK + OK + TAKEN + OK + OK
    a.close()


def test_lockd_line_too_long_closes(loop, lock_server):
    a = Peer(lock_server.sock.getsockname())
    a.send(b"trylock lock=" + b"x" * (lockd.MAX_LINE + 10))
    _pump_until(loop, [a], lambda: a.eof)
    assert bytes(a.inbox) == b"ERR line_too_long \r\n"
    assert not _objects(loop, lockd.LockClient)


def test_lockd_idle_client_is_closed_and_its_locks_released(loop):
    server = lockd.LockServer(socket.create_server(("127.0.0.1", 0)), loop=loop,
                              idle_timeout=0.3)
    addr = server.sock.getsockname()
    a = Peer(addr)
    assert _ask(loop, a, b"trylock lock=idle") == OK
    _pump_until(loop, [a], lambda: a.eof)  # a says nothing more
    assert bytes(a.inbox) == OK + b"ERR idle_timeout \r\n"
    assert server.holders == {}
    b = Peer(addr)
    assert _ask(loop, b, b"trylock lock=idle") == OK
    b.close()
    a.close()


def test_lockd_idle_timer_rearms_after_activity(loop, lock_server):
    a = Peer(lock_server.sock.getsockname())
    assert _ask(loop, a, b"noop") == OK
    (client,) = _objects(loop, lockd.LockClient)
    first = client.idle_timer
    assert first is not None
    # The timer fires while the client was recently active: it re-arms, keeps the client.
    client.last_active = time.monotonic()
    first.cancel()
    client.check_idle()
    assert not client.closed
    assert client.idle_timer is not None and client.idle_timer is not first
    # Fired after a silence longer than the timeout: the client is closed.
    client.last_active = time.monotonic() - 2 * lock_server.idle_timeout
    client.idle_timer.cancel()
    client.check_idle()
    assert client.closed and client.close_reason == "idle_timeout"
    _pump_until(loop, [a], lambda: a.eof)
    assert bytes(a.inbox) == OK + b"ERR idle_timeout \r\n"
    assert loop.timers() == 0  # closing cancelled the timer (and the re-armed one fired)
    a.close()


def test_lockd_back_pressure_on_a_client_that_does_not_read(loop):
    class SmallBuffers(lockd.LockServer):
        __slots__ = ()

        def on_accept(self, conn, addr):
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            lockd.LockClient(conn, self)

    server = SmallBuffers(socket.create_server(("127.0.0.1", 0)), loop=loop,
                          high_water=4096)
    a = Peer(server.sock.getsockname(), rcvbuf=4096)
    count = 0

    def paused() -> bool:
        nonlocal count
        if not a.out:
            a.send(b"noop\r\n" * 500)
            count += 500
        clients = _objects(loop, lockd.LockClient)
        return bool(clients) and clients[0].paused

    _pump_until(loop, [a], paused, read=False)
    (client,) = _objects(loop, lockd.LockClient)
    assert client.write_buf_size > 4096
    a.out.clear()
    sent_lines = a.sent // len(b"noop\r\n")
    # Read all the replies: the client resumes and answers every complete line.
    _pump_until(loop, [a], lambda: a.inbox.count(b"\n") >= sent_lines and not client.paused)
    assert bytes(a.inbox) == OK * sent_lines
    assert client.pauses >= 1
    a.close()


# -- the real scripts, as subprocesses -------------------------------------------------


class Script:
    """An example started as ``python EXAMPLE --port 0``; reads its address line."""

    def __init__(self, name: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(EXAMPLES / f"{name}.py"), "--port", "0", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        line = self._first_line(timeout=20.0)
        match = re.fullmatch(rb"listening on 127\.0\.0\.1:(\d+) \(backend (\w+)\)\n", line)
        assert match, line
        self.port = int(match.group(1))
        self.backend = match.group(2).decode()

    def _first_line(self, timeout: float) -> bytes:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        data = b""
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while not data.endswith(b"\n"):
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    self.proc.kill()
                    pytest.fail(f"no address line within {timeout}s: {data!r}")
                chunk = os.read(fd, 4096)
                if not chunk:
                    pytest.fail(f"exited before printing its address: "
                                f"{self.proc.wait()} {self.proc.stderr.read()!r}")
                data += chunk
        return data

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10.0)

    def stop(self, signum: int = signal.SIGTERM) -> int:
        self.proc.send_signal(signum)
        try:
            _, err = self.proc.communicate(timeout=20.0)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            pytest.fail("did not exit within 20s of the signal")
        assert err == b"", err.decode()
        return self.proc.returncode


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, "the server hung up"
        data += chunk
    return data


def _recv_line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(1)
        assert chunk, "the server hung up"
        data += chunk
    return data


def test_echo_script(installed_backend):
    script = Script("echo", "--backend", installed_backend)
    try:
        assert script.backend == installed_backend
        with script.connect() as c1, script.connect() as c2:
            blob = os.urandom(200_000)
            c1.sendall(blob)
            c2.sendall(b"ping")
            assert _recv_exactly(c2, 4) == b"ping"
            assert _recv_exactly(c1, len(blob)) == blob
        # A connection still open at shutdown is closed by the server.
        idle = script.connect()
        idle.sendall(b"x")
        assert _recv_exactly(idle, 1) == b"x"
    finally:
        code = script.stop(signal.SIGTERM)
    assert code == 0
    assert idle.recv(10) == b""
    idle.close()


def test_echo_script_stops_on_sigint_while_idle(installed_backend):
    # Nothing connected and no timers: the loop is blocked in its poll when SIGINT comes.
    script = Script("echo", "--backend", installed_backend)
    assert script.stop(signal.SIGINT) == 0


def test_lockd_script(installed_backend):
    script = Script("lockd", "--backend", installed_backend)
    try:
        with script.connect() as a, script.connect() as b:
            a.sendall(b"trylock lock=job\r\n")
            assert _recv_line(a) == OK
            b.sendall(b"trylock lock=job\r\n")
            assert _recv_line(b) == TAKEN
        with script.connect() as c:  # a hung up: its lock is free again
            for _ in range(100):
                c.sendall(b"trylock lock=job\r\n")
                reply = _recv_line(c)
                if reply == OK:
                    break
                assert reply == TAKEN  # a's close not processed yet
            assert reply == OK
    finally:
        code = script.stop(signal.SIGTERM)
    assert code == 0
