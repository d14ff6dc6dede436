"""Bad input: each case gets a clear exception type and message, leaves all state
unchanged and disturbs no other socket. One table, run on every backend.

"State" is everything the loop and the object under test expose: the descriptor map,
the kernel registrations, the pending interest changes, the timers, the other fds, the
loop timeout, the object's interest, write queue and pushed-back data. A bystander
socket echoes after every case.
"""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from reliability_helpers import Recorder

import danga
from danga.poller import UnknownBackend
from danga.testing import run_until


class Case:
    def __init__(self, name: str, action: Callable[[dict[str, Any]], Any],
                 exc: type[BaseException], match: str) -> None:
        self.name, self.action, self.exc, self.match = name, action, exc, match


def _cb(*_: Any) -> None:
    pass


def _foreign_owner(env: dict[str, Any]) -> Any:
    class SameFd:  # another object naming the fd that env["obj"] already owns
        def fileno(self) -> int:
            return env["obj"].fd

        def close(self) -> None:
            raise AssertionError("a refused object must not be closed")

    return danga.Socket(SameFd(), loop=env["loop"])


def _closed_socket(env: dict[str, Any]) -> Any:
    s = socket.socket()
    s.close()
    return danga.Socket(s, loop=env["loop"])


CASES = [
    Case("write(str)", lambda e: e["obj"].write("text"), TypeError, r"bytes, not str.*encode"),
    Case("write(42)", lambda e: e["obj"].write(42), TypeError, r"bytes-like.*not int"),
    Case("read(-1)", lambda e: e["obj"].read(-1), ValueError, r">= 0, not -1"),
    Case("read('1')", lambda e: e["obj"].read("1"), TypeError, r"byte count \(int\)"),
    Case("add_timer(nan)", lambda e: e["loop"].add_timer(float("nan"), _cb), ValueError,
         r"NaN"),
    Case("add_timer('1')", lambda e: e["loop"].add_timer("1", _cb), TypeError,
         r"number of seconds.*not str"),
    Case("add_timer(1, 'x')", lambda e: e["loop"].add_timer(1, "not callable"), TypeError,
         r"callback must be callable, not str"),
    Case("Socket(closed socket)", _closed_socket, ValueError, r"closed"),
    Case("Socket(no fileno)", lambda e: danga.Socket(object(), loop=e["loop"]), TypeError,
         r"fileno\(\)"),
    Case("Socket(owned fd)", _foreign_owner, ValueError, r"already owned by Recorder"),
    Case("set_loop_timeout('x')", lambda e: e["loop"].set_loop_timeout("x"), TypeError,
         r"milliseconds \(a number\), not str"),
    Case("set_loop_timeout(nan)", lambda e: e["loop"].set_loop_timeout(math.nan),
         ValueError, r"NaN"),
    Case("add_other_fds(non-callable)",
         lambda e: e["loop"].add_other_fds({e["pipe_r"]: 42}), TypeError,
         r"callback for fd \d+ must be callable, not int"),
    Case("set_other_fds(non-callable)",
         lambda e: e["loop"].set_other_fds({e["pipe_r"]: "x"}), TypeError,
         r"must be callable, not str"),
    Case("other_fds[fd] = non-callable",
         lambda e: e["loop"].other_fds.__setitem__(e["pipe_r"], None), TypeError,
         r"must be callable, not NoneType"),
    Case("add_other_fds(not a mapping)", lambda e: e["loop"].add_other_fds([1, 2]),
         TypeError, r"mapping fd -> callback"),
    Case("set_post_loop_callback(3)", lambda e: e["loop"].set_post_loop_callback(3),
         TypeError, r"must be callable"),
    Case("set_exception_handler(3)", lambda e: e["loop"].set_exception_handler(3),
         TypeError, r"must be callable"),
    Case("set_writer_func(3)", lambda e: e["obj"].set_writer_func(3), TypeError,
         r"must be callable"),
    Case("push_back_read(str)", lambda e: e["obj"].push_back_read("x"), TypeError,
         r"bytes, not str"),
    Case("Loop(backend=garbage)", lambda e: danga.Loop("no-such-backend"), UnknownBackend,
         r"unknown danga backend 'no-such-backend'; known backends: .*epoll"),
    Case("Loop(backend=42)", lambda e: danga.Loop(42), TypeError, r"backend"),
]


def _snapshot(loop: danga.Loop, obj: Recorder) -> dict[str, Any]:
    return {
        "dmap": dict(loop.descriptor_map),
        "kernel": dict(loop._registry.kernel),
        "dirty": dict(loop._registry.dirty),
        "timers": loop.timers(),
        "heap": len(loop._timers._heap),
        "other": dict(loop.other_fds),
        "timeout": loop._loop_timeout,
        "plc": loop._post_loop_callback,
        "handler": loop._exception_handler,
        "watch": obj._event_watch,
        "wbuf": (obj.write_buf_size, len(obj._wbuf)),
        "pb": obj._pb_size,
        "writer": obj._writer,
        "closed": obj.closed,
        "backend": loop.backend,
    }


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(loop: danga.Loop, case: Case) -> None:
    by_sock, by_peer = socket.socketpair()
    by_peer.setblocking(False)
    bystander = Recorder(by_sock, loop=loop)
    a, peer = socket.socketpair()
    obj = Recorder(a, loop=loop)
    obj.write(b"q" * (1 << 20))  # something queued, so that "unchanged" means something
    obj.push_back_read(b"pushed")
    obj.watch_read(False)
    loop.add_timer(60, _cb)
    r, w = os.pipe()
    env = {"loop": loop, "obj": obj, "pipe_r": r}
    before = _snapshot(loop, obj)
    try:
        with pytest.raises(case.exc, match=case.match):
            case.action(env)
        assert _snapshot(loop, obj) == before
        by_peer.sendall(b"undisturbed")
        run_until(loop, lambda: bytes(bystander.got) == b"undisturbed")
        assert obj.late == [] and not obj.closed
    finally:
        os.close(r)
        os.close(w)
        peer.close()


def _closed_loop(backend: Any) -> danga.Loop:
    lp = danga.Loop(backend)
    lp.close()
    return lp


CLOSED_LOOP_USES: list[tuple[str, Callable[[danga.Loop], Any]]] = [
    ("run", lambda lp: lp.run()),
    ("run_once", lambda lp: lp.run_once(0)),
    ("add_timer", lambda lp: lp.add_timer(1, _cb)),
    ("set_loop_timeout", lambda lp: lp.set_loop_timeout(10)),
    ("Socket", lambda lp: danga.Socket(socket.socket(), loop=lp)),
    ("Listener", lambda lp: danga.Listener(socket.socket(), loop=lp)),
    ("add_other_fds", lambda lp: lp.add_other_fds({0: _cb})),
    ("set_other_fds", lambda lp: lp.set_other_fds({0: _cb})),
    ("other_fds[fd]", lambda lp: lp.other_fds.__setitem__(0, _cb)),
]


@pytest.mark.parametrize("use", [u for _, u in CLOSED_LOOP_USES],
                         ids=[n for n, _ in CLOSED_LOOP_USES])
def test_closed_loop_refuses(poller_cls: Any, use: Callable[[danga.Loop], Any]) -> None:
    lp = _closed_loop(poller_cls)
    with pytest.raises(RuntimeError, match=r"danga.Loop is closed; create a new one"):
        use(lp)
    assert lp.closed and lp.descriptor_map == {} and lp.timers() == 0
    assert dict(lp.other_fds) == {}


@pytest.mark.parametrize("use", [
    pytest.param(lambda lp: lp.set_post_loop_callback(_cb), id="set_post_loop_callback"),
    pytest.param(lambda lp: lp.set_exception_handler(lambda lp, ctx: None),
                 id="set_exception_handler"),
    pytest.param(lambda lp: lp.enable_profiling(), id="enable_profiling"),
])
def test_closed_loop_refuses_settings(poller_cls: Any,
                                      use: Callable[[danga.Loop], Any]) -> None:
    lp = _closed_loop(poller_cls)
    with pytest.raises(RuntimeError, match=r"closed"):
        use(lp)


@pytest.mark.parametrize("value", ["garbage", ",", "epoll;poll", "EPOLL", "kqueue"])
def test_danga_backend_garbage_loop(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("DANGA_BACKEND", value)
    from danga.poller import BackendError
    with pytest.raises((BackendError, ValueError)) as info:
        danga.Loop()
    message = str(info.value)
    assert "\n" not in message and "backend" in message.lower(), message


@pytest.mark.parametrize("argv", [["-m", "danga", "backends"], ["-m", "danga", "demo"]],
                         ids=["backends", "demo"])
def test_danga_backend_garbage_cli(argv: list[str]) -> None:
    env = dict(os.environ, DANGA_BACKEND="no-such-backend")
    proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True,
                          env=env, timeout=30)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr  # one line, no traceback
    assert "no-such-backend" in lines[0] and lines[0].startswith("danga: ")
