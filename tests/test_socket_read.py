"""read(n) and push_back_read() (on every backend)."""

from __future__ import annotations

import errno
import socket

import pytest

import danga
from danga.testing import run_until
from danga_helpers import Recorder, nb_pair


def test_read_returns_bytes_empty_when_nothing_and_none_at_eof(loop):
    a, b = nb_pair()
    obj = danga.Socket(a, loop=loop)
    assert obj.read(10) == b""  # nothing available now
    b.send(b"abcdef")
    assert obj.read(4) == b"abcd"
    assert type(obj.read(4)) is bytes
    b.close()
    assert obj.read(10) is None  # EOF
    obj.close()
    assert obj.read(10) is None  # closed


def test_read_zero_and_bad_counts(loop):
    a, b = nb_pair()
    obj = danga.Socket(a, loop=loop)
    b.send(b"data")
    assert obj.read(0) == b""  # Danga returned undef, like EOF
    assert obj.read(100) == b"data"
    with pytest.raises(ValueError):
        obj.read(-1)
    with pytest.raises(TypeError):
        obj.read("10")
    b.close()


def test_read_error_returns_none(loop):
    a, b = nb_pair()
    obj = danga.Socket(a, loop=loop)
    a.send(b"unread")  # b closes with unread data: a gets ECONNRESET
    b.close()
    assert obj.read(10) is None


def test_eintr_on_the_plain_recv_is_retried(loop):
    a, b = nb_pair()
    obj = danga.Socket(a, loop=loop)
    calls = []

    def recv(sock, n):
        calls.append(n)
        if len(calls) == 1:
            raise InterruptedError(errno.EINTR, "interrupted")
        return socket.socket.recv(sock, n)

    obj._recv = recv  # the slot read() calls with the socket
    b.send(b"once")
    assert obj.read(10) == b"once"
    assert calls == [10, 10]
    b.close()


def test_a_count_above_max_read_reads_at_most_max_read(loop):
    a, b = nb_pair()
    obj = danga.Socket(a, loop=loop)
    calls = []

    def recv(sock, n):
        calls.append(n)
        return socket.socket.recv(sock, n)

    obj._recv = recv
    assert obj.read(danga.socket.MAX_READ + 1) == b""  # nothing yet: EAGAIN
    b.send(b"big")
    assert obj.read(10 * danga.socket.MAX_READ) == b"big"
    assert calls == [danga.socket.MAX_READ] * 2  # one recv buffer is never larger
    b.close()
    assert obj.read(danga.socket.MAX_READ + 1) is None  # EOF


def test_push_back_served_first_whole_or_split(loop):
    """Danga's observed sequence: push "XYZ", "123"; read(2)=XY, read(100)=Z, read(100)=123,
    and a pushed-back chunk is never topped up from the socket in the same call."""
    a, b = nb_pair()
    obj = danga.Socket(a, loop=loop)
    b.send(b"socket")
    obj.push_back_read(b"XYZ")
    obj.push_back_read(bytearray(b"123"))
    assert obj.read(2) == b"XY"
    assert obj.read(100) == b"Z"
    assert obj.read(3) == b"123"
    assert obj.read(100) == b"socket"  # then one recv
    b.close()


def test_push_back_of_non_bytes_raises(loop):
    a, b = nb_pair()
    obj = danga.Socket(a, loop=loop)
    with pytest.raises(TypeError):
        obj.push_back_read("text")
    b.close()


class Stepper(Recorder):
    """Reads *step* bytes per event_read and records each piece."""

    def __init__(self, sock, *, loop, step):
        super().__init__(sock, loop=loop)
        self.step = step
        self.pieces: list = []

    def event_read(self):
        super().event_read()
        data = self.read(self.step)
        self.pieces.append(data)


def test_push_back_refires_event_read_until_drained(loop):
    a, b = nb_pair()
    obj = Stepper(a, loop=loop, step=2)
    obj.watch_read(True)
    obj.push_back_read(b"abcdef")
    loop.run_once(0)  # no socket event: post-event work re-fires three times
    assert obj.pieces == [b"ab", b"cd", b"ef"]
    loop.run_once(0)
    assert obj.pieces == [b"ab", b"cd", b"ef"]  # drained: no more re-fires
    b.close()


def test_push_back_waits_while_not_watching_read(loop):
    a, b = nb_pair()
    obj = Stepper(a, loop=loop, step=10)
    obj.push_back_read(b"later")
    loop.run_once(0)
    loop.run_once(0)
    assert obj.pieces == []
    obj.watch_read(True)
    loop.run_once(0)
    assert obj.pieces == [b"later"]
    b.close()


def test_push_back_stops_for_a_handler_that_consumes_nothing(loop):
    """Danga re-fired forever; danga gives up for this iteration and retries later."""
    a, b = nb_pair()

    class Ignorer(Recorder):
        pass

    obj = Ignorer(a, loop=loop)
    obj.watch_read(True)
    obj.push_back_read(b"ignored")
    loop.run_once(0)
    assert obj.log == ["read"]
    loop.run_once(0)
    assert obj.log == ["read", "read"]  # once per iteration, not a spin
    assert obj.read(100) == b"ignored"
    b.close()


def test_push_back_handler_closing_another_is_safe(loop):
    """Danga 1.47: one push-back handler closing another's object."""
    a, b = nb_pair()
    c, d = nb_pair()
    log: list = []
    one = Recorder(a, loop=loop, log=log, name="one")
    two = Recorder(c, loop=loop, log=log, name="two")
    for obj, other in ((one, two), (two, one)):
        obj.watch_read(True)
        obj.push_back_read(b"x")
        obj.on["read"] = lambda me, other=other: (me.read(1), other.close())
    loop.run_once(0)
    assert len(log) == 1
    assert one.closed != two.closed
    b.close()
    d.close()


def test_push_back_then_real_data(loop):
    a, b = nb_pair()
    obj = Stepper(a, loop=loop, step=100)
    obj.watch_read(True)
    obj.push_back_read(b"pushed")
    b.send(b"socket")
    run_until(loop, lambda: len(obj.pieces) >= 2 and obj.pieces[-1] == b"socket")
    assert obj.pieces[0] == b"pushed"
    b.close()
