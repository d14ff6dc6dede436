"""The examples under load from real peers we did not write: ``wrk`` against
examples/static_server.py, and ``wrk`` through examples/proxy.py to a real nginx
(Debian's ``nginx``, started here on a loopback port with its own configuration).

Each runs on every installed backend for about a second of load. wrk reports what went
wrong itself (socket errors, non-2xx answers, timeouts); a test fails on any of them, or
when wrk got (almost) nothing through.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from test_static_server import curl, pytest_generate_tests, sha, start, stop

__all__ = ["pytest_generate_tests"]  # the backend parametrisation, shared

WRK = shutil.which("wrk")
# Debian installs nginx in /usr/sbin, which is not on every user's PATH.
NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")

pytestmark = [
    pytest.mark.skipif(WRK is None, reason="wrk is not installed (apt-get install wrk)"),
    pytest.mark.timeout(60),
]

# One process (no master, so no privilege drop and no stray workers after a kill), all its
# files under the test's own directory, access log off.
NGINX_CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    default_type application/octet-stream;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
"""


def wrk(url: str, connections: int = 8) -> dict[str, int]:
    """Run wrk for one second; returns its counts (requests, and each kind of error)."""
    assert WRK is not None
    run = subprocess.run([WRK, "-t", "1", "-c", str(connections), "-d", "1", "--timeout", "5",
                          url], capture_output=True, text=True, timeout=30, check=False)
    assert run.returncode == 0, run.stderr
    out = run.stdout
    done = re.search(r"(\d+) requests in", out)
    assert done is not None, out
    counts = {"requests": int(done.group(1)), "non-2xx": 0}
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                       out)
    if errors is not None:
        for kind, n in zip(("connect", "read", "write", "timeout"), errors.groups(),
                           strict=True):
            counts[kind] = int(n)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx is not None:
        counts["non-2xx"] = int(non2xx.group(1))
    return counts


def assert_clean(counts: dict[str, int]) -> None:
    # wrk closes its connections when its time is up, mid-request: a read error or two
    # from that last moment is wrk's own doing, never a failed answer.
    bad = {k: n for k, n in counts.items() if k not in ("requests", "read") and n}
    assert not bad, counts
    assert counts.get("read", 0) <= 8, counts
    assert counts["requests"] >= 50, counts


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(proc: subprocess.Popen[bytes], port: int, deadline: float) -> bool:
    """True once something accepts on *port*; False if *proc* exited first."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if proc.poll() is not None:
            return False
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.02)  # polling a condition (nginx's listen) with a deadline
    raise AssertionError(f"nginx is not listening on {port} after {deadline} s")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("wrk-site")
    (root / "4k.bin").write_bytes(os.urandom(4096))
    (root / "300k.bin").write_bytes(os.urandom(300 * 1024 + 3))
    return root


@pytest.fixture(scope="module")
def nginx(site, tmp_path_factory) -> Iterator[int]:
    """nginx serving *site* on a loopback port; the port is picked free, and picked again
    if another process took it before nginx bound it."""
    if NGINX is None:
        pytest.skip("nginx is not installed (apt-get install nginx)")
    tmp = tmp_path_factory.mktemp("nginx")
    for _ in range(5):
        port = free_port()
        conf = tmp / "nginx.conf"
        conf.write_text(NGINX_CONF.format(tmp=tmp, port=port, root=site))
        proc = subprocess.Popen([NGINX, "-p", str(tmp), "-c", str(conf)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if wait_listening(proc, port, 10):
            break
        proc.wait()
    else:
        log = (tmp / "nginx.log").read_text() if (tmp / "nginx.log").exists() else ""
        raise AssertionError(f"nginx did not start: {log}")
    try:
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("name", ["4k.bin", "300k.bin"])
def test_wrk_against_the_static_server(site, installed_backend, name):
    proc, port = start("static_server.py", "--root", str(site), "--backend",
                       installed_backend)
    try:
        assert_clean(wrk(f"http://127.0.0.1:{port}/{name}"))
        # ...and it still answers correctly after the load
        res = curl("-o", "-", f"http://127.0.0.1:{port}/{name}")
        assert sha(res.stdout) == sha((site / name).read_bytes())
    finally:
        stop(proc)


def test_wrk_through_the_proxy_to_nginx(site, nginx, installed_backend):
    proc, port = start("proxy.py", "--backend", installed_backend,
                       "--to", f"127.0.0.1:{nginx}", "--connect-timeout", "2",
                       "--idle-timeout", "10")
    try:
        assert_clean(wrk(f"http://127.0.0.1:{port}/300k.bin"))
        res = curl("-o", "-", f"http://127.0.0.1:{port}/300k.bin")
        assert sha(res.stdout) == sha((site / "300k.bin").read_bytes())
    finally:
        stop(proc)
