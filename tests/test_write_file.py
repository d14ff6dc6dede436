"""Socket.write_file(): file regions in the write queue, sent with os.sendfile or read and
sent, on every backend (docs/connect.md)."""

from __future__ import annotations

import errno
import hashlib
import itertools
import os
import random
import socket
from typing import Any

import pytest

import danga
from danga.socket import SENDFILE_CHUNK
from danga.testing import run_until
from danga_helpers import nb_pair, tcp_pair

KIB = 1024
MIB = 1024 * KIB
BIG = 10 * MIB


class Sender(danga.Socket):
    def event_read(self) -> None:
        if self.read(65536) is None:
            self.close("eof")


@pytest.fixture(scope="module")
def content() -> bytes:
    return random.Random(13).randbytes(BIG + 8 * KIB)


@pytest.fixture
def data_file(tmp_path, content):
    path = tmp_path / "data.bin"
    path.write_bytes(content)
    with open(path, "rb") as f:
        yield f


@pytest.fixture(params=["sendfile", "fallback"])
def path_kind(request, monkeypatch):
    """Which way the bytes go; records every os.sendfile call as (count, raised)."""
    calls: list[tuple[int, bool]] = []
    real = os.sendfile

    def spy(out_fd: int, in_fd: int, offset: int, count: int) -> int:
        if request.param == "fallback":
            calls.append((count, True))
            raise OSError(errno.EINVAL, "sendfile refused (test)")
        calls.append((count, False))
        return real(out_fd, in_fd, offset, count)

    monkeypatch.setattr(os, "sendfile", spy)
    return request.param, calls


def transport(kind: str) -> tuple[socket.socket, socket.socket]:
    if kind == "socketpair":
        a, b = nb_pair()
    else:
        a, b = tcp_pair()
        b.setblocking(False)
        b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * KIB)
    return a, b


def slow_collect(loop: danga.Loop, peer: socket.socket, want: int,
                 step: int = 256 * KIB) -> bytes:
    """Run the loop, reading at most *step* bytes per iteration (a slow reader)."""
    got = bytearray()

    def some() -> bool:
        left = step
        while left > 0:
            try:
                chunk = peer.recv(min(left, 64 * KIB))
            except BlockingIOError:
                break
            if not chunk:
                break
            got.extend(chunk)
            left -= len(chunk)
        return len(got) >= want

    run_until(loop, some, 30.0)
    return bytes(got)


def recv_some(peer: socket.socket, got: bytearray) -> None:
    """Read what one recv of at most 64 KiB gives now into *got*."""
    try:
        got.extend(peer.recv(64 * KIB))
    except BlockingIOError:
        pass


SIZES = [(0, 0), (1, 5), (SENDFILE_CHUNK - 1, 0), (SENDFILE_CHUNK, 3),
         (SENDFILE_CHUNK + 1, 4097), (BIG, 1)]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["socketpair", "tcp"])
@pytest.mark.parametrize(("size", "offset"), SIZES)
def test_region_arrives_whole_in_order(loop, data_file, content, path_kind, kind, size,
                                       offset):
    way, calls = path_kind
    a, b = transport(kind)
    obj = Sender(a, loop=loop)
    data_file.seek(11)
    done: list[int] = []
    obj.write(b"HDR")
    obj.write_file(data_file, offset, size)
    assert obj.write_buf_size <= 3 + size
    obj.write(b"TRL")
    obj.write(lambda: done.append(obj.write_buf_size))
    want = b"HDR" + content[offset:offset + size] + b"TRL"
    got = slow_collect(loop, b, len(want))
    run_until(loop, lambda: bool(done))
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(want).hexdigest()
    assert done == [0]
    assert data_file.tell() == 11  # the file position never moves
    if size:
        assert calls, "os.sendfile was never tried"
        assert all(count <= SENDFILE_CHUNK for count, _ in calls)
        if way == "fallback":
            assert len(calls) == 1 and calls[0][1]  # tried once, then read and send
        else:
            assert not any(raised for _, raised in calls)
            assert len(calls) >= size // SENDFILE_CHUNK
    assert not obj.closed
    obj.close()
    b.close()


def test_count_none_sends_to_the_end_and_an_fd_works(loop, data_file, content):
    a, b = nb_pair()
    obj = Sender(a, loop=loop)
    start = len(content) - 1000
    assert obj.write_file(data_file.fileno(), start) in (True, False)
    got = slow_collect(loop, b, 1000)
    assert got == content[start:]
    obj.close()
    b.close()


def test_zero_byte_region_completes_at_once(loop, data_file):
    a, b = nb_pair()
    obj = Sender(a, loop=loop)
    assert obj.write_file(data_file, 0, 0) is True
    assert obj.write_file(data_file, len(data_file.read()) + 5) is True  # past the end
    assert obj.write_buf_size == 0
    ran: list[bool] = []
    obj.write(lambda: ran.append(True))
    assert ran == [True]
    obj.close()
    b.close()


def test_write_buf_size_counts_what_is_left(loop, data_file, content, path_kind):
    a, b = nb_pair()
    obj = Sender(a, loop=loop)
    obj.write_file(data_file, 0, 4 * MIB)
    sizes = [obj.write_buf_size]
    assert 0 < sizes[0] <= 4 * MIB
    got = bytearray()

    def step() -> bool:
        recv_some(b, got)
        sizes.append(obj.write_buf_size)
        return len(got) == 4 * MIB

    run_until(loop, step, 30.0)
    assert sizes == sorted(sizes, reverse=True)  # only ever goes down...
    assert sizes[-1] == 0 and len(set(sizes)) > 3  # ...chunk by chunk, to 0
    assert bytes(got) == content[:4 * MIB]
    obj.close()
    b.close()


@pytest.mark.timeout(60)
def test_file_that_shrinks_closes_with_file_truncated(loop, tmp_path, content, path_kind):
    path = tmp_path / "shrinks.bin"
    path.write_bytes(content[:2 * MIB])
    a, b = nb_pair()
    obj = Sender(a, loop=loop)
    with open(path, "rb") as f:
        obj.write_file(f, 0, 2 * MIB)
        os.truncate(path, 300 * KIB)
        got = bytearray()

        run_until(loop, lambda: recv_some(b, got) or obj.closed, 30.0)
    assert obj.close_reason == "file_truncated"
    b.close()


def test_fallback_only_before_the_first_byte(loop, data_file, monkeypatch):
    real = os.sendfile
    seen: list[int] = []

    def once_then_einval(out_fd: int, in_fd: int, offset: int, count: int) -> int:
        seen.append(offset)
        if len(seen) == 1:
            return real(out_fd, in_fd, offset, 1000)
        raise OSError(errno.EINVAL, "refused mid-stream (test)")

    monkeypatch.setattr(os, "sendfile", once_then_einval)
    a, b = nb_pair()
    obj = Sender(a, loop=loop)
    obj.write_file(data_file, 0, 500 * KIB)
    run_until(loop, lambda: obj.closed)
    assert obj.close_reason == "write_error" and len(seen) == 2
    b.close()


def test_peer_closing_mid_file_closes_quietly(loop, data_file):
    a, b = nb_pair()
    obj = Sender(a, loop=loop)
    obj.write_file(data_file, 0, BIG)
    b.close()
    run_until(loop, lambda: obj.closed)
    assert obj.close_reason in ("EPIPE", "ECONNRESET")


def test_write_file_while_connecting_is_sent_after_the_connect(loop, data_file, content):
    lsn = socket.socket()
    lsn.bind(("127.0.0.1", 0))
    lsn.listen(1)
    obj = danga.connect(lsn.getsockname(), Sender, loop=loop)
    assert obj.connecting
    assert obj.write_file(data_file, 100, 300 * KIB) is False
    obj.write(b"END")
    srv, _ = lsn.accept()
    srv.setblocking(False)
    got = slow_collect(loop, srv, 300 * KIB + 3)
    assert got == content[100:100 + 300 * KIB] + b"END"
    obj.close()
    srv.close()
    lsn.close()


def test_bad_arguments(loop, data_file, tmp_path):
    a, b = nb_pair()
    obj = Sender(a, loop=loop)
    with pytest.raises(TypeError, match="write_file"):
        obj.write_file("name.txt")
    with pytest.raises(TypeError, match="offset"):
        obj.write_file(data_file, 1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="count"):
        obj.write_file(data_file, 0, -1)
    r, w = os.pipe()
    try:
        with pytest.raises(ValueError, match="regular file"):
            obj.write_file(r, 0, 10)
    finally:
        os.close(r)
        os.close(w)
    closed: Any = open(tmp_path / "x", "wb")  # noqa: SIM115
    closed.close()
    with pytest.raises(ValueError, match="write_file"):
        obj.write_file(closed)
    obj.close()
    assert obj.write_file(data_file) is True  # closed: nothing is sent
    b.close()


class _Drain(danga.Socket):
    """Reads all it can, fast: the peer of a file transfer that the kernel keeps up with."""

    def __init__(self, sock: socket.socket, *, loop: danga.Loop) -> None:
        super().__init__(sock, loop=loop)
        self.got = bytearray()
        self.watch_read(True)

    def event_read(self) -> None:
        data = self.read(MIB)
        if data is None:
            self.close("eof")
        elif data:
            self.got += data


class _Pong(danga.Socket):
    """Half of a ping-pong in the same loop: answers each byte, counting."""

    count = 0

    def event_read(self) -> None:
        data = self.read(64)
        if data:
            _Pong.count += 1
            self.write(data)


class BigStepSender(Sender):
    sendfile_max_chunk = 4 * SENDFILE_CHUNK


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, None])
def test_a_bad_sendfile_max_chunk_is_refused_before_anything_is_queued(loop, data_file, bad):
    a, b = tcp_pair()
    sender = Sender(a, loop=loop)
    sender.sendfile_max_chunk = bad  # Sender has no __slots__: set on the instance
    try:
        with pytest.raises(ValueError, match=r"write_file\(\): Sender.sendfile_max_chunk "
                                             r"must be a positive int"):
            sender.write_file(data_file, 0, 10)
        assert sender.write_buf_size == 0
    finally:
        sender.close()
        b.close()


@pytest.mark.timeout(60)
def test_a_big_file_leaves_room_for_other_sockets(loop, data_file, content, monkeypatch):
    # The fairness rule: one sendfile call of at most sendfile_max_chunk per writable
    # event, the rest at the next one, after the other ready sockets of the poll were
    # served. (A class's own chunk here; the default's steps are checked by SIZES.)
    calls: list[tuple[int, int]] = []  # (count asked, ping-pong answers so far)
    real = os.sendfile

    def spy(out_fd: int, in_fd: int, offset: int, count: int) -> int:
        calls.append((count, _Pong.count))
        return real(out_fd, in_fd, offset, count)

    monkeypatch.setattr(os, "sendfile", spy)
    a, b = tcp_pair()
    sender, drain = BigStepSender(a, loop=loop), _Drain(b, loop=loop)
    p, q = socket.socketpair()
    pongs = [_Pong(p, loop=loop), _Pong(q, loop=loop)]
    for end in pongs:
        end.watch_read(True)
    _Pong.count = 0
    pongs[0].write(b"x")
    sender.write_file(data_file, 0, BIG)
    run_until(loop, lambda: len(drain.got) >= BIG, 30.0)
    assert hashlib.sha256(drain.got).digest() == hashlib.sha256(content[:BIG]).digest()
    chunk = BigStepSender.sendfile_max_chunk
    assert calls[0][0] == chunk  # the class's whole chunk asked at once, not 128 KiB steps
    assert all(count <= chunk for count, _ in calls)
    assert len(calls) >= BIG // chunk
    # Between two chunks, the ping-pong (ready at every poll) was answered.
    answered = [n for _, n in calls[1:]]
    assert all(later > earlier for earlier, later in itertools.pairwise(answered)), calls
    for obj in (sender, drain, *pongs):
        obj.close()
