"""danga.connect(): outbound connects on every backend (docs/connect.md)."""

from __future__ import annotations

import errno
import os
import select
import socket
import threading
import time
from typing import Any

import pytest

import danga
from danga.testing import run_until
from danga_helpers import drain, have_ipv6


class Client(danga.Socket):
    """Logs its hooks and events; writes *early* in __init__ and watches read."""

    def __init__(self, sock: Any, *, loop: danga.Loop, early: bytes = b"") -> None:
        super().__init__(sock, loop=loop)
        self.log: list[Any] = []
        if early:
            self.write(early)
        self.watch_read(True)

    def on_connect(self) -> None:
        self.log.append(("connect", self.connecting))

    def on_connect_error(self, exc: OSError) -> None:
        self.log.append(("error", exc))
        super().on_connect_error(exc)

    def event_read(self) -> None:
        data = self.read(65536)
        self.log.append(("read", data))
        if data is None:
            self.close("eof")

    def event_write(self) -> None:
        self.log.append("write")
        super().event_write()

    def event_err(self) -> None:
        self.log.append("err")
        super().event_err()

    def event_hup(self) -> None:
        self.log.append("hup")
        super().event_hup()


def listener(family: int = socket.AF_INET, backlog: int = 8) -> socket.socket:
    lsn = socket.socket(family, socket.SOCK_STREAM)
    lsn.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
    lsn.listen(backlog)
    return lsn


def closed_port() -> int:
    with listener() as lsn:
        return int(lsn.getsockname()[1])


def full_listener(stack: list[socket.socket]) -> socket.socket:
    """A listener that never accepts and whose accept queue is full: a new connect's SYN
    is dropped and it stays in SYN_SENT (the fillers are kept in *stack*)."""
    lsn = listener(backlog=0)
    stack.append(lsn)
    for _ in range(64):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(lsn.getsockname())
        stack.append(s)
        poller = select.poll()
        poller.register(s, select.POLLOUT)
        if not poller.poll(200):  # this one is stuck: the queue is full
            return lsn
    raise AssertionError("the accept queue never filled")


def errors(obj: Client) -> list[OSError]:
    return [entry[1] for entry in obj.log if isinstance(entry, tuple) and entry[0] == "error"]


def test_refused_reaches_on_connect_error_not_event_err(loop):
    obj = danga.connect(("127.0.0.1", closed_port()), Client, loop=loop)
    assert obj.connecting and not obj.closed
    run_until(loop, lambda: obj.closed)
    assert type(obj) is Client
    [exc] = errors(obj)
    assert exc.errno == errno.ECONNREFUSED
    assert obj.close_reason == "connect_failed: ECONNREFUSED"
    assert "err" not in obj.log and "hup" not in obj.log and "write" not in obj.log
    assert not obj.connecting


def test_timeout_on_a_full_accept_queue(loop):
    stack: list[socket.socket] = []
    try:
        lsn = full_listener(stack)
        start = time.monotonic()
        obj = danga.connect(lsn.getsockname(), Client, loop=loop, timeout=0.3)
        run_until(loop, lambda: obj.closed)
        took = time.monotonic() - start
        [exc] = errors(obj)
        assert isinstance(exc, TimeoutError) and exc.errno == errno.ETIMEDOUT
        assert obj.close_reason == "connect_failed: timeout"
        assert 0.25 <= took < 3.0
    finally:
        for s in stack:
            s.close()


def test_queued_writes_flush_in_order_after_on_connect_without_send(loop, monkeypatch):
    lsn = listener()
    sends: list[bool] = []
    real_send, real_sendmsg = socket.socket.send, socket.socket.sendmsg
    holder: list[Client] = []

    def send(self: socket.socket, data: Any, *args: Any) -> int:
        sends.append(bool(holder) and holder[0].connecting)
        return real_send(self, data, *args)

    def sendmsg(self: socket.socket, bufs: Any, *args: Any) -> int:
        sends.append(bool(holder) and holder[0].connecting)
        return real_sendmsg(self, bufs, *args)

    monkeypatch.setattr(socket.socket, "send", send)
    monkeypatch.setattr(socket.socket, "sendmsg", sendmsg)
    order: list[str] = []
    obj = danga.connect(lsn.getsockname(), lambda s, loop: Client(s, loop=loop, early=b"1-"),
                        loop=loop, timeout=5)
    holder.append(obj)
    assert obj.write(b"2-") is False
    obj.write(lambda: order.append(f"callable connecting={obj.connecting}"))
    assert obj.write(b"3") is False
    assert obj.write_buf_size == 6
    assert sends == []  # nothing was sent while connecting
    srv, _ = lsn.accept()
    srv.setblocking(False)
    got = bytearray()
    run_until(loop, lambda: got.extend(drain(srv)) or got == b"1-2-3")
    assert obj.log[0] == ("connect", False)
    assert order == ["callable connecting=False"]
    assert sends and not any(sends)
    srv.send(b"pong")  # the watch_read of __init__ applies after the connect
    run_until(loop, lambda: ("read", b"pong") in obj.log)
    assert obj.write(b"after") is True
    obj.close()
    srv.close()
    lsn.close()


def test_timeout_is_cancelled_by_success(loop):
    lsn = listener()
    obj = danga.connect(lsn.getsockname(), Client, loop=loop, timeout=0.2)
    run_until(loop, lambda: not obj.connecting)
    deadline = time.monotonic() + 0.4
    run_until(loop, lambda: time.monotonic() > deadline)
    assert not obj.closed and errors(obj) == []
    obj.close()
    lsn.close()


def test_af_unix_path(loop, tmp_path):
    path = str(tmp_path / "s")
    lsn = socket.socket(socket.AF_UNIX)
    lsn.bind(path)
    lsn.listen(4)
    obj = danga.connect(path, lambda s, loop: Client(s, loop=loop, early=b"unix"), loop=loop)
    run_until(loop, lambda: not obj.connecting)
    srv, _ = lsn.accept()
    srv.setblocking(False)
    got = bytearray()
    run_until(loop, lambda: got.extend(drain(srv)) or got == b"unix")
    assert obj.log[0] == ("connect", False)
    obj.close()
    srv.close()
    lsn.close()


def test_af_unix_full_backlog_retries_then_times_out_or_connects(loop, tmp_path):
    """AF_UNIX answers EAGAIN (not EINPROGRESS) on a full backlog: the connect is tried
    again until the timeout, and succeeds once the listener accepts."""
    path = str(tmp_path / "s")
    lsn = socket.socket(socket.AF_UNIX)
    lsn.bind(path)
    lsn.listen(0)
    fillers = []
    while True:
        s = socket.socket(socket.AF_UNIX)
        s.setblocking(False)
        if s.connect_ex(path) in (errno.EAGAIN, errno.EWOULDBLOCK):
            s.close()
            break
        fillers.append(s)
    slow = danga.connect(path, Client, loop=loop, timeout=0.3)
    run_until(loop, lambda: slow.closed)
    assert slow.close_reason == "connect_failed: timeout"
    late = danga.connect(path, Client, loop=loop, timeout=5)
    loop.run_once(0.05)
    assert late.connecting
    while True:  # free the backlog
        try:
            lsn.accept()[0].close()
        except BlockingIOError:
            break
        finally:
            lsn.setblocking(False)
    run_until(loop, lambda: not late.connecting)
    assert late.log == [("connect", False)] and not late.closed
    late.close()
    for s in fillers:
        s.close()
    lsn.close()


def test_error_from_connect_ex_is_reported_on_the_next_iteration(loop, tmp_path):
    obj = danga.connect(str(tmp_path / "nobody"), Client, loop=loop)  # ENOENT at once
    assert obj.log == [] and not obj.closed and obj.connecting
    run_until(loop, lambda: obj.closed)
    assert obj.close_reason == "connect_failed: ENOENT"


@pytest.mark.skipif(not have_ipv6(), reason="no IPv6 loopback (::1) on this machine")
def test_ipv6(loop):
    lsn = listener(socket.AF_INET6)
    obj = danga.connect(lsn.getsockname()[:2], Client, loop=loop)
    run_until(loop, lambda: not obj.connecting)
    assert obj.sock.family == socket.AF_INET6
    assert obj.peer_addr_string() == f"[::1]:{lsn.getsockname()[1]}"
    obj.close()
    lsn.close()


def test_host_name_is_resolved_off_the_loop_thread(loop, monkeypatch):
    lsn = listener()
    threads: list[int] = []
    real = socket.getaddrinfo

    def spy(host: str, *args: Any, **kwargs: Any) -> Any:
        threads.append(threading.get_ident())
        return [info for info in real(host, *args, **kwargs) if info[0] == socket.AF_INET]

    monkeypatch.setattr(socket, "getaddrinfo", spy)
    obj = danga.connect(("localhost", lsn.getsockname()[1]), Client, loop=loop)
    assert obj.connecting
    run_until(loop, lambda: not obj.connecting)
    assert threads and threading.get_ident() not in threads
    assert obj.log == [("connect", False)]
    obj.close()
    lsn.close()


@pytest.mark.skipif(not have_ipv6(), reason="no IPv6 loopback (::1) on this machine")
def test_host_name_of_another_family_gets_a_new_socket(loop, monkeypatch):
    lsn = listener(socket.AF_INET6)
    port = lsn.getsockname()[1]
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: [
        (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", port, 0, 0))])
    obj = danga.connect(("v6only.test", port), Client, loop=loop)
    run_until(loop, lambda: not obj.connecting)
    assert obj.log == [("connect", False)] and obj.sock.family == socket.AF_INET6
    assert loop.descriptor_map[obj.fd] is obj
    obj.close()
    lsn.close()


def test_failed_resolution(loop, monkeypatch):
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", fail)
    obj = danga.connect(("no.such.host.test", 80), Client, loop=loop)
    run_until(loop, lambda: obj.closed)
    assert obj.close_reason == "connect_failed: EAI_NONAME"


def test_source_address(loop):
    lsn = listener()
    src = listener()  # a free local port: closed, then bound by the connect
    port = src.getsockname()[1]
    src.close()
    obj = danga.connect(lsn.getsockname(), Client, loop=loop,
                        source_address=("127.0.0.1", port))
    run_until(loop, lambda: not obj.connecting)
    assert obj.local_addr_string() == f"127.0.0.1:{port}"
    obj.close()
    bad = danga.connect(lsn.getsockname(), Client, loop=loop,
                        source_address=("192.0.2.1", 0))  # not a local address
    assert not bad.closed
    run_until(loop, lambda: bad.closed)
    assert bad.close_reason == "connect_failed: EADDRNOTAVAIL"
    lsn.close()


def test_close_while_connecting_ends_it_quietly(loop):
    stack: list[socket.socket] = []
    try:
        lsn = full_listener(stack)
        obj = danga.connect(lsn.getsockname(), Client, loop=loop, timeout=0.1)
        obj.close("changed my mind")
        deadline = time.monotonic() + 0.3
        run_until(loop, lambda: time.monotonic() > deadline)
        assert obj.log == [] and obj.close_reason == "changed my mind"
        assert loop.timers() == 0
    finally:
        for s in stack:
            s.close()


def test_watch_write_asked_while_connecting_applies_after(loop):
    lsn = listener()
    obj = danga.connect(lsn.getsockname(), Client, loop=loop)
    obj.watch_write(True)
    run_until(loop, lambda: "write" in obj.log)
    assert obj.log.index(("connect", False)) < obj.log.index("write")
    obj.close()
    lsn.close()


def test_bad_arguments(loop, tmp_path):
    addr = ("127.0.0.1", 80)
    with pytest.raises(TypeError, match=r"connect\(ssl=\.\.\.\) takes an ssl\.SSLContext"):
        danga.connect(addr, Client, loop=loop, ssl=object())
    with pytest.raises(ValueError, match="server_hostname"):
        danga.connect(addr, Client, loop=loop, server_hostname="x")
    with pytest.raises(TypeError, match="address"):
        danga.connect(["127.0.0.1", 80], Client, loop=loop)
    with pytest.raises(ValueError, match="port"):
        danga.connect(("127.0.0.1", 70000), Client, loop=loop)
    with pytest.raises(TypeError, match="port"):
        danga.connect(("127.0.0.1", "80"), Client, loop=loop)
    with pytest.raises(ValueError, match="timeout"):
        danga.connect(addr, Client, loop=loop, timeout=0)
    with pytest.raises(TypeError, match="factory"):
        danga.connect(addr, 3, loop=loop)  # type: ignore[arg-type]
    before = set(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else set()
    with pytest.raises(TypeError, match="factory must return"):
        danga.connect(addr, lambda s, loop: "nope", loop=loop)  # type: ignore[arg-type]
    if before:
        assert set(os.listdir("/proc/self/fd")) <= before  # the socket was closed


def test_steal_while_connecting_gives_a_plain_socket(loop):
    lsn = listener()
    obj = danga.connect(lsn.getsockname(), Client, loop=loop, timeout=0.2)
    sock = obj.steal_socket()
    assert type(sock) is socket.socket and not obj.connecting
    assert type(obj) is Client  # its own class again
    deadline = time.monotonic() + 0.3
    run_until(loop, lambda: time.monotonic() > deadline)
    assert obj.log == [] and loop.timers() == 0
    sock.setblocking(True)
    srv, _ = lsn.accept()
    sock.sendall(b"mine")
    assert srv.recv(4) == b"mine"
    for s in (sock, srv, lsn):
        s.close()


class Keeps(Client):
    """Keeps the object when the connect fails (a retry would make a new one)."""

    def on_connect_error(self, exc: OSError) -> None:
        self.log.append(("error", exc))


def test_a_failed_connect_that_is_kept_gets_no_event_err_or_hup(loop):
    obj = danga.connect(("127.0.0.1", closed_port()), Keeps, loop=loop)
    run_until(loop, lambda: bool(errors(obj)))
    for _ in range(5):
        loop.run_once(0.01)
    assert obj.log == [("error", errors(obj)[0])] and not obj.closed
    assert type(obj) is Keeps and not obj.connecting
    obj.close()


def test_closed_loop_is_refused():
    lp = danga.Loop()
    lp.close()
    with pytest.raises(RuntimeError):
        danga.connect(("127.0.0.1", 80), Client, loop=lp)
