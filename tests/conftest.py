"""Project-wide test setup (kept small; helpers add fixtures here with small edits).

The kqueue emulation joins the backend matrix here, in an initial conftest, so that the
pytest header (``danga backends: ...``) already lists it.
"""

import os
import select
import sys
from pathlib import Path

import pytest

import danga
import danga.loop
from danga.backends.kqueue import KqueuePoller
from danga.testing import register_backend

sys.path.insert(0, str(Path(__file__).parent / "backends"))
import kqueue_emulation  # noqa: E402  (tests/backends/kqueue_emulation.py)


class EmulatedKqueuePoller(KqueuePoller):
    """The real kqueue translation of danga.backends.kqueue, over the Linux emulation."""

    name = "kqueue-emulated"
    _kq = kqueue_emulation
    embeddable = False  # the emulation runs over select.poll: no kqueue fd to watch


if hasattr(select, "poll"):  # the emulation runs over select.poll (not on Windows)
    register_backend(EmulatedKqueuePoller.name, EmulatedKqueuePoller)


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """``-n auto``: two workers per CPU this process may run on (at least 2, at most 8).

    Most of this suite waits rather than computes: peers' handshakes and timeouts, the
    CPython suites' child processes, prefork masters, slow readers, deadlines of expected
    failures. One worker per core leaves the cores idle while a worker waits; measured on 2
    cores, ``-n 4`` finished the suite in 112 s where ``-n 2`` took 153 s, with the same CPU
    time. ``PYTEST_XDIST_AUTO_NUM_WORKERS`` still wins (xdist's own hook reads it).
    """
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cpus = os.cpu_count() or 1
    return max(2, min(8, 2 * cpus))


@pytest.fixture
def default_loop(poller_cls, monkeypatch):
    """A fresh Loop on this test's backend installed as the process's default loop
    (what get_loop(), loop=None and Danga's class-method names use), closed after."""
    lp = danga.Loop(poller_cls)
    monkeypatch.setattr(danga.loop, "_default", lp)
    yield lp
    for obj in list(lp.descriptor_map.values()):
        obj.close()
    if not lp.closed:
        lp.close()
