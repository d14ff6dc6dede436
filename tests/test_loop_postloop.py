"""Post-event work: push-back re-reads -> deferred closes -> per-object callbacks -> the
global callback; callback arguments; the false-return short-circuit (every
backend)."""

from __future__ import annotations

import pytest

import danga
from danga_helpers import Recorder, nb_pair


def test_post_event_work_order(loop):
    a, b = nb_pair()
    c, d = nb_pair()
    order: list = []
    reader = Recorder(a, loop=loop)
    victim = danga.Socket(c, loop=loop)
    victim_fd = victim.fd

    def push_back_reread(me):
        me.read(10)
        order.append("push-back")
        victim.close()  # reaped in this same post-event work, after the re-reads

    reader.on["read"] = push_back_reread
    reader.watch_read(True)
    reader.push_back_read(b"x")

    def per_object(dmap, other):
        order.append(("per-object", victim_fd in dmap, loop.to_close() == []))
        return True

    def global_cb(dmap, other):
        order.append("global")
        return True

    reader.set_post_loop_callback(per_object)
    loop.set_post_loop_callback(global_cb)
    loop.run_once(0)
    assert order == ["push-back", ("per-object", False, True), "global"]
    b.close()
    d.close()


def test_callbacks_get_the_live_dicts(loop):
    a, b = nb_pair()
    obj = danga.Socket(a, loop=loop)
    seen = []
    obj.set_post_loop_callback(lambda dm, of: seen.append(("obj", dm, of)) or True)
    loop.set_post_loop_callback(lambda dm, of: seen.append(("global", dm, of)) or True)
    loop.run_once(0)
    assert [s[0] for s in seen] == ["obj", "global"]
    for _, dmap, other in seen:
        assert dmap is loop.descriptor_map and other is loop.other_fds
    b.close()


def test_false_return_ends_run_after_this_iteration(loop):
    iterations = []

    def count(dmap, other):
        iterations.append(len(iterations) + 1)
        return len(iterations) < 3

    loop.set_loop_timeout(0)
    loop.set_post_loop_callback(count)
    loop.run()
    assert iterations == [1, 2, 3]


@pytest.mark.parametrize("falsy", [False, 0, None, "", []])
def test_any_false_value_stops(loop, falsy):
    loop.set_loop_timeout(0)
    calls = []
    loop.set_post_loop_callback(lambda *_: calls.append(1) or falsy)
    loop.run()
    assert calls == [1]


def test_per_object_false_short_circuits_the_rest(loop):
    """Danga's &&=: once one returns false, the remaining per-object callbacks and the
    global one are not called in that iteration, and run() ends."""
    pairs = [nb_pair() for _ in range(2)]
    first, second = (danga.Socket(a, loop=loop) for a, _ in pairs)
    calls: list = []
    first.set_post_loop_callback(lambda *_: calls.append("first") and False)
    second.set_post_loop_callback(lambda *_: calls.append("second") or True)
    loop.set_post_loop_callback(lambda *_: calls.append("global") or True)
    loop.set_loop_timeout(0)
    loop.run()
    assert calls == ["first"]
    for _, b in pairs:
        b.close()


def test_global_false_stops_even_with_true_per_object(loop):
    a, b = nb_pair()
    obj = danga.Socket(a, loop=loop)
    calls: list = []
    obj.set_post_loop_callback(lambda *_: calls.append("obj") or True)
    loop.set_post_loop_callback(lambda *_: calls.append("global") and False)
    loop.set_loop_timeout(0)
    loop.run()
    assert calls == ["obj", "global"]
    b.close()


def test_per_object_callback_removed_on_close_and_with_none(loop):
    pairs = [nb_pair() for _ in range(2)]
    one, two = (danga.Socket(a, loop=loop) for a, _ in pairs)
    calls: list = []
    one.set_post_loop_callback(lambda *_: calls.append("one") or True)
    two.set_post_loop_callback(lambda *_: calls.append("two") or True)
    loop.run_once(0)
    assert sorted(calls) == ["one", "two"]
    calls.clear()
    one.close()
    two.set_post_loop_callback(None)
    loop.run_once(0)
    loop.run_once(0)
    assert calls == []
    with pytest.raises(TypeError):
        two.set_post_loop_callback(42)
    with pytest.raises(TypeError):
        loop.set_post_loop_callback("nope")
    for _, b in pairs:
        b.close()


def test_socket_closed_in_a_callback_is_reaped_next_iteration(loop):
    a, b = nb_pair()
    obj = danga.Socket(a, loop=loop)
    state = []

    def cb(dmap, other):
        if not state:
            obj.close()
            state.append(obj.fd in dmap)
        else:
            state.append(obj.fd in dmap)
        return True

    loop.set_post_loop_callback(cb)
    loop.run_once(0)
    loop.run_once(0)
    assert state == [True, False]
    b.close()


def test_stop_ends_run(loop):
    loop.set_loop_timeout(0)
    calls = []

    def cb(dmap, other):
        calls.append(1)
        if len(calls) == 2:
            loop.stop()
        return True

    loop.set_post_loop_callback(cb)
    loop.run()
    assert calls == [1, 1]
