"""tcp_cork, addresses and as_string, debugging output (on every backend)."""

from __future__ import annotations

import logging
import os
import socket
import sys

import pytest

import danga
from danga_helpers import have_ipv6, nb_pair, tcp_pair

if sys.platform.startswith("linux"):
    CORK = socket.TCP_CORK  # type: ignore[attr-defined]
else:  # BSD and macOS: TCP_NOPUSH (Danga's listed gap)
    CORK = getattr(socket, "TCP_NOPUSH", 4)


def _corked(sock: socket.socket) -> bool:
    return sock.getsockopt(socket.IPPROTO_TCP, CORK) != 0


def test_tcp_cork_toggles_on_tcp(loop):
    cli, srv = tcp_pair()
    obj = danga.Socket(srv, loop=loop)
    assert not _corked(srv)
    obj.tcp_cork(True)
    assert _corked(srv)
    obj.tcp_cork(True)  # unchanged: no-op
    assert _corked(srv)
    obj.tcp_cork(False)
    assert not _corked(srv)
    obj.tcp_cork(True)
    stolen = obj.steal_socket()  # uncorks, as Danga's _cleanup does
    assert not _corked(stolen)
    stolen.close()
    cli.close()


def test_tcp_cork_is_a_silent_noop_on_unix_sockets_and_pipes(loop, caplog):
    caplog.set_level(logging.DEBUG, logger="danga")
    a, b = nb_pair()
    r, w = os.pipe()
    unix = danga.Socket(a, loop=loop)
    pipe = danga.Socket(os.fdopen(w, "wb", buffering=0), loop=loop)
    for obj in (unix, pipe):
        obj.tcp_cork(True)
        obj.tcp_cork(False)
        obj.tcp_cork(True)
        assert not obj.closed  # Danga closed a pipe here ("tcp_cork_failed")
    assert pipe.write(b"still works") is True
    assert os.read(r, 100) == b"still works"
    assert not [rec for rec in caplog.records if rec.levelno >= logging.WARNING]
    os.close(r)
    b.close()


def test_ipv4_addresses_and_as_string(loop):
    cli, srv = tcp_pair()

    class Conn(danga.Socket):
        pass

    obj = Conn(srv, loop=loop)
    cport = cli.getsockname()[1]
    sport = srv.getsockname()[1]
    assert obj.peer_ip_string() == "127.0.0.1"
    assert obj.peer_addr_string() == f"127.0.0.1:{cport}"
    assert obj.local_ip_string() == "127.0.0.1"
    assert obj.local_addr_string() == f"127.0.0.1:{sport}"
    assert obj.as_string() == f"Conn(): open to 127.0.0.1:{cport}"
    obj.watch_read(True)
    assert obj.as_string() == f"Conn(R): open to 127.0.0.1:{cport}"
    obj.watch_write(True)
    assert obj.as_string() == f"Conn(RW): open to 127.0.0.1:{cport}"
    obj.watch_read(False)
    assert repr(obj) == f"Conn(W): open to 127.0.0.1:{cport}"
    obj.close()
    assert obj.as_string() == "Conn(W): closed"
    cli.close()


def test_ipv6_addresses(loop):
    if not have_ipv6():
        pytest.skip("no IPv6 loopback (::1) on this machine")
    cli, srv = tcp_pair(socket.AF_INET6)
    obj = danga.Socket(srv, loop=loop)
    cport = cli.getsockname()[1]
    assert obj.peer_ip_string() == "::1"
    assert obj.peer_addr_string() == f"[::1]:{cport}"
    assert obj.local_ip_string() == "::1"
    assert obj.local_addr_string() == f"[::1]:{srv.getsockname()[1]}"
    assert obj.as_string() == f"Socket(): open to [::1]:{cport}"
    cli.close()


def test_unix_addresses(loop, tmp_path):
    a, b = nb_pair()
    pair_end = danga.Socket(a, loop=loop)
    # A socketpair has no address at all: None, not Danga's "[Unknown peername ...]".
    assert pair_end.peer_ip_string() is None and pair_end.peer_addr_string() is None
    assert pair_end.local_ip_string() is None and pair_end.local_addr_string() is None
    assert pair_end.as_string() == "Socket(): open"
    path = str(tmp_path / "sock")
    lsn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lsn.bind(path)
    lsn.listen(1)
    cli = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    cli.connect(path)
    conn, _ = lsn.accept()
    server_end = danga.Socket(conn, loop=loop)
    client_end = danga.Socket(cli, loop=loop)
    assert server_end.local_addr_string() == path
    assert server_end.peer_addr_string() is None  # the client is unnamed
    assert client_end.peer_addr_string() == path
    assert client_end.peer_ip_string() is None
    assert client_end.as_string() == f"Socket(): open to {path}"
    listener = danga.Socket(lsn, loop=loop)
    assert listener.peer_addr_string() is None and listener.local_addr_string() == path
    b.close()


def test_listening_tcp_socket_has_no_peer(loop):
    lsn = socket.socket()
    lsn.bind(("127.0.0.1", 0))
    lsn.listen(1)
    obj = danga.Socket(lsn, loop=loop)
    assert obj.peer_ip_string() is None and obj.peer_addr_string() is None
    assert obj.local_addr_string() == f"127.0.0.1:{lsn.getsockname()[1]}"
    assert obj.as_string() == "Socket(): open"


def test_pipe_has_no_addresses(loop):
    r, w = os.pipe()
    obj = danga.Socket(os.fdopen(r, "rb", buffering=0), loop=loop)
    assert obj.peer_addr_string() is None and obj.local_addr_string() is None
    assert obj.peer_ip_string() is None and obj.local_ip_string() is None
    os.close(w)


def test_debug_msg_and_debugmsg(loop, capsys, caplog):
    caplog.set_level(logging.DEBUG, logger="danga")
    a, b = nb_pair()
    obj = danga.Socket(a, loop=loop)
    loop.debug_msg("loop %s %d\n", "says", 1)
    obj.debugmsg("object %s", "says")
    danga.Socket.DebugMsg("class says %d%%", 100)
    obj.debugmsg("no args %s")  # no args: the format is printed as is
    err = capsys.readouterr().err
    assert err == (">>> loop says 1\n>>> object says\n>>> class says 100%\n"
                   ">>> no args %s\n")
    debug = [r.getMessage() for r in caplog.records
             if r.name == "danga" and r.levelno == logging.DEBUG]
    assert debug == ["loop says 1", "object says", "class says 100%", "no args %s"]
    b.close()


def test_dump_error_logs_traceback_and_as_string(loop, caplog):
    caplog.set_level(logging.DEBUG, logger="danga")
    cli, srv = tcp_pair()
    obj = danga.Socket(srv, loop=loop)

    def where_it_happened():
        obj.dump_error("something broke")

    where_it_happened()
    (rec,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    text = rec.getMessage()
    assert rec.name == "danga"
    assert text.startswith("ERROR: something broke")
    assert obj.as_string() in text
    assert "where_it_happened" in text  # the call stack
    caplog.clear()
    try:
        raise KeyError("inner")
    except KeyError:
        obj.dump_error("while handling")
    (rec,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "Traceback" in rec.getMessage() and "KeyError: 'inner'" in rec.getMessage()
    cli.close()
