"""Other fds: add_other_fds / set_other_fds / the live dict take effect at once, while
the loop runs, on every backend (Danga's epoll and kqueue loops registered them only at
EventLoop entry, and closed fds they did not know)."""

from __future__ import annotations

import os

import pytest

from danga import READ
from danga_helpers import fd_open


class Pipes:
    def __init__(self, n: int) -> None:
        self.ends = [os.pipe() for _ in range(n)]
        self.got: dict[int, list[int]] = {i: [] for i in range(n)}

    def r(self, i: int) -> int:
        return self.ends[i][0]

    def poke(self, i: int) -> None:
        os.write(self.ends[i][1], b"x")

    def cb(self, i: int):
        def callback(mask: int) -> None:
            self.got[i].append(mask)
            os.read(self.r(i), 100)
        return callback

    def close(self) -> None:
        for r, w in self.ends:
            for fd in (r, w):
                if fd_open(fd):
                    os.close(fd)


@pytest.fixture
def pipes():
    p = Pipes(3)
    yield p
    p.close()


def _run(loop, steps):
    """Run loop.run() with a 10 ms loop timeout, calling steps[i] in iteration i from the
    post-loop callback (so every change happens while the loop runs)."""
    loop.set_loop_timeout(10)
    it = iter(steps)

    def plc(dmap, other):
        step = next(it, None)
        if step is None:
            return False
        step()
        return True

    loop.set_post_loop_callback(plc)
    loop.run()


def test_add_other_fds_while_running(loop, pipes):
    _run(loop, [
        lambda: loop.add_other_fds({pipes.r(0): pipes.cb(0)}),
        lambda: pipes.poke(0),
        lambda: None,
        lambda: None,
    ])
    assert pipes.got[0] and all(m & READ for m in pipes.got[0])


def test_set_other_fds_replaces_while_running(loop, pipes):
    loop.add_other_fds({pipes.r(0): pipes.cb(0)})
    _run(loop, [
        lambda: loop.set_other_fds({pipes.r(1): pipes.cb(1)}),
        lambda: (pipes.poke(0), pipes.poke(1)),
        lambda: None,
        lambda: None,
    ])
    assert pipes.got[0] == [] and pipes.got[1]
    assert set(loop.other_fds) == {pipes.r(1)}
    assert fd_open(pipes.r(0))  # dropped, never closed


def test_direct_mutation_of_the_live_dict(loop, pipes):
    def add():
        loop.other_fds[pipes.r(2)] = pipes.cb(2)

    def remove():
        del loop.other_fds[pipes.r(2)]
        pipes.poke(2)

    _run(loop, [add, lambda: pipes.poke(2), lambda: None, lambda: None,
                remove, lambda: None, lambda: None])
    assert len(pipes.got[2]) == 1
    assert fd_open(pipes.r(2))
    assert os.read(pipes.r(2), 10) == b"x"  # the second poke was never consumed


def test_later_duplicate_wins_and_bad_input_is_refused(loop, pipes):
    first, second = [], []
    loop.add_other_fds({pipes.r(0): first.append})
    loop.add_other_fds({pipes.r(0): second.append})
    pipes.poke(0)
    loop.run_once(1.0)
    assert first == [] and second
    with pytest.raises(TypeError):
        loop.add_other_fds({pipes.r(1): "not callable"})
    with pytest.raises(TypeError):
        loop.add_other_fds([(pipes.r(1), print)])
    assert pipes.r(1) not in loop.other_fds


def test_descriptor_map_wins_and_the_other_fd_resumes_after_close(loop, pipes):
    """An fd both in the descriptor map and in other_fds goes to the Socket, as in
    Danga; the other-fd callback resumes once that Socket closes."""
    import danga

    hits = []
    r = pipes.r(0)

    class Owner(danga.Socket):
        def event_read(self):
            hits.append("socket")
            os.read(self.fd, 100)

    class Borrowed:  # the fd stays the test's: closing the Socket must not close it
        def fileno(self):
            return r

        def close(self):
            pass

    loop.add_other_fds({r: lambda m: (hits.append("other"), os.read(r, 100))})
    owner = Owner(Borrowed(), loop=loop)
    owner.watch_read(True)
    pipes.poke(0)
    loop.run_once(1.0)
    assert hits == ["socket"]
    owner.close()
    loop.run_once(0)
    pipes.poke(0)
    loop.run_once(1.0)
    assert hits == ["socket", "other"]
    assert fd_open(r)
