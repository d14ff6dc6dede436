"""Helpers shared by the built-in backends (kept tiny: each backend stays readable alone)."""

from __future__ import annotations

import time
from collections.abc import Callable

Events = list[tuple[int, int]]


def closed_error(name: str) -> RuntimeError:
    """The error every method of a closed poller raises."""
    return RuntimeError(f"the {name} poller is closed; create a new one (Loop.reset() does)")


def wait_at_least(poll_once: Callable[[float], Events], timeout: float) -> Events:
    """Call ``poll_once(t)`` until it reports events or *timeout* seconds have passed.

    Kernels may return a timed-out wait a little early (libev: "epoll does sometimes return
    early"; kqueue with no fds used to return at once, bpo-29255), and danga promises that
    ``poll(t)`` with nothing ready waits at least *t*.
    """
    deadline = time.monotonic() + timeout
    while True:
        ready = poll_once(timeout)
        if ready:
            return ready
        timeout = deadline - time.monotonic()
        if timeout <= 0:
            return ready
