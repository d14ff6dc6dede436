"""write(): data kinds, callables, kick-start, return values, write_buf_size, the
automatic write watch and its ownership rule, EAGAIN, errors, hooks (every
backend)."""

from __future__ import annotations

import errno
import os
import select
import socket
import struct

import pytest

import danga
from danga.testing import run_until
from danga_helpers import collect, drain, fill, nb_pair, shrink, tcp_pair, watch_flags


class Closing(danga.Socket):
    """Records close() calls made through the object (write errors close virtually)."""

    def __init__(self, sock, *, loop):
        super().__init__(sock, loop=loop)
        self.closes: list = []
        self.incomplete = 0

    def close(self, reason=None):
        self.closes.append(reason)
        super().close(reason)

    def on_incomplete_write(self):
        self.incomplete += 1
        super().on_incomplete_write()


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_bytes_like_data_is_sent(loop, kind):
    a, b = nb_pair()
    obj = danga.Socket(a, loop=loop)
    assert obj.write(kind(b"hello ")) is True
    assert obj.write(kind(b"world")) is True
    assert obj.write_buf_size == 0
    assert drain(b) == b"hello world"
    b.close()


def test_multibyte_memoryview_counts_bytes(loop):
    a, b = nb_pair()
    obj = danga.Socket(a, loop=loop)
    view = memoryview(struct.pack("4i", 1, 2, 3, 4)).cast("i")
    assert obj.write(view) is True
    assert drain(b) == struct.pack("4i", 1, 2, 3, 4)
    b.close()


@pytest.mark.parametrize("bad, message", [
    ("text", "encode"),
    (42, "int"),
    ([b"a"], "list"),
    (object(), "object"),
])
def test_str_and_other_types_raise_type_error(loop, bad, message):
    a, b = nb_pair()
    obj = danga.Socket(a, loop=loop)
    with pytest.raises(TypeError, match=message):
        obj.write(bad)
    assert obj.write_buf_size == 0 and not obj.closed
    assert drain(b) == b""
    b.close()


def test_write_none_on_empty_queue(loop):
    a, b = nb_pair()
    obj = danga.Socket(a, loop=loop)
    assert obj.write(None) is True
    assert obj.write() is True
    assert watch_flags(obj) == ""  # the kick-start does not touch the watch
    b.close()


def test_callable_on_empty_queue_runs_at_once(loop):
    a, b = nb_pair()
    obj = danga.Socket(a, loop=loop)
    calls = []
    assert obj.write(lambda *args: calls.append(args)) is True
    assert calls == [()]  # no arguments
    assert obj.write_buf_size == 0
    b.close()


def test_eagain_queues_and_the_queue_flushes_in_order(loop):
    a, b = nb_pair()
    shrink(a)
    obj = danga.Socket(a, loop=loop)
    before = fill(obj)
    queued = obj.write_buf_size
    assert queued > 0
    assert "W" in watch_flags(obj)  # danga's automatic watch
    parts = [b"A" * 1000, bytearray(b"B" * 2000), memoryview(b"C" * 3000), b"D"]
    for part in parts:
        assert obj.write(part) is False
    assert obj.write_buf_size == queued + 6001
    data = collect(loop, b, before + 6001)
    assert data[before:] == b"A" * 1000 + b"B" * 2000 + b"C" * 3000 + b"D"
    run_until(loop, lambda: "W" not in watch_flags(obj))
    assert obj.write_buf_size == 0
    b.close()


def test_callable_runs_after_preceding_data_and_leaves_the_queue_first(loop):
    a, b = nb_pair()
    shrink(a)
    obj = danga.Socket(a, loop=loop)
    before = fill(obj)
    queued = obj.write_buf_size
    seen = []

    def after():
        # Removed from the queue and from write_buf_size before it is called.
        seen.append((obj.write_buf_size, len(got)))
        # Re-entrant writes from the callable go out after everything before it.
        obj.write(b"after-callable")

    assert obj.write(after) is False
    assert obj.write_buf_size == queued + 1
    assert obj.write(b"tail") is False
    assert obj.write_buf_size == queued + 1 + 4
    got = bytearray()

    def done():
        got.extend(drain(b))
        return got.endswith(b"after-callable") or len(got) > before + 100

    run_until(loop, done)
    assert seen and seen[0][0] == 4  # only b"tail" still queued
    assert bytes(got[before:]) == b"tail" + b"after-callable"
    b.close()


def test_callable_may_close_re_entrantly(loop):
    a, b = nb_pair()
    shrink(a)
    obj = Closing(a, loop=loop)
    fill(obj)
    obj.write(lambda: obj.close("done writing"))
    obj.write(b"never sent")
    collected = bytearray()

    def closed():
        collected.extend(drain(b))
        return obj.closed

    run_until(loop, closed)
    assert obj.closes == ["done writing"]
    assert obj.write_buf_size == 0
    loop.run_once(0)
    collected.extend(drain(b))
    assert b"never sent" not in collected
    b.close()


def test_return_values(loop):
    a, b = nb_pair()
    shrink(a)
    obj = danga.Socket(a, loop=loop)
    assert obj.write(b"x") is True
    fill(obj)
    assert obj.write(b"y") is False  # queued behind data
    assert obj.write(None) is False  # still full
    run_until(loop, lambda: (drain(b), obj.write_buf_size == 0)[1])
    assert obj.write(None) is True
    b.close()


def test_automatic_watch_released_after_drain(loop):
    a, b = nb_pair()
    shrink(a)
    obj = danga.Socket(a, loop=loop)
    fill(obj)
    assert watch_flags(obj) == "W"
    run_until(loop, lambda: (drain(b), obj.write_buf_size == 0)[1])
    loop.run_once(0)
    assert watch_flags(obj) == ""
    b.close()


@pytest.mark.parametrize("when", ["before", "while-auto-on"])
def test_subclass_watch_write_owns_the_watch(loop, when):
    """Danga 1.60: watch_write(1) by the subclass keeps it on after the queue drains,
    even when danga's automatic watch was already on."""
    a, b = nb_pair()
    shrink(a)

    class Owner(danga.Socket):
        writes = 0

        def event_write(self):
            self.writes += 1
            self.write(None)

    obj = Owner(a, loop=loop)
    if when == "before":
        obj.watch_write(True)
    fill(obj)
    assert "W" in watch_flags(obj)
    if when == "while-auto-on":
        obj.watch_write(True)
    run_until(loop, lambda: (drain(b), obj.write_buf_size == 0)[1])
    loop.run_once(0)
    assert watch_flags(obj) == "W"  # still on: the subclass owns it
    n = obj.writes
    loop.run_once(0.5)
    assert obj.writes > n  # and it is still delivered
    obj.watch_write(False)
    assert watch_flags(obj) == ""
    b.close()


def test_write_to_closed_socket_returns_true_and_sends_nothing(loop):
    a, b = nb_pair()
    obj = danga.Socket(a, loop=loop)
    obj.close()
    assert obj.write(b"lost") is True
    assert obj.write(lambda: pytest.fail("must not run")) is True
    assert obj.write_buf_size == 0
    loop.run_once(0)
    assert drain(b) == b""
    b.close()


def test_epipe_closes_virtually(loop):
    a, b = socket.socketpair()
    obj = Closing(a, loop=loop)
    b.close()
    assert obj.write(b"x" * 10) is False
    assert obj.closes == ["EPIPE"] and obj.closed
    assert obj.close_reason == "EPIPE"


def test_econnreset_closes_virtually(loop):
    cli, srv = tcp_pair()
    obj = Closing(srv, loop=loop)
    cli.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    cli.close()  # RST
    assert select.select([srv], [], [], 5)[0]
    assert obj.write(b"x") is False
    assert obj.closes == ["ECONNRESET"]


def _writer_raising(exc: OSError):
    def writer(buf):
        raise exc
    return writer


@pytest.mark.parametrize("err, reason", [
    (errno.EPIPE, "EPIPE"),
    (errno.ECONNRESET, "ECONNRESET"),
    (errno.ENOTCONN, "write_error"),
    (errno.EIO, "write_error"),
])
def test_write_errors_close_with_reason(loop, err, reason):
    a, b = nb_pair()
    obj = Closing(a, loop=loop)
    obj.set_writer_func(_writer_raising(OSError(err, os.strerror(err))))
    assert obj.write(b"x") is False
    assert obj.closes == [reason]
    b.close()


def test_write_error_while_flushing_the_queue(loop):
    a, b = nb_pair()
    shrink(a)
    obj = Closing(a, loop=loop)
    fill(obj)
    obj.set_writer_func(_writer_raising(OSError(errno.ECONNRESET, "reset")))
    b.setblocking(False)
    drain(b)
    assert obj.write(None) is False
    assert obj.closes == ["ECONNRESET"]
    b.close()


def test_eintr_is_retried(loop):
    a, b = nb_pair()
    obj = Closing(a, loop=loop)
    calls = []

    def writer(buf):
        calls.append(bytes(buf))
        if len(calls) == 1:
            raise InterruptedError(errno.EINTR, "interrupted")
        return a.send(buf)

    obj.set_writer_func(writer)
    assert obj.write(b"retry") is True
    assert calls == [b"retry", b"retry"]
    assert obj.closes == [] and drain(b) == b"retry"
    b.close()


def test_on_incomplete_write_on_partial_write_and_on_eagain(loop):
    a, b = nb_pair()
    obj = Closing(a, loop=loop)
    state = {"mode": "partial"}

    def writer(buf):
        if state["mode"] == "partial":
            return a.send(bytes(buf[:2]))
        if state["mode"] == "eagain":
            raise BlockingIOError(errno.EAGAIN, "again")
        return a.send(buf)

    obj.set_writer_func(writer)
    assert obj.write(b"abcdef") is False
    assert obj.incomplete == 1 and obj.write_buf_size == 4
    state["mode"] = "eagain"
    assert obj.write(None) is False
    assert obj.incomplete == 2  # Danga skipped the hook on EAGAIN
    assert obj.write_buf_size == 4
    state["mode"] = "ok"
    run_until(loop, lambda: obj.write_buf_size == 0)
    assert drain(b) == b"abcdef"
    # EAGAIN on the direct path of write() (empty queue) calls the hook too.
    state["mode"] = "eagain"
    assert obj.write(b"gh") is False
    assert obj.incomplete == 3 and obj.write_buf_size == 2
    b.close()


def test_on_incomplete_write_override_controls_the_watch(loop):
    """DJabberd's TLS: the hook waits for something else, so danga does not watch write."""
    a, b = nb_pair()

    class Quiet(danga.Socket):
        def on_incomplete_write(self):
            pass

    obj = Quiet(a, loop=loop)
    obj.set_writer_func(lambda buf: 0)
    assert obj.write(b"abc") is False
    assert watch_flags(obj) == ""
    b.close()


def test_set_writer_func_replaces_send(loop):
    a, b = nb_pair()
    obj = danga.Socket(a, loop=loop)
    seen = []

    def writer(buf):
        seen.append(bytes(buf))
        return a.send(bytes(buf).upper())

    obj.set_writer_func(writer)
    assert obj.write(b"shout") is True
    assert seen == [b"shout"] and drain(b) == b"SHOUT"
    obj.set_writer_func(None)
    assert obj.write(b"calm") is True
    assert drain(b) == b"calm"
    with pytest.raises(TypeError, match="callable"):
        obj.set_writer_func("not a function")
    b.close()


def test_mutable_buffer_remainder_is_copied(loop):
    """Perl queued scalar refs by reference (later changes were sent); danga copies the
    unsent part of a mutable buffer, so the caller may reuse it at once."""
    a, b = nb_pair()
    shrink(a)
    obj = danga.Socket(a, loop=loop)
    before = fill(obj)
    buf = bytearray(b"original")
    obj.write(buf)
    buf[:] = b"MUTATED!"
    buf.extend(b"more")
    data = collect(loop, b, before + 8)
    assert data[before:] == b"original"
    b.close()


def test_write_buf_size_counts_bytes_and_callables(loop):
    a, b = nb_pair()
    shrink(a)
    obj = danga.Socket(a, loop=loop)
    fill(obj)
    base = obj.write_buf_size
    obj.write(b"12345")
    obj.write(lambda: None)
    obj.write(bytearray(b"678"))
    obj.write(lambda: None)
    assert obj.write_buf_size == base + 5 + 1 + 3 + 1
    obj.close()
    assert obj.write_buf_size == 0  # Danga left it stale after close
    b.close()


def test_empty_writes(loop):
    """write(b"") is a zero-byte send (True) on an empty queue, and queues nothing."""
    a, b = nb_pair()
    shrink(a)
    obj = danga.Socket(a, loop=loop)
    assert obj.write(b"") is True
    fill(obj)
    size = obj.write_buf_size
    assert obj.write(b"") is False
    assert obj.write_buf_size == size
    b.close()


# -- the common case's own path (bytes, nothing queued, the plain send) --------------------


def test_eagain_with_nothing_queued_queues_it_all(loop):
    a, b = nb_pair()
    shrink(a)
    obj = Closing(a, loop=loop)
    raw = 0
    try:
        while True:  # fill the kernel's buffer behind danga's back: danga's queue is empty
            raw += a.send(b"x" * 65536)
    except BlockingIOError:
        pass
    assert obj.write_buf_size == 0
    assert obj.write(b"queued") is False
    assert obj.write_buf_size == 6 and obj.incomplete == 1
    assert watch_flags(obj) == "W"  # danga's own write watch
    assert collect(loop, b, want=raw + 6) == b"x" * raw + b"queued"
    assert obj.write_buf_size == 0
    assert watch_flags(obj) == ""  # released once the queue drained
    assert obj.closes == []
    b.close()


def test_eintr_on_the_plain_send_is_retried(loop):
    a, b = nb_pair()
    obj = Closing(a, loop=loop)
    calls = []

    def send(sock, buf):
        calls.append(bytes(buf))
        if len(calls) == 1:
            raise InterruptedError(errno.EINTR, "interrupted")
        return socket.socket.send(sock, buf)

    obj._send = send  # the slot write() calls with the socket (no writer function)
    assert obj.write(b"once") is True
    assert calls == [b"once", b"once"]
    assert drain(b) == b"once" and obj.closes == []
    b.close()


def test_error_on_the_plain_send_closes(loop):
    a, b = nb_pair()
    obj = Closing(a, loop=loop)
    b.close()
    assert obj.write(b"to nobody") is False
    assert obj.closes == ["EPIPE"] and obj.closed


def test_a_complete_write_releases_the_watch_a_failed_queued_callable_left(loop):
    # A queued callable that raises leaves the queue empty with danga's write watch on;
    # the next complete write releases it (as it always did), or event_write would fire
    # every iteration under a handler that keeps the object open.
    a, b = nb_pair()
    shrink(a)
    obj = danga.Socket(a, loop=loop)
    fill(obj)

    def boom():
        raise RuntimeError("a queued callable failed")

    obj.write(boom)
    assert watch_flags(obj) == "W"
    drain(b)
    with pytest.raises(RuntimeError):
        while obj.write(None) is False:
            drain(b)
    drain(b)
    assert obj.write_buf_size == 0 and watch_flags(obj) == "W"
    assert obj.write(b"hi") is True
    assert watch_flags(obj) == ""
    assert drain(b) == b"hi"
    b.close()
