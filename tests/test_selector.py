"""danga.Selector: the selectors contract over every backend (CPython's own suites run
through it in tests/backends/test_peer.py; these check what they cannot see: the calls
the Poller receives, and the adapter's own rules)."""

import asyncio
import errno
import os
import selectors
import socket
import tempfile

import pytest

import danga
from danga import ERR, HUP, READ, WRITE
from danga.selector import Selector

EV_R, EV_W = selectors.EVENT_READ, selectors.EVENT_WRITE


class Recording:
    """A Poller proxy recording every modify(); ``fail`` raises for matching calls."""

    def __init__(self, poller, fail=None):
        self.poller = poller
        self.name = poller.name
        self.calls = []
        self.fail = fail  # (fd, old, new) -> exception or None

    def modify(self, fd, old, new):
        self.calls.append((fd, old, new))
        exc = self.fail(fd, old, new) if self.fail else None
        if exc is not None:
            raise exc
        self.poller.modify(fd, old, new)

    def poll(self, timeout):
        return self.poller.poll(timeout)

    def close(self):
        self.poller.close()


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def recorded(poller_cls):
    rec = Recording(poller_cls())
    sel = Selector.from_poller(rec)
    yield sel, rec
    sel.close()


def test_poller_gets_the_true_old_mask(recorded, pair):
    sel, rec = recorded
    rd, _ = pair
    fd = rd.fileno()
    sel.register(rd, EV_R)
    sel.modify(rd, EV_W)
    sel.modify(rd, EV_R | EV_W)
    sel.unregister(rd)
    assert rec.calls == [(fd, 0, READ), (fd, READ, WRITE), (fd, WRITE, READ | WRITE),
                         (fd, READ | WRITE, 0)]


def test_modify_of_data_alone_makes_no_call(recorded, pair):
    sel, rec = recorded
    rd, _ = pair
    key = sel.register(rd, EV_R, "a")
    assert sel.modify(rd, EV_R, "a") is key  # nothing changed
    key2 = sel.modify(rd, EV_R, "b")
    assert (key2.events, key2.data) == (EV_R, "b")
    assert sel.get_key(rd) == key2
    assert rec.calls == [(rd.fileno(), 0, READ)]


def test_modify_error_unregisters(poller_cls, pair):
    # The OS refusing a change leaves no key behind, and the kernel forgets the fd too.
    inner = poller_cls()
    rec = Recording(inner, fail=lambda fd, old, new: ZeroDivisionError() if old and new
                    else None)
    sel = Selector.from_poller(rec)
    rd, wr = pair
    try:
        sel.register(rd, EV_R)
        with pytest.raises(ZeroDivisionError):
            sel.modify(rd, EV_W)
        assert len(sel.get_map()) == 0
        with pytest.raises(KeyError):
            sel.get_key(rd)
        wr.send(b"x")
        assert sel.select(0) == []
        assert inner.poll(0) == []
        sel.register(rd, EV_R)  # and it can be registered again
        assert [k.fileobj for k, _ in sel.select(5)] == [rd]
    finally:
        sel.close()


def test_register_refused_by_the_os_leaves_no_key(recorded, pair):
    sel, rec = recorded
    rd, _ = pair
    rec.fail = lambda fd, old, new: PermissionError(errno.EPERM, "refused")
    with pytest.raises(PermissionError):
        sel.register(rd, EV_R)
    assert len(sel.get_map()) == 0
    rec.fail = None
    assert sel.register(rd, EV_R).fd == rd.fileno()


def test_register_validates_the_fd_before_the_poller(recorded):
    sel, rec = recorded
    a, b = socket.socketpair()
    fd = a.fileno()
    a.close()
    b.close()
    with pytest.raises(OSError) as info:
        sel.register(fd, EV_R)
    assert info.value.errno == errno.EBADF
    with tempfile.TemporaryFile() as f, pytest.raises(danga.UnsupportedFileType):
        sel.register(f, EV_R)
    assert rec.calls == []
    assert len(sel.get_map()) == 0


@pytest.mark.parametrize("events", [0, 4, EV_R | 4, -1, "1", None])
def test_bad_events(recorded, pair, events):
    sel, _ = recorded
    rd, _ = pair
    with pytest.raises(ValueError, match=r"danga.Selector.register: events must be"):
        sel.register(rd, events)
    sel.register(rd, EV_R)
    with pytest.raises(ValueError, match=r"danga.Selector.modify: events must be"):
        sel.modify(rd, events)


def test_bad_file_objects(recorded):
    sel, rec = recorded
    with pytest.raises(ValueError, match="invalid file descriptor -3"):
        sel.register(-3, EV_R)
    with pytest.raises(ValueError, match="is not a file object"):
        sel.register(object(), EV_R)
    assert rec.calls == []


def test_fd_registered_through_another_object(recorded, pair):
    sel, _ = recorded
    rd, _ = pair
    sel.register(rd, EV_R)
    with pytest.raises(KeyError, match="already registered"):
        sel.register(rd.fileno(), EV_W)
    with pytest.raises(KeyError, match="not registered"):
        sel.unregister(12345)
    with pytest.raises(KeyError, match="not registered"):
        sel.modify(12345, EV_R)


def test_unregister_after_the_socket_was_closed(recorded):
    sel, _ = recorded
    a, b = socket.socketpair()
    ka = sel.register(a, EV_R)
    sel.register(b.fileno(), EV_W)
    fd_b = b.fileno()
    a.close()
    b.close()
    assert sel.unregister(a) == ka  # found by identity: a.fileno() is -1 now
    sel.unregister(fd_b)
    assert len(sel.get_map()) == 0


def test_every_ready_fd_in_one_select(poller_cls):
    pairs = [socket.socketpair() for _ in range(40)]
    try:
        with Selector(poller_cls) as sel:
            for a, b in pairs:
                sel.register(a, EV_R, b)
                b.send(b"x")
            ready = sel.select(5)
            assert sorted(k.fd for k, ev in ready) == sorted(a.fileno() for a, _ in pairs)
            assert {ev for _, ev in ready} == {EV_R}
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_hangup_reports_what_the_key_asked_for(poller_cls, pair):
    rd, wr = pair
    other_r, other_w = socket.socketpair()
    try:
        with Selector(poller_cls) as sel:
            k_both = sel.register(rd, EV_R | EV_W)
            k_write = sel.register(other_r, EV_W)
            wr.close()
            other_w.close()
            ready = dict(sel.select(5))
            assert ready[k_both] == EV_R | EV_W
            assert ready[k_write] == EV_W
    finally:
        other_r.close()


class Scripted:
    """A Poller whose poll() returns (or raises) what the test scripted."""

    name = "scripted"

    def __init__(self, *answers):
        self.answers = list(answers)
        self.timeouts = []

    def modify(self, fd, old, new):
        pass

    def poll(self, timeout):
        self.timeouts.append(timeout)
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def close(self):
        pass


@pytest.mark.parametrize(("mask", "asked", "seen"), [
    (ERR, EV_R, EV_R), (ERR, EV_W, EV_W), (HUP, EV_R | EV_W, EV_R | EV_W),
    (READ | HUP, EV_W, EV_W), (WRITE, EV_R | EV_W, EV_W), (READ, EV_W, None),
])
def test_err_and_hup_map_to_read_and_write(mask, asked, seen, pair):
    rd, _ = pair
    sel = Selector.from_poller(Scripted([(rd.fileno(), mask), (999, READ)]))
    key = sel.register(rd, asked)
    assert sel.select(0) == ([] if seen is None else [(key, seen)])  # fd 999: no key


def test_interrupted_poll_is_retried_with_the_time_left():
    poller = Scripted(InterruptedError(errno.EINTR, "EINTR"), [])
    sel = Selector.from_poller(poller)
    assert sel.select(0.5) == []
    assert poller.timeouts[0] == 0.5
    assert 0 <= poller.timeouts[1] <= 0.5
    blocking = Scripted(InterruptedError(errno.EINTR, "EINTR"), [])
    Selector.from_poller(blocking).select()
    assert blocking.timeouts == [None, None]


def test_negative_timeout_polls_at_once():
    poller = Scripted([], [])
    sel = Selector.from_poller(poller)
    sel.select(-1)
    sel.select(0)
    assert poller.timeouts == [0, 0]


def test_an_exception_from_poll_propagates():
    sel = Selector.from_poller(Scripted(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        sel.select(1)


def test_closed_selector(poller_cls, pair):
    rd, _ = pair
    sel = Selector(poller_cls)
    keys = sel.get_map()
    sel.register(rd, EV_R)
    sel.close()
    sel.close()  # idempotent
    assert sel.get_map() is None
    with pytest.raises(RuntimeError):
        sel.get_key(rd)
    with pytest.raises(KeyError):
        keys[rd]
    with pytest.raises(RuntimeError):
        sel.register(rd, EV_R)
    with pytest.raises(RuntimeError):
        sel.select(0)
    assert "closed" in repr(sel)


def test_get_map_is_live_and_read_only(poller_cls, pair):
    rd, wr = pair
    with Selector(poller_cls) as sel:
        keys = sel.get_map()
        key = sel.register(rd, EV_R)
        assert keys[rd] is key and keys[rd.fileno()] is key and rd in keys
        assert list(keys) == [rd.fileno()] and len(keys) == 1
        with pytest.raises(TypeError):
            keys[wr] = key
        sel.unregister(rd)
        assert len(keys) == 0 and keys.get(rd) is None


def test_fileno_where_the_poller_has_one(poller_cls):
    with Selector(poller_cls) as sel:
        declared = getattr(poller_cls, "embeddable", hasattr(sel.poller, "fileno"))
        assert hasattr(sel, "fileno") == declared
        if hasattr(sel, "fileno"):
            assert sel.fileno() == sel.poller.fileno() >= 0
    assert not hasattr(Selector.from_poller(Scripted()), "fileno")


def test_backend_choice(poller_cls):
    with Selector(poller_cls) as sel:
        assert type(sel.poller) is poller_cls
    with Selector(danga.backends.best().name) as sel:
        assert type(sel.poller) is danga.backends.best()
    with pytest.raises(danga.UnknownBackend):
        Selector("no-such-backend")
    with pytest.raises(TypeError, match="backend must be"):
        Selector(42)
    with pytest.raises(TypeError, match="from_poller takes a Poller instance"):
        Selector.from_poller(poller_cls)
    with pytest.raises(TypeError, match="from_poller takes a Poller instance"):
        Selector.from_poller(object())


@pytest.mark.timeout(30)
def test_asyncio_echo(poller_cls):
    # asyncio's own event loop, on the backend: a server and a client over loopback.
    async def main():
        handled = asyncio.Event()

        async def handle(reader, writer):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.close()
            await writer.wait_closed()
            handled.set()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        payload = os.urandom(1 << 20)
        writer.write(payload)
        echoed = await asyncio.wait_for(reader.readexactly(len(payload)), 20)
        writer.close()
        await writer.wait_closed()
        await asyncio.wait_for(handled.wait(), 10)  # the server side is closed too
        server.close()
        await server.wait_closed()
        return echoed == payload

    sel = Selector(poller_cls)
    loop = asyncio.SelectorEventLoop(sel)
    try:
        assert loop.run_until_complete(main())
        assert len(sel.get_map()) >= 1  # the loop's self-pipe, watched through danga
    finally:
        loop.close()
    assert sel.get_map() is None  # the loop closed its selector
