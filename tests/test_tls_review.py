"""Adversarial cases for the TLS layer (docs/tls.md, docs/internals.md): two danga
objects over a socketpair (no thread), on every backend."""

from __future__ import annotations

import os
import socket
from typing import Any

import pytest

import danga
from danga.testing import run_until
from tls_helpers import client_context, make_certs, server_context


@pytest.fixture(scope="session")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("tls-review-certs"))


class Peer(danga.Socket):
    """Logs the handshake, TLS errors and EOF; keeps what it reads."""

    size = 65536

    def __init__(self, sock: Any, *, loop: danga.Loop) -> None:
        super().__init__(sock, loop=loop)
        self.got = b""
        self.log: list[Any] = []
        self.watch_read(True)

    def on_tls_handshake(self) -> None:
        self.log.append("handshake")

    def on_tls_error(self, exc: Exception) -> None:
        self.log.append(("error", type(exc).__name__))
        super().on_tls_error(exc)

    def event_read(self) -> None:
        data = self.read(self.size)
        if data is None:
            self.log.append("eof")
            self.close("eof")
        elif data:
            self.got += data


def pair(loop: danga.Loop, certs: Any, srv_cls: type[danga.Socket] = Peer,
         cli_cls: type[danga.Socket] = Peer) -> tuple[Any, Any]:
    """A server and a client over a socketpair, after the handshake."""
    a, b = socket.socketpair()
    srv = srv_cls(a, loop=loop)
    cli = cli_cls(b, loop=loop)
    srv.start_tls(server_context(certs), server_side=True)
    cli.start_tls(client_context(certs), server_side=False, server_hostname="localhost")
    run_until(loop, lambda: srv.tls and cli.tls and srv.tls.version() and cli.tls.version()
              and not srv.write_buf_size and not cli.write_buf_size, 5)
    return srv, cli


def forge_record(cli: danga.Socket) -> None:
    """Send an application record the peer cannot authenticate, under cli's TLS."""
    cli.sock.send(b"\x17\x03\x03\x00\x20" + b"x" * 32)


def test_a_bad_record_after_gathered_data_is_a_tls_error_not_truncation(loop, certs):
    # One read gathers the whole records the engine holds and stops at a bad one: the
    # data comes first, then on_tls_error names the bad record (OpenSSL does not repeat
    # the error: its next read says EOF, which would be misreported as truncation).
    srv, cli = pair(loop, certs)
    srv.watch_read(False)
    cli.write(b"a" * 5000)
    cli.write(b"b" * 5000)
    forge_record(cli)
    srv.watch_read(True)
    run_until(loop, lambda: srv.closed, 5)
    assert srv.got == b"a" * 5000 + b"b" * 5000
    assert srv.log == ["handshake", ("error", "SSLError")]
    assert srv.close_reason == "tls_error: DECRYPTION_FAILED_OR_BAD_RECORD_MAC"


@pytest.mark.parametrize("error", [ValueError, KeyboardInterrupt])
def test_an_exception_in_event_read_does_not_strand_decrypted_plaintext(loop, certs, error):
    # The plaintext decrypted for an event_read that raised is invisible to the poller:
    # the object is announced again (as a plain socket's unread bytes are), not stalled
    # until the peer happens to send more. A KeyboardInterrupt leaves the loop; the
    # next run delivers it.
    class Raises(Peer):
        def event_read(self) -> None:
            if not self.log.count("raised"):
                self.log.append("raised")
                raise error("first event_read fails")
            super().event_read()

    failures: list[Any] = []
    loop.set_exception_handler(lambda lp, ctx: failures.append(ctx["exception"]))
    srv, cli = pair(loop, certs, Raises)
    cli.write(b"hello")
    try:
        run_until(loop, lambda: srv.got == b"hello", 2)
    except KeyboardInterrupt as exc:
        failures.append(exc)
        run_until(loop, lambda: srv.got == b"hello", 2)
    assert [str(exc) for exc in failures] == ["first event_read fails"]


def unread_queue(loop: danga.Loop, certs: Any) -> tuple[Any, Any]:
    """A pair whose server has ciphertext queued that the client does not read."""
    srv, cli = pair(loop, certs)
    cli.watch_read(False)
    while srv.write(b"q" * 65536):
        pass
    return srv, cli


@pytest.mark.parametrize("how", ["close", "reset"])
def test_loop_close_or_reset_closes_a_lingering_tls_close(loop, certs, how):
    # The stand-in that finishes sending a closed TLS object's queue is danga's own
    # (nobody else can close it): the loop's close() and reset() close its fd, which
    # would otherwise stay open as long as the loop object lives (its timer is gone).
    srv, cli = unread_queue(loop, certs)
    srv.close("done")
    (lingering,) = (obj for obj in loop.descriptor_map.values() if obj is not cli)
    raw = lingering.sock
    getattr(loop, how)()
    try:
        assert raw.fileno() == -1
    finally:
        cli.sock.close()


def test_close_after_the_loop_was_closed_closes_a_tls_object_with_a_queue(loop, certs):
    # A plain object can be closed after its loop was; so can a TLS object whose queue
    # is not out (no stand-in can be registered on a closed loop: it is closed at once).
    srv, cli = unread_queue(loop, certs)
    raw = srv.sock
    loop.close()
    try:
        srv.close("late")
        assert srv.closed and srv.close_reason == "late" and srv.tls is None
        assert raw.fileno() == -1
    finally:
        cli.sock.close()


def test_an_on_tls_error_that_raises_still_closes(loop, certs):
    # The session is unusable whatever the override does: an exception is reported,
    # and the object is closed anyway (else it stays open with a dead engine).
    class Raises(Peer):
        def on_tls_error(self, exc: Exception) -> None:
            raise RuntimeError("on_tls_error fails")

    failures: list[Any] = []
    loop.set_exception_handler(lambda lp, ctx: failures.append(ctx["exception"]))
    srv, cli = pair(loop, certs, Raises)
    forge_record(cli)
    run_until(loop, lambda: srv.closed, 2)
    assert srv.close_reason == "tls_error: DECRYPTION_FAILED_OR_BAD_RECORD_MAC"
    assert [str(exc) for exc in failures] == ["on_tls_error fails"]


@pytest.mark.parametrize("side", ["server", "client"])
def test_a_peer_that_leaves_mid_handshake_is_a_tls_error(loop, certs, side):
    # The alert that answers the failure cannot be sent (the peer is gone): that must
    # not hide the failure as a bare "EPIPE" close without on_tls_error.
    a, b = socket.socketpair()
    obj = Peer(a, loop=loop)
    if side == "server":
        obj.start_tls(server_context(certs), server_side=True)
    else:
        obj.start_tls(client_context(certs), server_side=False, server_hostname="localhost")
        b.settimeout(5)
        assert b.recv(4096)[:1] == b"\x16"  # the ClientHello
    b.close()
    run_until(loop, lambda: obj.closed, 2)
    assert obj.log == [("error", "SSLEOFError")]
    assert obj.close_reason == "tls_error: UNEXPECTED_EOF_WHILE_READING"


@pytest.mark.parametrize("reused", [False, True])
def test_close_with_a_queue_after_the_fd_was_closed_behind_dangas_back(loop, certs, reused):
    # No stand-in takes over an fd number danga no longer owns: close() neither raises
    # (EBADF) nor sends ciphertext to, and later closes, the file that now has it.
    srv, cli = unread_queue(loop, certs)
    fd = srv.fd
    r, w = os.pipe()
    os.close(fd)
    try:
        if reused:
            os.dup2(r, fd)
        srv.close("gone")
        assert srv.closed and srv.close_reason == "gone"
        run_until(loop, lambda: all(obj is cli for obj in loop.descriptor_map.values()), 2)
        if reused:
            os.fstat(fd)  # still open: the pipe's, not danga's
            os.write(w, b"x")
            assert os.read(fd, 10) == b"x"
    finally:
        for each in (r, w, fd) if reused else (r, w):
            os.close(each)
        cli.close()


def test_a_write_in_on_tls_error_does_not_report_the_failure_again(loop, certs):
    # The dead session cannot encrypt: that write must not call on_tls_error again
    # (which wrote again: a RecursionError, and a close reason naming the wrong error).
    class Apologises(Peer):
        def on_tls_error(self, exc: Exception) -> None:
            self.log.append(("error", type(exc).__name__))
            self.log.append(("write", self.write(b"sorry")))

    failures: list[Any] = []
    loop.set_exception_handler(lambda lp, ctx: failures.append(ctx["exception"]))
    a, b = socket.socketpair()
    obj = Apologises(a, loop=loop)
    obj.start_tls(server_context(certs), server_side=True)
    b.sendall(b"GET / HTTP/1.0\r\n\r\n")  # plaintext where a ClientHello belongs
    run_until(loop, lambda: obj.closed, 2)
    b.close()
    assert failures == []
    assert obj.log == [("error", "SSLError"), ("write", False)]
    assert obj.close_reason == "tls_error: HTTP_REQUEST"


def test_a_held_callable_that_raises_does_not_hold_later_writes_for_ever(loop, certs):
    # A callable written during the handshake runs when the held writes are released;
    # if it raises, what follows it, on_tls_handshake and every later write still go.
    def fails() -> None:
        raise ValueError("held callable fails")

    failures: list[Any] = []
    loop.set_exception_handler(lambda lp, ctx: failures.append(ctx["exception"]))
    a, b = socket.socketpair()
    srv, cli = Peer(a, loop=loop), Peer(b, loop=loop)
    srv.start_tls(server_context(certs), server_side=True)
    cli.start_tls(client_context(certs), server_side=False, server_hostname="localhost")
    assert [cli.write(b"a"), cli.write(fails), cli.write(b"b")] == [False] * 3
    run_until(loop, lambda: srv.got == b"ab" and cli.log == ["handshake"], 2)
    cli.write(b"c")
    run_until(loop, lambda: srv.got == b"abc", 2)
    assert [str(exc) for exc in failures] == ["held callable fails"]
