"""examples/static_server.py under a real client, curl, on every installed backend.

The server runs as a subprocess (``--port 0``; the port is read from its ``listening
on`` line) and is stopped with SIGTERM; each test runs curl against it and checks the
bytes by sha256.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import danga
from danga.testing import backend_matrix

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
#: The module's servers check a cached file on disk again after this many seconds.
CACHE_VALID = 0.2
CURL = shutil.which("curl")
pytestmark = [
    pytest.mark.skipif(CURL is None, reason="curl is not installed (apt-get install curl)"),
    pytest.mark.timeout(60),
]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "installed_backend" in metafunc.fixturenames:
        names = [name for name, _ in backend_matrix(metafunc.config)
                 if name in danga.backends.names()]
        metafunc.parametrize("installed_backend", names, scope="module")


def start(script: str, *args: str) -> tuple[subprocess.Popen[str], int]:
    """Start an example; returns the process and the port it listens on."""
    proc = subprocess.Popen([sys.executable, str(EXAMPLES / script), "--port", "0", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    m = re.search(r"listening on [\d.]+:(\d+)", line)
    if m is None:
        proc.kill()
        raise AssertionError(f"{script} did not start: {line!r} {proc.stderr.read()!r}")
    return proc, int(m.group(1))


def stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        assert proc.wait(10) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    assert CURL is not None
    return subprocess.run([CURL, "-s", "--max-time", "30", *args], capture_output=True,
                          timeout=40, check=False)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("site")
    root = base / "root"
    root.mkdir()
    (root / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    (root / "small.txt").write_bytes(b"hello, danga\n")
    (root / "empty").write_bytes(b"")
    (base / "secret.txt").write_bytes(b"not for you\n")
    (root / "escape").symlink_to(base / "secret.txt")
    return root


@pytest.fixture(scope="module")
def server(site, installed_backend) -> Iterator[str]:
    proc, port = start("static_server.py", "--root", str(site), "--backend",
                       installed_backend, "--cache-valid", str(CACHE_VALID))
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


def test_whole_files(server, site):
    for name in ("big.bin", "small.txt", "empty"):
        res = curl("-w", "%{http_code}", "-o", "-", f"{server}/{name}")
        assert res.returncode == 0
        body, code = res.stdout[:-3], res.stdout[-3:]
        assert code == b"200"
        assert sha(body) == sha((site / name).read_bytes()), name


def test_ranges(server, site):
    data = (site / "big.bin").read_bytes()
    for spec, want in (("100-199", data[100:200]), ("-10", data[-10:]),
                       ("3000000-", data[3000000:]), ("0-0", data[:1])):
        res = curl("-r", spec, "-D", "-", "-o", os.devnull, "-w", "%{size_download}",
                   f"{server}/big.bin")
        assert b"206 Partial Content" in res.stdout
        assert res.stdout.endswith(str(len(want)).encode())
        body = curl("-r", spec, f"{server}/big.bin").stdout
        assert sha(body) == sha(want), spec
    res = curl("-r", "99999999-", "-o", os.devnull, "-w", "%{http_code}", f"{server}/big.bin")
    assert res.stdout == b"416"


def test_head_404_405_and_no_path_traversal(server):
    res = curl("-I", f"{server}/small.txt")
    assert b"200 OK" in res.stdout and b"Content-Length: 13" in res.stdout
    for path in ("/missing", "/../secret.txt", "/%2e%2e/secret.txt", "/escape", "/"):
        res = curl("--path-as-is", "-o", "-", "-w", "%{http_code}", server + path)
        assert res.stdout.endswith(b"404"), path
        assert b"not for you" not in res.stdout
    res = curl("-X", "POST", "-o", os.devnull, "-w", "%{http_code}", f"{server}/small.txt")
    assert res.stdout == b"405"


def test_small_file_ranges_and_head(server, site):
    # small.txt is answered from memory (one write), big.bin with write_file.
    assert curl("-r", "7-11", f"{server}/small.txt").stdout == b"danga"
    res = curl("-I", f"{server}/big.bin")
    assert b"200 OK" in res.stdout and b"Content-Length: 3145745" in res.stdout


@pytest.mark.parametrize("size", [100, 100_000])  # in memory, and through write_file
def test_a_file_changed_on_disk_is_served_fresh(server, site, installed_backend, size):
    import time

    path = site / f"fresh-{installed_backend}-{size}.bin"
    url = f"{server}/{path.name}"

    def fresh_within(want: bytes) -> float:
        # How long the old bytes are still served: at most the cache's validity.
        changed = time.monotonic()
        while True:
            res = curl("-o", "-", "-w", "%{http_code}", url)
            if res.stdout == want:
                return time.monotonic() - changed
            assert time.monotonic() - changed < CACHE_VALID + 5, res.stdout[-80:]

    path.write_bytes(b"a" * size)
    assert fresh_within(b"a" * size + b"200") < CACHE_VALID + 5
    path.write_bytes(b"b" * (size + 1))  # changed in place
    assert fresh_within(b"b" * (size + 1) + b"200") < CACHE_VALID + 1
    tmp = path.with_suffix(".new")
    tmp.write_bytes(b"c" * (size + 1))
    os.replace(tmp, path)  # replaced: another file, same size
    assert fresh_within(b"c" * (size + 1) + b"200") < CACHE_VALID + 1
    path.unlink()
    assert fresh_within(b"404 Not Found\n404") < CACHE_VALID + 1


def test_pipelined_requests_are_answered_in_order(server, site):
    # Answers from memory (small.txt), through write_file (big.bin), errors and a
    # closing HTTP/1.0 request, all sent at once.
    import socket

    port = int(server.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(b"GET /small.txt HTTP/1.1\r\n\r\nHEAD /big.bin HTTP/1.1\r\n\r\n"
                  b"GET /big.bin HTTP/1.1\r\nRange: bytes=1-3\r\n\r\n"
                  b"GET /missing HTTP/1.1\r\n\r\nGET /big.bin HTTP/1.1\r\n\r\n"
                  b"GET /small.txt HTTP/1.0\r\n\r\n")
        got = bytearray()
        while chunk := s.recv(1 << 20):
            got += chunk
    big = (site / "big.bin").read_bytes()
    want = [(b"200 OK", b"hello, danga\n"), (b"200 OK", b""), (b"206 Partial Content", big[1:4]),
            (b"404 Not Found", b"404 Not Found\n"), (b"200 OK", big),
            (b"200 OK", b"hello, danga\n")]
    rest = bytes(got)
    for status, body in want:
        head, _, rest = rest.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 " + status), head
        assert rest[:len(body)] == body
        rest = rest[len(body):]
    assert rest == b"" and head.endswith(b"Connection: close")


def test_keep_alive_reuses_the_connection(server, site):
    res = curl("-o", os.devnull, "-o", os.devnull, "-o", os.devnull,
               "-w", "%{num_connects} %{http_code}\n",
               f"{server}/small.txt", f"{server}/big.bin", f"{server}/small.txt")
    assert res.stdout.decode().split("\n")[:3] == ["1 200", "0 200", "0 200"]


def test_slow_reader(server, site):
    res = curl("--limit-rate", "2M", "-o", "-", f"{server}/big.bin")
    assert res.returncode == 0
    assert sha(res.stdout) == sha((site / "big.bin").read_bytes())


def test_idle_connection_is_closed(site):
    proc, port = start("static_server.py", "--root", str(site), "--idle-timeout", "0.3")
    try:
        import socket
        import time

        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            start_at = time.monotonic()
            assert s.recv(10) == b""  # closed by the server, not by the timeout of 10 s
            assert 0.25 < time.monotonic() - start_at < 5
    finally:
        stop(proc)
