"""danga.Listener.bind: the listening socket made, configured and bound for you.

Every test that makes a Listener runs on every backend of the matrix (the ``loop``
fixture). Addresses are loopback with port 0; AF_UNIX paths live in tmp_path.
"""

from __future__ import annotations

import errno
import os
import socket
import sys

import pytest

import danga
from danga.testing import run_until
from danga_helpers import have_ipv6

pytestmark = pytest.mark.timeout(30)


class Accepting(danga.Listener):
    """Keeps what it accepts (closed by the test's teardown of the loop)."""

    def __init__(self, sock: socket.socket, *, loop: danga.Loop | None = None) -> None:
        super().__init__(sock, loop=loop)
        self.conns: list[socket.socket] = []

    def on_accept(self, conn: socket.socket, addr: object) -> None:
        self.conns.append(conn)


def _connect_and_accept(loop: danga.Loop, lsn: Accepting, family: int, addr: object) -> None:
    with socket.socket(family, socket.SOCK_STREAM) as cli:
        cli.connect(addr)
        run_until(loop, lambda: lsn.conns, 5.0)
    for conn in lsn.conns:
        conn.close()


def _close(lsn: danga.Listener, loop: danga.Loop) -> None:
    lsn.close()
    loop.run_once(0)


def test_ipv4_port_0_accepts(loop):
    lsn = Accepting.bind(("127.0.0.1", 0), loop=loop)
    try:
        assert isinstance(lsn, Accepting)
        sock = lsn.sock
        assert sock.family == socket.AF_INET
        assert sock.getblocking() is False
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        _connect_and_accept(loop, lsn, socket.AF_INET, sock.getsockname())
    finally:
        _close(lsn, loop)


@pytest.mark.skipif(not have_ipv6(), reason="no IPv6 loopback (::1) on this machine")
def test_ipv6_accepts(loop):
    lsn = Accepting.bind(("::1", 0), loop=loop)
    try:
        assert lsn.sock.family == socket.AF_INET6
        _connect_and_accept(loop, lsn, socket.AF_INET6, lsn.sock.getsockname()[:2])
    finally:
        _close(lsn, loop)


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="no AF_UNIX on this platform")
def test_unix_path_accepts_and_replaces_a_stale_socket_file(loop, tmp_path):
    path = str(tmp_path / "s")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()  # the file stays: a socket file left by an earlier run
    lsn = Accepting.bind(path, loop=loop)
    try:
        assert lsn.sock.family == socket.AF_UNIX
        _connect_and_accept(loop, lsn, socket.AF_UNIX, path)
    finally:
        _close(lsn, loop)


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="no AF_UNIX on this platform")
def test_unix_path_never_removes_a_regular_file(loop, tmp_path):
    path = tmp_path / "not-a-socket"
    path.write_text("keep me")
    with pytest.raises(OSError) as info:
        Accepting.bind(str(path), loop=loop)
    assert info.value.errno == errno.EADDRINUSE
    assert path.read_text() == "keep me"


@pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="no SO_REUSEPORT here")
def test_reuse_port_lets_two_listeners_share_a_port(loop):
    first = Accepting.bind(("127.0.0.1", 0), loop=loop, reuse_port=True)
    port = first.sock.getsockname()[1]
    second = Accepting.bind(("127.0.0.1", port), loop=loop, reuse_port=True)
    try:
        for lsn in (first, second):
            assert lsn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
        # Without it the same address is taken.
        with pytest.raises(OSError) as info:
            danga.Listener.bind(("127.0.0.1", port), loop=loop)
        assert info.value.errno == errno.EADDRINUSE
    finally:
        _close(first, loop)
        _close(second, loop)


def _open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_a_failed_bind_leaves_no_fd_open(loop):
    taken = Accepting.bind(("127.0.0.1", 0), loop=loop)
    try:
        before = _open_fds()
        with pytest.raises(OSError):
            danga.Listener.bind(taken.sock.getsockname(), loop=loop)
        assert _open_fds() == before
    finally:
        _close(taken, loop)


def test_factory_is_passed_on(loop):
    made = []

    def factory(conn: socket.socket, *, loop: danga.Loop) -> None:
        made.append(loop)
        conn.close()

    lsn = danga.Listener.bind(("127.0.0.1", 0), loop=loop, factory=factory, backlog=5)
    try:
        with socket.create_connection(lsn.sock.getsockname()):
            run_until(loop, lambda: made, 5.0)
        assert made == [loop]
    finally:
        _close(lsn, loop)


@pytest.mark.parametrize(
    ("kwargs", "exc", "words"),
    [
        ({"ssl": object()}, TypeError, "SSLContext"),
        ({"backlog": -1}, ValueError, "backlog"),
        ({"backlog": 1.5}, TypeError, "backlog"),
        ({"backlog": True}, TypeError, "backlog"),
        ({"reuse_port": "yes"}, TypeError, "reuse_port"),
    ],
)
def test_bad_arguments_name_the_call(loop, kwargs, exc, words):
    with pytest.raises(exc, match=words) as info:
        danga.Listener.bind(("127.0.0.1", 0), loop=loop, **kwargs)
    assert "Listener.bind" in str(info.value)
    assert loop.watched_sockets() == 0


@pytest.mark.parametrize("address", [12, ("127.0.0.1",), ("127.0.0.1", "80"), None])
def test_bad_addresses_name_the_call(loop, address):
    with pytest.raises(TypeError, match=r"Listener\.bind\(address\)"):
        danga.Listener.bind(address, loop=loop)


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="no AF_UNIX on this platform")
def test_reuse_port_on_a_unix_path_is_refused(loop, tmp_path):
    with pytest.raises(ValueError, match="needs a TCP address"):
        danga.Listener.bind(str(tmp_path / "s"), loop=loop, reuse_port=True)
    assert not (tmp_path / "s").exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's SO_REUSEPORT")
def test_listening_socket_without_listen_is_only_bound():
    sock = danga.Listener.listening_socket(("127.0.0.1", 0), reuse_port=True, listen=False)
    try:
        assert not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(sock.getsockname(), timeout=5.0)
    finally:
        sock.close()
