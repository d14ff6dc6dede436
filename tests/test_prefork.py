"""danga.prefork and graceful shutdown, on real processes and real signals.

Every server here is a subprocess (examples/echo.py, examples/prefork_echo.py, or a small
script written to tmp_path) in its own session, killed with its whole process group if a
test fails, so nothing outlives a test. Signals are sent with the real ``kill`` binary
(and ``timeout -s TERM``); the load comes from ``wrk``. Every wait is on a condition (a
line printed by the server, a socket state in /proc) with a deadline, never a sleep.
"""

from __future__ import annotations

import errno
import os
import re
import select
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import danga
import danga.process
from danga.testing import backend_matrix

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
LINUX = sys.platform.startswith("linux")
KILL = shutil.which("kill")
WRK = shutil.which("wrk")
TIMEOUT = shutil.which("timeout")

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(not hasattr(os, "fork"), reason="danga.prefork needs os.fork"),
    pytest.mark.skipif(KILL is None, reason="the kill binary is not installed"),
]

READY = re.compile(r"worker (\d+) pid (\d+) listening on ([\d.]+):(\d+)")
SERVED = re.compile(r"worker (\d+) pid (\d+) served connections=(\d+) requests=(\d+)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # A script names its backend with --backend: the matrix's installed backends.
    if "installed_backend" in metafunc.fixturenames:
        names = [name for name, _ in backend_matrix(metafunc.config)
                 if name in danga.backends.names()]
        metafunc.parametrize("installed_backend", names)


def kill(signame: str, pid: int) -> None:
    """Send a signal with the real kill binary."""
    assert KILL is not None
    subprocess.run([KILL, f"-{signame}", str(pid)], check=True, timeout=10)


class Server:
    """A server subprocess: stdout read line by line with deadlines, stderr to a file."""

    def __init__(self, argv: list[str], tmp_path: Path, env: dict[str, str] | None = None
                 ) -> None:
        self.err_path = tmp_path / f"stderr-{len(list(tmp_path.iterdir()))}.txt"
        self.err = self.err_path.open("wb")
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self.err,
                                     start_new_session=True, cwd=ROOT,
                                     env={**os.environ, **(env or {})})
        self.lines: list[str] = []
        self._buf = b""
        self._seen = 0  # lines already handed out by expect()

    @classmethod
    def prefork_echo(cls, tmp_path: Path, *args: str) -> Server:
        return cls([sys.executable, str(EXAMPLES / "prefork_echo.py"), "--verbose", *args],
                   tmp_path)

    def _read_line(self, deadline: float) -> str | None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buf:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    return None
                chunk = os.read(fd, 65536)
                if not chunk:
                    return None
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        self.lines.append(line.decode())
        return self.lines[-1]

    def expect(self, pattern: re.Pattern[str] | str, timeout: float = 15.0) -> re.Match[str]:
        """The next line (not returned before) matching *pattern*."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            while self._seen < len(self.lines):
                line = self.lines[self._seen]
                self._seen += 1
                match = regex.search(line)
                if match:
                    return match
            if self._read_line(deadline) is None:
                pytest.fail(f"no line matching {regex.pattern!r} within {timeout}s; "
                            f"stdout so far: {self.lines}\nstderr: {self.stderr()}")

    def has_printed(self, pattern: str, timeout: float = 15.0) -> None:
        """Wait until any line so far (seen by expect() or not) matches *pattern*."""
        deadline = time.monotonic() + timeout
        while not any(re.search(pattern, line) for line in self.lines):
            if self._read_line(deadline) is None:
                pytest.fail(f"no line matching {pattern!r} within {timeout}s: {self.lines}")

    def ready_workers(self, n: int) -> dict[int, tuple[int, int]]:
        """Wait for *n* ready lines: worker id -> (pid, port)."""
        found = {}
        for _ in range(n):
            m = self.expect(READY)
            found[int(m.group(1))] = (int(m.group(2)), int(m.group(4)))
        return found

    def wait(self, timeout: float = 30.0) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"did not exit within {timeout}s; stderr: {self.stderr()}")
        deadline = time.monotonic() + 5.0
        while self._read_line(deadline) is not None:
            pass
        return code

    def stderr(self) -> str:
        self.err.flush()
        return self.err_path.read_text(errors="replace")

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)
        # Workers of a master that died are in the same session: take them too.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        self.err.close()


@pytest.fixture
def servers(tmp_path):
    made: list[Server] = []

    def start(*args: str, script: Path | None = None) -> Server:
        if script is None:
            server = Server.prefork_echo(tmp_path, *args)
        else:
            server = Server([sys.executable, str(script), *args], tmp_path)
        made.append(server)
        return server

    yield start
    for server in made:
        server.cleanup()


def echo_once(port: int, payload: bytes = b"ping") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10.0) as conn:
        conn.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = conn.recv(65536)
            if not chunk:
                break
            got += chunk
    return got


def recv_all(conn: socket.socket) -> bytes:
    out = bytearray()
    while True:
        chunk = conn.recv(1 << 20)
        if not chunk:
            return bytes(out)
        out += chunk


def gone(pid: int) -> bool:
    """True once *pid* is dead (a zombie has closed its sockets already)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):  # gone before, or while, reading
        return True


def wait_for(condition, timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout}s: {what or condition}")
        time.sleep(0.005)  # polling a kernel state; nothing to block on


# -- a response in flight: the server has read everything, the client has read nothing --


def _tcp_queues(local: tuple[str, int], remote: tuple[str, int]) -> tuple[int, int] | None:
    """(tx_queue, rx_queue) of the IPv4 TCP socket local -> remote, from /proc/net/tcp."""

    def hexaddr(addr: tuple[str, int]) -> str:
        packed = socket.inet_aton(addr[0])
        return f"{int.from_bytes(packed, 'little'):08X}:{addr[1]:04X}"

    want = (hexaddr(local), hexaddr(remote))
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if (fields[1], fields[2]) == want:
                tx, rx = fields[4].split(":")
                return int(tx, 16), int(rx, 16)
    return None


def start_slow_response(port: int, size: int = 8 << 20) -> tuple[socket.socket, bytes]:
    """Send *size* bytes to the echo at *port* and read nothing; return once the server
    has read all of it (so its echo is a response in flight, most of it still queued
    in the server because this client's receive buffer is small)."""
    conn = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
    conn.settimeout(20.0)
    conn.connect(("127.0.0.1", port))
    blob = os.urandom(size)
    conn.sendall(blob)
    here, there = conn.getsockname(), conn.getpeername()

    def read_by_server() -> bool:
        mine, theirs = _tcp_queues(here, there), _tcp_queues(there, here)
        return mine is not None and theirs is not None and mine[0] == 0 and theirs[1] == 0

    wait_for(read_by_server, 20.0, "the server reading everything the client sent")
    return conn, blob


# -- Listener.bind through the master ------------------------------------------------------


@pytest.mark.skipif(not LINUX, reason="SO_REUSEPORT balancing is Linux's (and FreeBSD's)")
@pytest.mark.parametrize("mode", ["yes", "no"])
def test_every_worker_gets_the_same_port(servers, installed_backend, mode):
    server = servers("--workers", "2", "--reuse-port", mode, "--backend", installed_backend)
    workers = server.ready_workers(2)
    ports = {port for _, port in workers.values()}
    assert len(ports) == 1, workers
    assert len({pid for pid, _ in workers.values()}) == 2
    port = ports.pop()
    for _ in range(10):
        assert echo_once(port) == b"ping"
    master = int(server.lines[0].split()[2])
    kill("TERM", master)
    assert server.wait() == 0
    stderr = server.stderr()
    if mode == "no":
        assert "the master listens on" in stderr
    else:
        assert "the master listens on" not in stderr
    assert "Traceback" not in stderr


# -- load: every worker serves its share (wrk is the real peer) ----------------------------


@pytest.mark.xdist_group("prefork-load")
@pytest.mark.skipif(WRK is None, reason="wrk is not installed (apt-get install wrk)")
@pytest.mark.skipif(not LINUX, reason="SO_REUSEPORT balancing is Linux's (and FreeBSD's)")
def test_wrk_64_connections_reuse_port_every_worker_serves_a_quarter(servers):
    server = servers("--http", "--workers", "2", "--reuse-port", "yes")
    workers = server.ready_workers(2)
    port = next(iter(workers.values()))[1]
    assert WRK is not None
    run = subprocess.run([WRK, "-t", "2", "-c", "64", "-d", "3", "--timeout", "5",
                          f"http://127.0.0.1:{port}/"], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr
    match = re.search(r"(\d+) requests in", run.stdout)
    assert match, run.stdout
    total_wrk = int(match.group(1))
    assert "Non-2xx" not in run.stdout and "Socket errors" not in run.stdout, run.stdout
    kill("TERM", int(server.lines[0].split()[2]))
    served = [server.expect(SERVED) for _ in range(2)]
    assert server.wait() == 0
    counts = {int(m.group(1)): int(m.group(4)) for m in served}
    total = sum(counts.values())
    assert total >= total_wrk > 1000, (counts, total_wrk)
    for worker, count in counts.items():
        assert count >= 0.25 * total, f"worker {worker} served {count} of {total}: {counts}"


# -- graceful shutdown: the response in flight is delivered whole --------------------------


@pytest.mark.skipif(not LINUX, reason="reads the socket queues from /proc/net/tcp")
def test_term_to_the_master_drains_a_response_in_flight(servers, installed_backend):
    server = servers("--workers", "2", "--high-water", str(64 << 20),
                     "--backend", installed_backend)
    workers = server.ready_workers(2)
    port = next(iter(workers.values()))[1]
    conn, blob = start_slow_response(port)
    with conn:
        kill("TERM", int(server.lines[0].split()[2]))
        for _ in range(2):  # each worker has closed its listener when it prints this
            server.expect(SERVED)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5.0)
        assert recv_all(conn) == blob  # whole, then EOF
    assert server.wait() == 0
    assert "clean shutdown" in server.stderr()


@pytest.mark.skipif(not LINUX, reason="reads the socket queues from /proc/net/tcp")
def test_a_second_term_is_quick_and_the_exit_code_says_unclean(servers):
    server = servers("--workers", "1", "--high-water", str(64 << 20))
    port = server.ready_workers(1)[0][1]
    conn, _ = start_slow_response(port)
    with conn:
        master = int(server.lines[0].split()[2])
        kill("TERM", master)
        server.expect(SERVED)
        kill("TERM", master)
        assert server.wait(10.0) == 1  # well before the 30 s graceful_timeout
    assert "quick shutdown" in server.stderr()


@pytest.mark.skipif(not LINUX, reason="reads the socket queues from /proc/net/tcp")
def test_the_graceful_timeout_kills_what_is_left(servers):
    server = servers("--workers", "1", "--grace", "0.5", "--high-water", str(64 << 20))
    port = server.ready_workers(1)[0][1]
    conn, _ = start_slow_response(port)
    with conn:
        kill("TERM", int(server.lines[0].split()[2]))
        assert server.wait(15.0) == 1
    stderr = server.stderr()
    assert "the shutdown deadline passed" in stderr
    assert "unclean shutdown" in stderr


# -- supervision -------------------------------------------------------------------------


def test_kill_9_to_a_worker_gives_a_replacement_within_1s(servers):
    server = servers("--workers", "2")
    workers = server.ready_workers(2)
    victim, port = workers[0]
    kill("9", victim)
    killed_at = time.monotonic()
    wait_for(lambda: gone(victim), 5.0, f"worker pid {victim} to die")
    for _ in range(20):  # the other worker answers meanwhile
        assert echo_once(port) == b"ping"
    m = server.expect(READY, timeout=10.0)
    took = time.monotonic() - killed_at
    assert int(m.group(1)) == 0 and int(m.group(2)) != victim
    assert took < 1.0, f"the replacement took {took:.2f}s"
    assert echo_once(port) == b"ping"
    kill("TERM", int(server.lines[0].split()[2]))
    assert server.wait() == 0
    assert "exited unexpectedly (signal SIGKILL); replacing it" in server.stderr()


STALLER = r"""
import sys, time
import danga
import danga.process

class Stall(danga.Socket):
    def __init__(self, sock, *, loop):
        super().__init__(sock, loop=loop)
        self.watch_read(True)

    def event_read(self):
        data = self.read(100)
        if data is None:
            self.close("eof")
        elif data == b"stall":
            time.sleep(600)  # a blocking call: the loop stops turning
        else:
            self.write(data)

def setup(loop, worker_id):
    import os
    lsn = danga.Listener.bind(("127.0.0.1", 0), loop=loop, factory=Stall, reuse_port=True)
    port = lsn.sock.getsockname()[1]
    line = f"worker {worker_id} pid {os.getpid()} listening on 127.0.0.1:{port}\n"
    os.write(1, line.encode())  # one write: workers share stdout
    if len(sys.argv) > 1 and sys.argv[1] == "fail":
        raise RuntimeError("setup failed on purpose")
    if len(sys.argv) > 1 and sys.argv[1] == "hang":
        time.sleep(600)  # setup never finishes: no heartbeat ever comes

print("master pid", __import__("os").getpid(), flush=True)
sys.exit(danga.prefork(setup, 1, heartbeat=0.5, graceful_timeout=5))
"""


def test_a_worker_whose_loop_is_stuck_is_killed_and_replaced(servers, tmp_path,
                                                              installed_backend):
    script = tmp_path / "staller.py"
    script.write_text(textwrap.dedent(STALLER))
    server = Server([sys.executable, str(script)], tmp_path,
                    env={"DANGA_BACKEND": installed_backend})
    try:
        stuck, port = server.ready_workers(1)[0]
        with socket.create_connection(("127.0.0.1", port), timeout=10.0) as conn:
            conn.sendall(b"stall")
            m = server.expect(READY, timeout=10.0)
        assert int(m.group(2)) != stuck
        wait_for(lambda: gone(stuck), 5.0, "the stuck worker to die")
        assert echo_once(port) == b"ping"
        kill("TERM", int(server.lines[0].split()[2]))
        assert server.wait() == 0
        stderr = server.stderr()
        assert "its loop has not turned" in stderr, stderr
    finally:
        server.cleanup()


def test_workers_that_die_in_setup_back_off_then_give_up(servers, tmp_path):
    script = tmp_path / "staller.py"
    script.write_text(textwrap.dedent(STALLER))
    server = servers("fail", script=script)
    started = time.monotonic()
    assert server.wait(30.0) == danga.process.EXIT_BOOT_FAILED
    took = time.monotonic() - started
    stderr = server.stderr()
    assert stderr.count("RuntimeError: setup failed on purpose") == 5
    assert "died during setup (4 in a row); next start in 0.80s" in stderr
    assert took >= 0.1 + 0.2 + 0.4 + 0.8  # the back-off happened


def test_workers_that_hang_in_setup_are_killed_and_count_as_boot_failures(servers, tmp_path):
    script = tmp_path / "staller.py"
    script.write_text(textwrap.dedent(STALLER))
    server = servers("hang", script=script)
    assert server.wait(60.0) == danga.process.EXIT_BOOT_FAILED
    stderr = server.stderr()
    assert stderr.count("its loop has not turned") == 5, stderr
    assert "died during setup (4 in a row); next start in 0.80s" in stderr


UNIX_ECHO = r"""
import logging, os, sys
import danga
import danga.process

logging.basicConfig(level=logging.INFO)

class Echo(danga.Socket):
    def __init__(self, sock, *, loop):
        super().__init__(sock, loop=loop)
        self.watch_read(True)

    def event_read(self):
        data = self.read(100)
        if data is None:
            self.close("eof")
        else:
            self.write(f"{os.getpid()}:".encode() + data)

def setup(loop, worker_id):
    danga.Listener.bind(sys.argv[1], loop=loop, factory=Echo, reuse_port=True)
    os.write(1, f"worker {worker_id} pid {os.getpid()} listening on 0.0.0.0:0\n".encode())

print("master pid", os.getpid(), flush=True)
sys.exit(danga.prefork(setup, 2))
"""


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="no AF_UNIX on this platform")
def test_an_af_unix_path_is_bound_once_by_the_master(servers, tmp_path):
    script = tmp_path / "unix_echo.py"
    script.write_text(UNIX_ECHO)
    path = str(tmp_path / "echo.sock")
    server = servers(path, script=script)
    workers = server.ready_workers(2)
    pids = {str(pid) for pid, _ in workers.values()}
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(10.0)
        conn.connect(path)
        conn.sendall(b"x")
        who, _, data = conn.recv(100).partition(b":")
    assert who.decode() in pids and data == b"x"
    kill("TERM", int(server.lines[0].split()[2]))
    assert server.wait() == 0
    assert "the master listens on" in server.stderr()


def test_workers_shut_down_when_their_master_dies(servers):
    server = servers("--workers", "2", "--heartbeat", "1")
    workers = server.ready_workers(2)
    kill("9", int(server.lines[0].split()[2]))
    for pid, _ in workers.values():
        wait_for(lambda pid=pid: gone(pid), 10.0, f"orphaned worker {pid} to exit")
    for _ in workers:
        server.expect(SERVED)  # each drained (graceful), it was not killed


@pytest.mark.parametrize(
    ("kwargs", "exc", "words"),
    [
        ({"setup": 3}, TypeError, r"prefork\(setup\) must be callable"),
        ({"workers": 0}, ValueError, "at least 1"),
        ({"workers": 1.5}, TypeError, "workers"),
        ({"reuse_port": "yes"}, ValueError, "reuse_port"),
        ({"graceful_timeout": 0}, ValueError, "graceful_timeout"),
        ({"heartbeat": -1}, ValueError, "heartbeat"),
    ],
)
def test_bad_arguments_name_the_call(kwargs, exc, words):
    args = {"setup": lambda loop, worker_id: None, **kwargs}
    with pytest.raises(exc, match=words):
        danga.prefork(**args)  # refused before anything forks


def test_bind_outside_a_worker_is_a_plain_bind():
    assert danga.process.bind_in_worker(("127.0.0.1", 0), reuse_port=False, backlog=1) is None


def test_a_bind_error_in_the_master_is_raised_in_the_worker(servers):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        server = servers("--workers", "1", "--reuse-port", "no", "--port", str(port))
        assert server.wait(30.0) == danga.process.EXIT_BOOT_FAILED
    stderr = server.stderr()
    assert "in setup" in stderr and "Server.bind" in stderr, stderr
    refused = f"OSError: [Errno {errno.EADDRINUSE}] {os.strerror(errno.EADDRINUSE)}"
    assert stderr.count(refused) == 5, stderr


def test_hup_replaces_the_workers_one_at_a_time(servers):
    server = servers("--workers", "2")
    old = server.ready_workers(2)
    port = old[0][1]
    master = int(server.lines[0].split()[2])
    kill("HUP", master)
    new = server.ready_workers(2)
    assert {pid for pid, _ in new.values()}.isdisjoint(pid for pid, _ in old.values())
    for pid, _ in old.values():
        server.has_printed(rf"pid {pid} served")
        wait_for(lambda pid=pid: gone(pid), 10.0, f"old worker {pid} to retire")
    lines = server.lines

    def index(pattern: str) -> int:
        found = [i for i, line in enumerate(lines) if re.search(pattern, line)]
        assert found, f"no line matches {pattern!r}: {lines}"
        return found[0]

    for worker_id, (old_pid, _) in old.items():
        new_pid = new[worker_id][0]
        # The replacement was ready before the old worker began to drain.
        assert index(rf"pid {new_pid} listening") < index(rf"pid {old_pid} served")
    # One at a time: the second replacement started after the first old one retired.
    first, second = sorted(new.values(), key=lambda v: index(rf"pid {v[0]} listening"))
    first_old = next(pid for wid, (pid, _) in old.items() if new[wid][0] == first[0])
    assert index(rf"pid {first_old} served") < index(rf"pid {second[0]} listening")
    assert echo_once(port) == b"ping"
    kill("TERM", master)
    assert server.wait() == 0


def test_ttin_adds_a_worker_and_ttou_removes_one(servers):
    server = servers("--workers", "1")
    first = server.ready_workers(1)
    master = int(server.lines[0].split()[2])
    kill("TTIN", master)
    added = server.ready_workers(1)
    assert list(added) == [1]
    kill("TTOU", master)
    m = server.expect(SERVED)
    assert int(m.group(1)) == 1  # the highest id goes
    wait_for(lambda: gone(added[1][0]), 10.0, "the removed worker to exit")
    assert not gone(first[0][0])
    assert echo_once(first[0][1]) == b"ping"
    kill("TERM", master)
    assert server.wait() == 0


# -- examples/echo.py on its own: SIGTERM while a response is in flight -------------------


@pytest.mark.skipif(not LINUX, reason="reads the socket queues from /proc/net/tcp")
@pytest.mark.parametrize("sender", ["kill", "timeout"])
def test_echo_py_sigterm_delivers_the_response_in_flight(tmp_path, installed_backend, sender):
    argv = [sys.executable, str(EXAMPLES / "echo.py"), "--backend", installed_backend,
            "--high-water", str(64 << 20)]
    if sender == "timeout":
        if TIMEOUT is None:
            pytest.skip("the timeout binary is not installed")
        # timeout sends TERM after 10 s; the response is in flight long before that.
        argv = [TIMEOUT, "--preserve-status", "-s", "TERM", "10", *argv]
    started = time.monotonic()
    server = Server(argv, tmp_path)
    try:
        port = int(server.expect(r"listening on 127\.0\.0\.1:(\d+)").group(1))
        conn, blob = start_slow_response(port)
        took = time.monotonic() - started
        if sender == "timeout" and took > 8.0:
            pytest.fail(f"the response took {took:.1f}s to be in flight: too close to"
                        " timeout's 10 s for this test to mean anything (machine overloaded)")
        with conn:
            if sender == "kill":
                kill("TERM", server.proc.pid)
            server.expect(r"shutting down: 1 connection\(s\) finishing", timeout=15.0)
            assert recv_all(conn) == blob
        assert server.wait() == 0
        assert server.stderr() == ""
    finally:
        server.cleanup()


# -- examples/lockd.py: SIGTERM while replies are in flight ------------------------------


@pytest.mark.parametrize("sender", ["kill", "timeout"])
def test_lockd_py_sigterm_delivers_the_replies_in_flight(tmp_path, installed_backend, sender):
    # A client pipelines thousands of commands and reads nothing: lockd stops reading
    # above its high-water mark with replies queued. On TERM it answers no more commands
    # but delivers every queued reply whole, closes, and exits 0.
    argv = [sys.executable, str(EXAMPLES / "lockd.py"), "--backend", installed_backend]
    if sender == "timeout":
        if TIMEOUT is None:
            pytest.skip("the timeout binary is not installed")
        argv = [TIMEOUT, "--preserve-status", "-s", "TERM", "10", *argv]
    started = time.monotonic()
    server = Server(argv, tmp_path)
    try:
        port = int(server.expect(r"listening on 127\.0\.0\.1:(\d+)").group(1))
        conn = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        conn.settimeout(20.0)
        conn.connect(("127.0.0.1", port))
        with conn:
            conn.setblocking(False)
            sent = 0
            request = b"noop\r\n" * 1000
            end = time.monotonic() + 5
            while time.monotonic() < end:  # until the server pushes back
                try:
                    sent += conn.send(request)
                except BlockingIOError:
                    break
            conn.settimeout(20.0)
            assert sent > 50_000, "the server never stopped reading"
            # Replies are in flight once the first of them reached this socket.
            assert select.select([conn], [], [], 10.0)[0], "no reply within 10 s"
            if sender == "timeout" and time.monotonic() - started > 8.0:
                pytest.fail("too slow to be in flight before timeout's 10 s (overloaded)")
            if sender == "kill":
                kill("TERM", server.proc.pid)
            # 1 if replies were still queued in lockd, 0 if all were in the kernel's
            # buffers already: either way each must arrive whole.
            server.expect(r"shutting down: [01] connection\(s\) finishing", timeout=15.0)
            got = recv_all(conn)
        assert got and got == b"OK \r\n" * (len(got) // 5), "a reply was cut or mangled"
        assert len(got) // 5 <= sent // 6
        assert server.wait() == 0
        assert server.stderr() == ""
    finally:
        server.cleanup()
