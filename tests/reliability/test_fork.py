"""fork: after reset() the child's loop works and the parent is unaffected; a loop used
in a child without reset() rebuilds its poller (the choice documented in
docs/reliability.md), so the child never changes the parent's kernel registrations.

The child reports through a pipe and always leaves with os._exit.
"""

from __future__ import annotations

import json
import os
import socket
import traceback
import warnings
from collections.abc import Callable
from typing import Any

import pytest
from reliability_helpers import Recorder

import danga
from danga.testing import run_until

pytestmark = [
    pytest.mark.xdist_group("process-global"),
    pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork() on this platform"),
]


def _in_child(body: Callable[[], dict[str, Any]],
              while_alive: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """Run *body* in a forked child and return its result; *while_alive* runs in the
    parent after the child reported and before it exits (its fds are still open then)."""
    r, w = os.pipe()
    go_r, go_w = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns that forking a multi-threaded process may deadlock the
        # child. The other threads are pytest-xdist's (execnet I/O); the child takes none
        # of their locks (CPython re-initialises the import and logging locks at fork),
        # runs only danga and os calls, and always leaves with os._exit.
        warnings.filterwarnings("ignore", r"This process \(pid=\d+\) is multi-threaded",
                                DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child
        status = 1
        try:
            os.close(r)
            os.close(go_w)
            try:
                result = body()
                status = 0
            except BaseException:
                result = {"error": traceback.format_exc()}
            os.write(w, json.dumps(result).encode() + b"\n")
            os.read(go_r, 1)  # wait for the parent (EOF when it closes its end)
        finally:
            os._exit(status)
    os.close(w)
    os.close(go_r)
    try:
        with os.fdopen(r, "rb") as f:
            line = f.readline()
        result = json.loads(line or b"{}")
        if "error" not in result:
            while_alive()
    finally:
        os.close(go_w)
        _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, result
    return result


def _echo_once(loop: danga.Loop, payload: bytes) -> bool:
    a, b = socket.socketpair()
    obj = Recorder(a, loop=loop)
    b.sendall(payload)
    run_until(loop, lambda: bytes(obj.got) == payload)
    obj.close("done")
    loop.run_once(0)
    b.close()
    return True


def _foreign_events(loop: danga.Loop) -> list[tuple[int, int]]:
    """Events the parent's poller reports for fds the parent never registered."""
    known = set(loop._registry.kernel) | {loop._waker.fd if loop._waker is not None else -1}
    return [(fd, m) for fd, m in loop.backend.poll(0) if fd not in known]


@pytest.mark.parametrize("with_reset", [True, False], ids=["reset", "no-reset"])
def test_fork(loop: danga.Loop, with_reset: bool) -> None:
    a, apeer = socket.socketpair()
    parent_obj = Recorder(a, loop=loop)
    loop.run_once(0)
    parent_backend = loop.backend

    def child() -> dict[str, Any]:
        if with_reset:
            loop.reset()
        else:
            loop.run_once(0)  # the first use in the child: the fork check rebuilds here
        # In the child: register a new, readable fd, and run the loop.
        x, xpeer = socket.socketpair()
        xobj = Recorder(x, loop=loop)
        xpeer.sendall(b"child data")
        run_until(loop, lambda: bytes(xobj.got) == b"child data")
        ok = _echo_once(loop, b"child echo")
        return {"ok": ok, "rebuilt": loop.backend is not parent_backend,
                "fd": x.fileno(), "pid": os.getpid()}

    seen_while_alive: list[Any] = []
    result = _in_child(child, lambda: seen_while_alive.extend(_foreign_events(loop)))
    assert result["ok"]
    # While the child still had its fd open and registered, the parent saw nothing of it
    # (without the rebuild, epoll's shared set would report the child's fd here).
    assert seen_while_alive == []
    assert result["rebuilt"]  # reset() or the fork check built a new poller
    # The parent: its poller never heard of the child's fd, and its loop still works.
    assert _foreign_events(loop) == []
    assert loop.backend is parent_backend
    apeer.sendall(b"parent data")
    run_until(loop, lambda: bytes(parent_obj.got) == b"parent data")
    assert _echo_once(loop, b"parent echo")
    assert _foreign_events(loop) == []
    apeer.close()


def test_fork_child_inherits_registrations_without_reset(loop: danga.Loop) -> None:
    """Without reset() the child keeps the parent's objects: after the rebuild they are
    re-armed, so an inherited socket still delivers events in the child."""
    a, apeer = socket.socketpair()
    obj = Recorder(a, loop=loop)
    loop.run_once(0)

    def child() -> dict[str, Any]:
        apeer.sendall(b"to the child")
        run_until(loop, lambda: bytes(obj.got) == b"to the child")
        return {"got": obj.got.decode()}

    assert _in_child(child)["got"] == "to the child"
    # The parent did not read it (the child did) and is not disturbed.
    assert _foreign_events(loop) == []
    apeer.sendall(b"parent")
    run_until(loop, lambda: bytes(obj.got).endswith(b"parent"))
    apeer.close()


@pytest.mark.parametrize("action", ["register", "close-inherited"])
def test_fork_child_touches_loop_before_its_first_iteration(loop: danga.Loop,
                                                             action: str) -> None:
    a, apeer = socket.socketpair()
    obj = Recorder(a, loop=loop)
    loop.run_once(0)
    seen_while_alive: list[Any] = []

    def child() -> dict[str, Any]:
        if action == "register":
            x, xpeer = socket.socketpair()
            Recorder(x, loop=loop)  # registered for ERR|HUP at once
            xpeer.close()  # ... and hung up while the parent polls
            child.keep = x  # type: ignore[attr-defined]
        else:
            obj.close("the child does not serve this one")
        return {}

    _in_child(child, lambda: seen_while_alive.extend(_foreign_events(loop)))
    assert seen_while_alive == []
    apeer.sendall(b"parent data")
    run_until(loop, lambda: bytes(obj.got) == b"parent data", timeout=2)
    apeer.close()
