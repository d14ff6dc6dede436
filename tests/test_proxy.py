"""examples/proxy.py with real peers: curl through it to ``python -m http.server``, on
every installed backend; a server that is down, one that never accepts, and a client
that never reads are all survived."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from test_connect import closed_port, full_listener
from test_static_server import CURL, curl, pytest_generate_tests, start, stop

__all__ = ["pytest_generate_tests"]  # the backend parametrisation, shared

pytestmark = [
    pytest.mark.skipif(CURL is None, reason="curl is not installed (apt-get install curl)"),
    pytest.mark.timeout(60),
]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def origin(tmp_path_factory) -> Iterator[tuple[int, Path]]:
    """``python -m http.server`` on a loopback port, serving a 3 MiB file."""
    root = tmp_path_factory.mktemp("origin")
    (root / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 5))
    proc = subprocess.Popen(
        [sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1",
         "--directory", str(root)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    m = re.search(r"port (\d+)", proc.stdout.readline())
    assert m is not None, "http.server did not start"
    try:
        yield int(m.group(1)), root
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def proxy(origin, installed_backend) -> Iterator[str]:
    """A proxy whose first server is down (refused) and second is the origin."""
    port, _ = origin
    proc, pport = start("proxy.py", "--backend", installed_backend,
                        "--to", f"127.0.0.1:{closed_port()}", "--to", f"127.0.0.1:{port}",
                        "--connect-timeout", "2", "--idle-timeout", "5")
    try:
        yield f"http://127.0.0.1:{pport}"
    finally:
        stop(proc)


def test_curl_through_the_proxy_skipping_a_server_that_is_down(proxy, origin):
    want = sha((origin[1] / "big.bin").read_bytes())
    for _ in range(3):
        res = curl("-o", "-", f"{proxy}/big.bin")
        assert res.returncode == 0
        assert sha(res.stdout) == want


def test_slow_client_gets_everything(proxy, origin):
    res = curl("--limit-rate", "2M", "-o", "-", f"{proxy}/big.bin")
    assert sha(res.stdout) == sha((origin[1] / "big.bin").read_bytes())


def test_a_client_that_never_reads_does_not_stop_others(proxy, origin):
    host, port = proxy.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as lazy:
        lazy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        lazy.sendall(b"GET /big.bin HTTP/1.0\r\n\r\n" * 4)
        # ...and never reads: the proxy stops reading the server's answer for it
        res = curl("-o", "-", f"{proxy}/big.bin")
        assert sha(res.stdout) == sha((origin[1] / "big.bin").read_bytes())


def test_a_server_that_never_accepts_times_out_and_fails_over(origin):
    stack: list[socket.socket] = []
    try:
        blackhole = full_listener(stack)
        bport = blackhole.getsockname()[1]
        proc, pport = start("proxy.py", "--to", f"127.0.0.1:{bport}",
                            "--to", f"127.0.0.1:{origin[0]}", "--connect-timeout", "0.3")
        try:
            res = curl("-o", "-", "-w", "%{time_total}", f"http://127.0.0.1:{pport}/big.bin")
            body, took = res.stdout[:-8], res.stdout[-8:]
            assert sha(body) == sha((origin[1] / "big.bin").read_bytes())
            assert float(took) >= 0.3  # the first connect waited for its timeout
        finally:
            stop(proc)
        assert proc.stderr is not None
        assert "timed out" in proc.stderr.read()
    finally:
        for s in stack:
            s.close()


def test_every_server_down_closes_the_client_and_logs_why():
    proc, pport = start("proxy.py", "--to", f"127.0.0.1:{closed_port()}")
    try:
        for _ in range(2):
            res = curl(f"http://127.0.0.1:{pport}/")
            # curl: empty reply (52), or a reset (56): the request was never read
            assert res.returncode in (52, 56), res
    finally:
        stop(proc)
    assert proc.stderr is not None
    log = proc.stderr.read()
    assert "Connection refused" in log and "no server could be reached" in log
