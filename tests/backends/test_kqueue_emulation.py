"""kqueue specifics, tested on Linux through the kqueue emulation.

Two layers: the emulation must behave like kqueue (otherwise running the real
KqueuePoller over it proves nothing), and the KqueuePoller translation must merge
filters, size its buffer by filters and map EV_EOF / EV_ERROR.
"""

import errno
import os
import select
import socket

import kqueue_emulation as kq
import pytest

import danga
from danga import ERR, HUP, READ, WRITE
from danga.backends.kqueue import KqueuePoller
from danga.testing import registered_backends

# The emulation runs over select.poll (not on Windows): there, every test must fail.
pytestmark = pytest.mark.xfail(not hasattr(select, "poll"), strict=True,
                               reason="the kqueue emulation needs select.poll")


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def emulated():
    cls = registered_backends()["kqueue-emulated"]
    assert issubclass(cls, KqueuePoller) and cls._kq is kq
    p = cls()
    yield p
    p.close()


def add(q, fd, filt):
    q.control([kq.kevent(fd, filt, kq.KQ_EV_ADD)], 0, 0)


# -- the emulation behaves like kqueue -------------------------------------------------


def test_filters_come_back_as_separate_kevents(pair):
    a, b = pair
    q = kq.kqueue()
    add(q, b.fileno(), kq.KQ_FILTER_READ)
    add(q, b.fileno(), kq.KQ_FILTER_WRITE)
    a.send(b"x")
    evs = q.control(None, 4, 1)
    assert sorted(e.filter for e in evs) == sorted([kq.KQ_FILTER_READ, kq.KQ_FILTER_WRITE])
    assert all(e.ident == b.fileno() for e in evs)
    assert len(q.control(None, 1, 0)) == 1, "max_events caps the batch"


def test_reads_are_listed_before_writes(pair):
    # So a buffer sized by fds (not filters) loses write events, as on real kqueue.
    a, b = pair
    c, d = socket.socketpair()
    try:
        q = kq.kqueue()
        for sock in (b, d):
            add(q, sock.fileno(), kq.KQ_FILTER_READ)
            add(q, sock.fileno(), kq.KQ_FILTER_WRITE)
        a.send(b"x")
        c.send(b"x")
        evs = q.control(None, 2, 1)
        assert [e.filter for e in evs] == [kq.KQ_FILTER_READ, kq.KQ_FILTER_READ]
    finally:
        c.close()
        d.close()


def test_level_triggered(pair):
    a, b = pair
    q = kq.kqueue()
    add(q, b.fileno(), kq.KQ_FILTER_READ)
    a.send(b"xy")
    assert len(q.control(None, 2, 1)) == 1
    b.recv(1)
    assert len(q.control(None, 2, 0)) == 1
    b.recv(1)
    assert q.control(None, 2, 0) == []


def test_eof_on_hangup(pair):
    a, b = pair
    q = kq.kqueue()
    add(q, b.fileno(), kq.KQ_FILTER_READ)
    add(q, b.fileno(), kq.KQ_FILTER_WRITE)
    a.close()
    evs = q.control(None, 4, 1)
    assert {e.filter for e in evs} == {kq.KQ_FILTER_READ, kq.KQ_FILTER_WRITE}
    assert all(e.flags & kq.KQ_EV_EOF for e in evs)


@pytest.mark.xfail(not hasattr(select, "POLLRDHUP"), strict=True,
                   reason="the emulation sees a half-close only through POLLRDHUP")
def test_eof_on_read_filter_after_half_close(pair):
    a, b = pair
    q = kq.kqueue()
    add(q, b.fileno(), kq.KQ_FILTER_READ)
    add(q, b.fileno(), kq.KQ_FILTER_WRITE)
    a.shutdown(socket.SHUT_WR)
    evs = {e.filter: e for e in q.control(None, 4, 1)}
    assert evs[kq.KQ_FILTER_READ].flags & kq.KQ_EV_EOF
    assert not evs[kq.KQ_FILTER_WRITE].flags & kq.KQ_EV_EOF


def test_delete_missing_filter_is_enoent(pair):
    q = kq.kqueue()
    add(q, pair[1].fileno(), kq.KQ_FILTER_READ)
    with pytest.raises(OSError) as info:
        q.control([kq.kevent(pair[1].fileno(), kq.KQ_FILTER_WRITE, kq.KQ_EV_DELETE)], 0, 0)
    assert info.value.errno == errno.ENOENT


def test_add_closed_fd_is_ebadf(pair):
    q = kq.kqueue()
    fd = pair[1].fileno()
    pair[1].close()
    with pytest.raises(OSError) as info:
        add(q, fd, kq.KQ_FILTER_READ)
    assert info.value.errno == errno.EBADF


def test_failed_change_goes_to_the_event_list_when_there_is_room(pair):
    q = kq.kqueue()
    fd = pair[1].fileno()
    evs = q.control([kq.kevent(fd, kq.KQ_FILTER_READ, kq.KQ_EV_DELETE)], 1, 0)
    assert len(evs) == 1 and evs[0].flags & kq.KQ_EV_ERROR and evs[0].data == errno.ENOENT


def test_closing_an_fd_drops_its_knotes(pair):
    a, b = pair
    q = kq.kqueue()
    fd = b.fileno()
    add(q, fd, kq.KQ_FILTER_READ)
    b.close()
    assert q.control(None, 2, 0) == []
    assert fd not in q.knotes()
    with pytest.raises(OSError) as info:  # and deleting it now fails, as on FreeBSD
        q.control([kq.kevent(fd, kq.KQ_FILTER_READ, kq.KQ_EV_DELETE)], 0, 0)
    assert info.value.errno in (errno.EBADF, errno.ENOENT)


def test_reused_fd_number_is_a_new_file(pair):
    a, b = pair
    q = kq.kqueue()
    fd = b.fileno()
    add(q, fd, kq.KQ_FILTER_READ)
    b.close()
    c, d = socket.socketpair()
    forced = fd not in (c.fileno(), d.fileno())
    try:
        if forced:
            os.dup2(d.fileno(), fd)  # force the reuse
        c.send(b"x")
        assert q.control(None, 2, 0) == [], "a knote survived its fd's close"
    finally:
        c.close()
        d.close()
        if forced:
            os.close(fd)


def test_closed_kqueue_refuses_control():
    q = kq.kqueue()
    q.close()
    with pytest.raises(ValueError):
        q.control(None, 1, 0)


# -- the KqueuePoller translation, over the emulation --------------------------------


def test_read_and_write_merged_and_buffer_sized_by_filters(emulated, pair):
    a, b = pair
    c, d = socket.socketpair()
    try:
        for sock in (b, d):
            emulated.modify(sock.fileno(), 0, READ | WRITE)
        a.send(b"x")
        c.send(b"x")
        got = emulated.poll(1)
        assert sorted(got) == sorted([(b.fileno(), READ | WRITE), (d.fileno(), READ | WRITE)])
        assert emulated._q.max_events_seen[-1] == 4, "one slot per filter"
    finally:
        c.close()
        d.close()


def test_ev_eof_maps_to_hup(emulated, pair):
    a, b = pair
    emulated.modify(b.fileno(), 0, READ)
    a.close()
    assert dict(emulated.poll(1))[b.fileno()] == READ | HUP


def test_ev_eof_with_fflags_maps_to_err_and_hup(emulated):
    r, w = os.pipe()
    try:
        emulated.modify(w, 0, WRITE)
        os.close(r)  # POLLERR on the writer: EV_EOF with a non-zero fflags
        assert dict(emulated.poll(1))[w] == WRITE | ERR | HUP
    finally:
        os.close(w)


def test_ev_error_maps_to_err(emulated, pair):
    fd = pair[1].fileno()
    emulated.modify(fd, 0, READ)
    emulated._q.inject_error(fd, kq.KQ_FILTER_READ, errno.EBADF)
    assert dict(emulated.poll(0)).get(fd) == ERR


def test_regular_file_refused_before_any_kevent(tmp_path):
    # Poller API v2: the core refuses it at registration, before the backend sees it.
    from danga import UnsupportedFileType

    loop = danga.Loop(registered_backends()["kqueue-emulated"])
    path = tmp_path / "f"
    path.write_bytes(b"")
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(UnsupportedFileType):
            loop.other_fds[fd] = lambda mask: None
        loop.run_once(0)
        assert fd not in loop.backend._q.knotes()  # real kqueue would accept a file
    finally:
        os.close(fd)
        loop.close()


@pytest.mark.parametrize("refused", [kq.KQ_FILTER_READ, kq.KQ_FILTER_WRITE])
def test_refused_filter_leaves_the_kernel_as_it_was(emulated, pair, refused):
    # modify(fd, 0, READ | WRITE) needs two EV_ADDs: if the kernel refuses one, the other
    # is undone, so nothing stays registered (and unrecorded) behind the core's back.
    fd = pair[1].fileno()
    emulated._q.refuse(fd, refused, errno.ENOMEM)
    with pytest.raises(OSError):
        emulated.modify(fd, 0, READ | WRITE)
    assert fd not in emulated._q.knotes()
    assert emulated._filters == 0
    emulated.modify(fd, 0, READ | WRITE)  # a later change works from a clean state
    assert emulated._q.knotes()[fd] == {kq.KQ_FILTER_READ, kq.KQ_FILTER_WRITE}
    assert emulated._filters == 2


def test_refused_second_filter_of_a_change_keeps_the_first_state(emulated, pair):
    fd = pair[1].fileno()
    emulated.modify(fd, 0, READ)
    emulated._q.refuse(fd, kq.KQ_FILTER_WRITE, errno.ENOMEM)
    with pytest.raises(OSError):
        emulated.modify(fd, READ, WRITE)  # delete READ, add WRITE (refused)
    assert emulated._q.knotes()[fd] == {kq.KQ_FILTER_READ}  # READ restored
    assert emulated._filters == 1


def test_removal_of_closed_fd_ignores_the_kernel_error(emulated, pair):
    fd = pair[1].fileno()
    emulated.modify(fd, 0, READ | WRITE)
    pair[1].close()
    emulated.modify(fd, READ | WRITE, 0)  # EBADF from EV_DELETE: success
    assert emulated._filters == 0


def test_probe_over_emulation():
    registered_backends()["kqueue-emulated"].probe()
