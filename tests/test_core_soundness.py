"""The core stays sound under interrupts, faults and fd-number reuse, on every backend
(docs/internals.md, "Failure classes"). Each test here failed on the core before the v2
re-layering; the failure it guards is named in its docstring."""

from __future__ import annotations

import errno
import gc
import io
import logging
import os
import socket
import weakref
from typing import Any

import pytest

import danga
from danga import ERR, HUP, READ, WRITE
from danga.testing import run_until
from danga_helpers import Recorder, drain, fd_open, fill, nb_pair, shrink, tcp_pair

# -- KeyboardInterrupt while interest changes are applied ------------------------------


@pytest.mark.parametrize("when", ["before", "after"])
def test_interrupt_during_flush_loses_no_change(loop, when):
    """A KeyboardInterrupt raised while the loop applies interest changes (before or
    after the system call for one fd) dropped the changes not yet applied: those
    connections never got their data."""
    pairs = [nb_pair() for _ in range(6)]
    objs = [Recorder(a, loop=loop) for a, _ in pairs]
    loop.run_once(0)  # registrations applied
    for obj in objs:
        obj.watch_read(True)
    real = loop.backend.modify
    calls = []

    def modify(fd: int, old: int, new: int) -> None:
        calls.append(fd)
        if len(calls) == 2 and when == "before":
            raise KeyboardInterrupt
        real(fd, old, new)
        if len(calls) == 2 and when == "after":
            raise KeyboardInterrupt

    loop.backend.modify = modify  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        loop.run_once(0)
    loop.backend.modify = real  # type: ignore[method-assign]
    for _, b in pairs:
        b.send(b"x")
    run_until(loop, lambda: all("read" in obj.log for obj in objs))
    kernel = loop._registry.kernel
    assert all(kernel[obj.fd] == READ | ERR | HUP for obj in objs)
    for obj, (_, b) in zip(objs, pairs, strict=True):
        obj.close()
        b.close()


# -- the deferred real close -----------------------------------------------------------


class RaisingClose(socket.socket):
    """A socket whose close() raises once (a raw close that fails)."""

    exc: BaseException | None = None

    def close(self) -> None:
        exc, type(self).exc = type(self).exc, None
        super().close()
        if exc is not None:
            raise exc


@pytest.mark.parametrize("exc", [RuntimeError("close failed"), KeyboardInterrupt()],
                         ids=["exception", "keyboard-interrupt"])
def test_deferred_close_is_exception_safe(loop, exc, caplog):
    """One object whose real close raised left the others of the same pass never
    closed: their peers never saw EOF and they stayed in descriptor_map for ever."""
    a, peer = socket.socketpair()
    bad = RaisingClose(fileno=a.detach())
    others = [nb_pair() for _ in range(3)]
    objs = [Recorder(bad, loop=loop)] + [Recorder(s, loop=loop) for s, _ in others]
    loop.run_once(0)
    RaisingClose.exc = exc
    for obj in objs:
        obj.close("done")
    if isinstance(exc, KeyboardInterrupt):
        with pytest.raises(KeyboardInterrupt):
            loop.run_once(0)
    loop.run_once(0)
    assert loop.descriptor_map == {} and loop.to_close() == []
    for _, p in others:
        p.setblocking(False)
        assert drain(p) == b""  # EOF: really closed
        p.close()
    assert bad.fileno() == -1
    peer.close()


def test_object_without_close_is_refused():
    class NoClose:
        def __init__(self, fd: int) -> None:
            self.fd = fd

        def fileno(self) -> int:
            return self.fd

    a, b = socket.socketpair()
    loop = danga.Loop()
    try:
        with pytest.raises(TypeError, match=r"danga\.Socket\(\) needs an object with close"):
            danga.Socket(NoClose(a.fileno()), loop=loop)
        assert loop.descriptor_map == {}
    finally:
        loop.close()
        a.close()
        b.close()


# -- fds closed behind danga's back ----------------------------------------------------


def test_corked_socket_closed_behind_the_back_is_unregistered(loop):
    """Un-corking a socket whose fd was closed behind danga's back failed with EBADF
    after `closed` was set: the object was never unregistered (poll and select then
    spun, epoll raised from run_once())."""
    cli, srv = tcp_pair()
    obj = Recorder(srv, loop=loop)
    obj.watch_read(True)
    loop.run_once(0)
    obj.tcp_cork(True)
    fd = obj.fd
    os.close(fd)  # behind danga's back
    obj.close("bye")  # must not raise
    assert obj.closed and fd not in loop._registry.kernel
    polls = []
    real = loop.backend.poll
    loop.backend.poll = lambda t: polls.append(real(t)) or polls[-1]  # type: ignore
    loop.run_once(0.05)
    loop.run_once(0.05)
    assert all(fd not in dict(events) for events in polls)
    assert fd not in loop.descriptor_map
    cli.close()


def _reuse_number(fd: int) -> tuple[socket.socket, socket.socket]:
    """A stranger's connected socket whose fd is exactly *fd* (a free number), and its
    peer."""
    c, d = socket.socketpair()  # the lowest free numbers: fd itself, probably
    if d.fileno() == fd:
        c, d = d, c
    if c.fileno() == fd:
        return c, d
    os.dup2(c.fileno(), fd)  # fd now names c's file; c's own number is closed below
    stranger = socket.socket(fileno=fd)
    c.close()
    return stranger, d


def test_dead_object_is_never_bound_to_a_strangers_fd(loop, caplog):
    """epoll turned ENOENT into a registration of whatever file the number named now:
    the dead object read the stranger's data and its close() closed their fd."""
    a, peer = nb_pair()
    obj = Recorder(a, loop=loop)
    obj.watch_read(True)
    loop.run_once(0)
    fd = obj.fd
    os.close(fd)  # behind danga's back ...
    stranger, theirs = _reuse_number(fd)  # ... and the number goes to someone else
    theirs.send(b"not yours")
    obj.watch_write(True)
    for _ in range(3):
        loop.run_once(0.02)
    assert obj.log == [], "the dead object got the stranger's events"
    assert obj.closed and "behind danga's back" in (obj.close_reason or "")
    loop.run_once(0)
    assert fd_open(fd), "danga closed the stranger's fd"
    assert stranger.recv(100) == b"not yours"
    assert fd not in loop._registry.kernel
    stranger.close()
    theirs.close()
    peer.close()
    a.detach()


def test_rewrap_of_a_socket_waiting_for_its_real_close_is_refused(loop):
    """Re-wrapping a socket whose previous object waits for its real close was accepted,
    and the deferred close then closed the socket under the new object."""
    a, b = nb_pair()
    old = Recorder(a, loop=loop)
    old.close("done")
    with pytest.raises(ValueError, match="steal_socket"):
        Recorder(a, loop=loop)
    loop.run_once(0)
    assert a.fileno() == -1
    # The way that works: steal it, then wrap it again.
    c, d = nb_pair()
    first = Recorder(c, loop=loop)
    sock = first.steal_socket()
    second = Recorder(sock, loop=loop)
    second.watch_read(True)
    d.send(b"x")
    run_until(loop, lambda: "read" in second.log)
    assert c.fileno() != -1
    for s in (b, d):
        s.close()


# -- stale events and fd reuse ---------------------------------------------------------


@pytest.mark.parametrize("newcomer", ["socket", "other_fd"])
def test_no_stale_event_after_a_nested_run(loop, newcomer):
    """Objects created after a nested run_once() inside a handler (peers closed and
    reaped there, numbers reused) received the outer batch's READ."""
    (a1, b1), (a2, b2) = nb_pair(), nb_pair()
    got: list[Any] = []
    keep: list[Any] = []

    class Trickster(Recorder):
        def event_read(self) -> None:
            super().event_read()
            if len(got) or self.closed:
                return
            victim = next(o for o in objs if o is not self)
            fd = victim.fd
            victim.close("victim")
            loop.run_once(0)  # nested: the victim is really closed, its number free
            assert not fd_open(fd)
            stranger, theirs = _reuse_number(fd)
            keep.extend([stranger, theirs])
            if newcomer == "socket":
                new = Recorder(stranger, loop=loop, name="new")
                new.watch_read(True)
                new.on["read"] = lambda o: got.append("new got an event")
            else:
                loop.other_fds[fd] = lambda mask: got.append(f"callback got {mask:#x}")
            got.append("armed")

    objs = [Trickster(a1, loop=loop), Trickster(a2, loop=loop)]
    for obj in objs:
        obj.watch_read(True)
    loop.run_once(0)
    b1.send(b"x")
    b2.send(b"y")
    run_until(loop, lambda: got)  # one batch with both fds readable
    assert got == ["armed"], got
    for _ in range(3):
        loop.run_once(0.01)
    assert got == ["armed"], "a newcomer got nothing to read, yet an event"
    if newcomer == "other_fd":
        loop.other_fds.clear()
    for s in keep + [b1, b2]:
        s.close()


def test_post_loop_callback_of_an_object_closed_in_the_same_pass(loop):
    """A per-object post-loop callback ran on an object closed earlier in the same
    pass."""
    (a1, b1), (a2, b2) = nb_pair(), nb_pair()
    first, second = Recorder(a1, loop=loop), Recorder(a2, loop=loop)
    ran = []

    def close_second(dmap: Any, other: Any) -> bool:
        ran.append("first")
        second.close("closed by first")
        return True

    first.set_post_loop_callback(close_second)
    second.set_post_loop_callback(lambda d, o: ran.append("second") or True)
    loop.run_once(0)
    assert ran == ["first"]
    for s in (b1, b2):
        s.close()


# -- one rule for close() --------------------------------------------------------------


@pytest.mark.parametrize("how", ["run_once", "run"])
def test_close_from_a_callback_is_refused_the_same_way(loop, how):
    """loop.close() from a callback failed with "the epoll poller is closed" during
    run_once(), and was refused under run(): one rule now."""
    seen: list[BaseException] = []
    loop.set_exception_handler(lambda lp, ctx: seen.append(ctx["exception"]))
    loop.add_timer(0, loop.close)
    loop.add_timer(0, loop.stop)
    if how == "run":
        loop.run()
    else:
        loop.run_once(0)
    (exc,) = seen
    assert isinstance(exc, RuntimeError) and "call stop()" in str(exc)
    assert not loop.closed
    fired = []
    loop.add_timer(0, fired.append, 1)
    loop.run_once(0)  # still usable
    assert fired == [1]
    loop.close()
    assert loop.closed


# -- buffers write() accepts -----------------------------------------------------------


@pytest.mark.parametrize("queued", [False, True], ids=["direct", "behind-a-queue"])
def test_non_contiguous_memoryview_is_written(loop, queued):
    """A non-contiguous memoryview written behind a queue was counted and then killed
    the connection at flush (BufferError), losing everything queued before it."""
    a, b = nb_pair()
    shrink(a)
    obj = danga.Socket(a, loop=loop)  # the default event_write flushes the queue
    sent = fill(obj) if queued else 0
    data = bytes(range(256)) * 40
    view = memoryview(data)[::2]  # non-contiguous
    before = obj.write_buf_size
    obj.write(view)
    if queued:
        assert obj.write_buf_size == before + len(data) // 2
    got = bytearray()

    def enough() -> bool:
        got.extend(drain(b))
        return len(got) >= sent + len(data) // 2

    run_until(loop, enough)
    assert bytes(got[sent:]) == data[::2]
    assert not obj.closed
    obj.close()
    b.close()


# -- profiling does not change behaviour -----------------------------------------------


@pytest.mark.parametrize("profiling", [False, True])
def test_profiling_changes_nothing_observable(loop, profiling):
    """With profiling on, event_write still ran after event_read raised."""
    a, b = nb_pair()
    calls: list[str] = []

    class Both(danga.Socket):
        def event_read(self) -> None:
            calls.append("read")
            raise ValueError("in event_read")

        def event_write(self) -> None:
            calls.append("write")

    obj = Both(a, loop=loop)
    obj.watch_read(True)
    obj.watch_write(True)
    seen = []
    loop.set_exception_handler(lambda lp, ctx: seen.append(ctx["callback"]))  # no close
    if profiling:
        loop.enable_profiling()
    b.send(b"x")
    run_until(loop, lambda: calls)
    assert calls == ["read"]  # the write stage is skipped after the read stage raised
    assert len(seen) == 1
    if profiling:
        assert loop.profiling_data()["Both-read"][2] == 1
    obj.close()
    b.close()


# -- other_fds is a real mapping -------------------------------------------------------


@pytest.mark.parametrize("how", ["ior", "update", "setitem", "setdefault"])
def test_other_fds_every_way_of_adding_registers(loop, how):
    """`loop.other_fds |= {fd: cb}` stored the entry without registering the fd."""
    r, w = os.pipe()
    got = []

    def cb(mask: int) -> None:
        got.append(mask)
        os.read(r, 10)

    if how == "ior":
        loop.other_fds |= {r: cb}
    elif how == "update":
        loop.other_fds.update({r: cb})
    elif how == "setitem":
        loop.other_fds[r] = cb
    else:
        loop.other_fds.setdefault(r, cb)
    assert loop.other_fds[r] is cb and r in loop.other_fds and len(loop.other_fds) == 1
    os.write(w, b"x")
    run_until(loop, lambda: got)
    assert got[0] & READ
    del loop.other_fds[r]
    os.write(w, b"y")
    loop.run_once(0.02)
    assert len(got) == 1
    os.close(r)
    os.close(w)


def test_other_fds_mapping_behaviour(loop):
    r, w = os.pipe()
    cb = lambda mask: None  # noqa: E731
    loop.other_fds[r] = cb
    assert dict(loop.other_fds) == {r: cb} and loop.other_fds == {r: cb}
    assert loop.other_fds.pop(r) is cb and loop.other_fds.pop(r, None) is None
    with pytest.raises(KeyError):
        del loop.other_fds[r]
    with pytest.raises(TypeError, match="callable"):
        loop.other_fds[r] = 42  # type: ignore[assignment]
    with pytest.raises(TypeError, match="fd"):
        loop.other_fds["x"] = cb  # type: ignore[index]
    assert len(loop.other_fds) == 0
    os.close(r)
    os.close(w)


# -- fork ------------------------------------------------------------------------------


@pytest.mark.xdist_group("process-global")
def test_fork_child_never_closes_or_finalises_the_inherited_poller(poller_cls):
    """A poller inherited by a forked child and garbage-collected there closed the fd
    that reused its number (kqueue before CPython 3.12.1: gh-110395): a child that
    simply drops an inherited loop must never close or finalise its poller."""
    from danga.testing.suite import in_child

    holder = [danga.Loop(poller_cls)]
    holder[0].run_once(0)

    def child() -> dict[str, int]:
        backend = holder[0].backend
        closed: list[int] = []
        finalised: list[int] = []
        backend.close = lambda: closed.append(1)  # type: ignore[method-assign]
        weakref.finalize(backend, finalised.append, 1)
        del backend
        holder.clear()  # the child drops the inherited loop: it is garbage-collected
        gc.collect()
        return {"closed": len(closed), "finalised": len(finalised)}

    try:
        assert in_child(child) == {"closed": 0, "finalised": 0}
    finally:
        holder[0].close()


# -- timer order -----------------------------------------------------------------------


def test_negative_delay_orders_by_true_deadline(loop):
    """A negative delay was clamped to "now" and fired after timers added earlier with
    delay 0; Danga orders by the true deadline (now + seconds)."""
    fired = []
    loop.add_timer(0, fired.append, "zero")
    loop.add_timer(-1, fired.append, "minus-one")
    loop.add_timer(-0.5, fired.append, "minus-half")
    loop.run_once(0)
    assert fired == ["minus-one", "minus-half", "zero"]


# -- messages name the call ------------------------------------------------------------


def test_messages_name_the_call(loop):
    a, b = nb_pair()
    obj = Recorder(a, loop=loop)
    with pytest.raises(TypeError, match=r"^push_back_read\(\) takes bytes-like data"):
        obj.push_back_read(None)
    with pytest.raises(TypeError, match=r"^write\(\) takes bytes-like data, a callable"):
        obj.write(3.5)
    with pytest.raises(ValueError, match=r"BytesIO has no file descriptor"):
        danga.Socket(io.BytesIO(), loop=loop)
    obj.close()
    b.close()


# -- no double work per accepted connection --------------------------------------------


def test_an_accepted_connection_costs_one_ioctl_and_one_registration(loop, monkeypatch):
    """Each accepted connection cost two FIONBIO (Listener and Socket) and two epoll_ctl
    (registration with ERR|HUP, then the flush's modify for READ)."""
    nonblocking: list[int] = []
    real_setblocking = socket.socket.setblocking

    def setblocking(self: socket.socket, flag: bool) -> None:
        nonblocking.append(self.fileno())
        real_setblocking(self, flag)

    accepted: list[danga.Socket] = []

    class Conn(Recorder):
        def __init__(self, sock: Any, *, loop: danga.Loop) -> None:
            super().__init__(sock, loop=loop)
            self.watch_read(True)
            accepted.append(self)

    lsock = socket.create_server(("127.0.0.1", 0))
    danga.Listener(lsock, loop=loop, factory=Conn)
    loop.run_once(0)
    modifies: list[tuple[int, int, int]] = []
    real_modify = loop.backend.modify
    loop.backend.modify = lambda fd, o, n: (modifies.append((fd, o, n)),  # type: ignore
                                            real_modify(fd, o, n))[1]
    monkeypatch.setattr(socket.socket, "setblocking", setblocking)
    client = socket.create_connection(lsock.getsockname())
    run_until(loop, lambda: accepted)
    loop.run_once(0)
    fd = accepted[0].fd
    assert nonblocking.count(fd) == 1
    assert [m for m in modifies if m[0] == fd] == [(fd, 0, READ | ERR | HUP)]
    client.close()


def test_kernel_and_wanted_masks_agree_after_many_changes(loop):
    a, b = nb_pair()
    obj = Recorder(a, loop=loop)
    for on in (True, False, True):
        obj.watch_read(on)
        obj.watch_write(not on)
        loop.run_once(0)
        assert loop._registry.kernel[obj.fd] == obj._event_watch
    assert loop._registry.kernel[obj.fd] & (READ | WRITE) == READ
    obj.close()
    b.close()


def test_err_on_an_open_fd_is_delivered_not_lost(loop, caplog):
    # The fd-alive check on ERR must not close a healthy object (identity unchanged).
    a, b = nb_pair()
    obj = Recorder(a, loop=loop)
    obj.watch_read(True)
    loop.run_once(0)
    spy_events = [(obj.fd, ERR)]
    real = loop.backend.poll
    loop.backend.poll = lambda t: spy_events if spy_events else real(t)  # type: ignore
    with caplog.at_level(logging.WARNING, logger="danga"):
        loop.run_once(0)
    spy_events.clear()
    assert obj.log == ["err"] and not any("behind" in r.getMessage() for r in caplog.records)
    obj.close()
    b.close()
    assert errno.EBADF  # (errno imported for the helpers' contract)


# -- refusals a backend may make at flush time -----------------------------------------


@pytest.mark.parametrize("refusal", [OSError(errno.EINVAL, "Invalid argument"),
                                     danga.FdOutOfRange("fd too large for this plugin")],
                         ids=["EINVAL", "FdOutOfRange"])
@pytest.mark.parametrize("owner", ["socket", "other_fd"])
def test_a_refused_registration_closes_only_its_owner(loop, refusal, owner, caplog):
    # A backend (a v1 plugin, a kqueue refusing a tty) may refuse a change when the core
    # applies it, after registration succeeded: the owner is dropped (a Socket closed
    # with a reason, an other-fd callback removed, its fd never closed), the loop goes
    # on and nothing else is disturbed.
    a, b = nb_pair()
    bystander = Recorder(a, loop=loop)
    bystander.watch_read(True)
    loop.run_once(0)
    c, d = nb_pair()
    real = loop.backend.modify

    def modify(fd: int, old: int, new: int) -> None:
        if fd == c.fileno() and not old:
            raise refusal
        real(fd, old, new)

    loop.backend.modify = modify  # type: ignore[method-assign]
    if owner == "socket":
        victim = Recorder(c, loop=loop)
        victim.watch_read(True)
    else:
        loop.other_fds[c.fileno()] = lambda mask: None
    with caplog.at_level(logging.ERROR, logger="danga"):
        loop.run_once(0)
    if owner == "socket":
        assert victim.closed and "watch failed" in (victim.close_reason or "")
    else:
        assert c.fileno() not in loop.other_fds
        assert fd_open(c.fileno())
    assert c.fileno() not in loop._registry.kernel
    assert any("cannot" in r.getMessage() for r in caplog.records)
    b.send(b"x")
    run_until(loop, lambda: "read" in bystander.log)
    for s in (b, c, d):
        s.close()


def test_reset_in_a_handler_drops_the_rest_of_the_batch_quietly(loop, caplog):
    # reset() from a handler forgets every fd: the batch's later events name nothing
    # known, and must neither reach anyone nor look like a registration the kernel
    # cannot remove (which would rebuild the poller).
    pairs = [nb_pair() for _ in range(5)]
    log: list[str] = []
    objs = [Recorder(a, loop=loop, log=log) for a, _ in pairs]
    for obj in objs:
        obj.watch_read(True)
        obj.on["read"] = lambda o: loop.reset()
    loop.run_once(0)
    for _, b in pairs:
        b.send(b"x")
    with caplog.at_level(logging.INFO, logger="danga"):
        run_until(loop, lambda: log)
        loop.run_once(0)
    assert log == ["read"]
    assert not any("rebuilt" in r.getMessage() for r in caplog.records)
    for a, b in pairs:
        a.close()
        b.close()
