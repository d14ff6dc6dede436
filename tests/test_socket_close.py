"""Deferred close, to_close(), steal_socket() (on every backend)."""

from __future__ import annotations

import socket

import danga
from danga import ERR, HUP, READ
from danga_helpers import Recorder, Spy, drain, fd_open, nb_pair, watch_flags


def test_close_unregisters_at_once_and_reaps_in_post_event_work(loop):
    a, b = nb_pair()
    obj = Recorder(a, loop=loop)
    obj.watch_read(True)
    loop.run_once(0)
    fd = obj.fd
    spy = Spy(loop)
    assert obj.close("bye") is None
    # Unregistered at once...
    assert spy.modifies == [(fd, READ | ERR | HUP, 0)]
    assert obj.closed and obj.close_reason == "bye" and obj.sock is None
    # ...but the fd stays open and mapped until post-event work.
    assert fd_open(fd) and a.fileno() == fd
    assert loop.descriptor_map[fd] is obj
    assert loop.to_close() == [obj]
    assert loop.watched_sockets() == 1
    b.send(b"ignored")
    loop.run_once(0)
    assert obj.log == []
    assert fd not in loop.descriptor_map and loop.to_close() == []
    assert a.fileno() == -1  # really closed now
    assert drain(b) == b""


def test_close_is_idempotent(loop):
    a, b = nb_pair()
    obj = Recorder(a, loop=loop)
    loop.run_once(0)  # the registration reaches the kernel (batched until now)
    spy = Spy(loop)
    obj.close("first")
    obj.close("second")
    assert obj.close_reason == "first"
    assert loop.to_close() == [obj]
    assert len(spy.modifies) == 1
    loop.run_once(0)
    obj.close("third")
    assert loop.to_close() == [] and obj.close_reason == "first"
    b.close()


def test_close_inside_a_handler_defers_until_after_the_batch(loop):
    a, b = nb_pair()
    seen: list = []

    class Closer(Recorder):
        def event_read(self):
            self.close("in handler")
            seen.append((fd_open(self.fd), loop.descriptor_map.get(self.fd) is self,
                         loop.to_close() == [self]))

    obj = Closer(a, loop=loop)
    obj.watch_read(True)
    b.send(b"x")
    from danga.testing import run_until
    run_until(loop, lambda: seen)
    assert seen == [(True, True, True)]
    assert obj.fd not in loop.descriptor_map and a.fileno() == -1


def test_close_drops_the_write_queue(loop):
    a, b = nb_pair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    obj = danga.Socket(a, loop=loop)
    from danga_helpers import fill
    fill(obj)
    called = []
    obj.write(b"tail")
    obj.write(lambda: called.append(1))
    assert obj.write_buf_size > 0
    obj.close()
    assert obj.write_buf_size == 0
    loop.run_once(0)
    assert called == []
    b.close()


def test_as_string_after_close(loop):
    cli, srv = _tcp()
    obj = Recorder(srv, loop=loop)
    obj.watch_read(True)
    assert obj.as_string() == f"Recorder(R): open to {obj.peer_addr_string()}"
    obj.close()
    assert obj.as_string() == "Recorder(R): closed"
    assert repr(obj) == "Recorder(R): closed"
    cli.close()


def test_addresses_are_none_after_close(loop):
    cli, srv = _tcp()
    obj = Recorder(srv, loop=loop)
    assert obj.peer_addr_string() is not None
    obj.close()
    assert obj.peer_addr_string() is None
    assert obj.peer_ip_string() is None
    assert obj.local_addr_string() is None
    cli.close()


def _tcp():
    from danga_helpers import tcp_pair
    return tcp_pair()


def test_steal_socket(loop):
    a, b = nb_pair()
    obj = Recorder(a, loop=loop)
    obj.watch_read(True)
    loop.run_once(0)
    fd = obj.fd
    spy = Spy(loop)
    sock = obj.steal_socket()
    assert sock is a and sock.fileno() == fd  # still open
    assert obj.closed and obj.sock is None
    assert fd not in loop.descriptor_map  # at once (Danga leaked the entry)
    assert loop.to_close() == [] and loop.watched_sockets() == 0
    assert spy.modifies == [(fd, READ | ERR | HUP, 0)]
    assert obj.steal_socket() is None
    b.send(b"x")
    loop.run_once(0.05)
    assert obj.log == [] and sock.fileno() == fd
    # The stolen socket works and can be wrapped again at once, without a warning.
    assert sock.recv(10) == b"x"
    again = Recorder(sock, loop=loop)
    assert loop.descriptor_map[fd] is again
    assert watch_flags(again) == ""
    b.close()


def test_to_close_lists_socket_objects(loop):
    pairs = [nb_pair() for _ in range(3)]
    objs = [danga.Socket(a, loop=loop) for a, _ in pairs]
    objs[2].close()
    objs[0].close()
    assert loop.to_close() == [objs[2], objs[0]]
    assert all(isinstance(o, danga.Socket) for o in loop.to_close())
    loop.run_once(0)
    assert loop.to_close() == []
    assert list(loop.descriptor_map.values()) == [objs[1]]
    for _, b in pairs:
        b.close()


def test_closed_object_ignores_watches_and_callbacks(loop):
    a, b = nb_pair()
    obj = Recorder(a, loop=loop)
    obj.close()
    spy = Spy(loop)
    obj.watch_read(True)
    obj.watch_write(True)
    obj.set_post_loop_callback(lambda *_: False)  # Danga filed it under key "" forever
    obj.push_back_read(b"late")
    loop.run_once(0)
    loop.run_once(0)
    assert spy.modifies == [] and obj.log == []
    assert obj.read(10) is None
    b.close()
