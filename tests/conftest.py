"""Project-wide test setup (kept small; helpers add fixtures here with small edits).

The kqueue emulation joins the backend matrix here, in an initial conftest, so that the
pytest header (``danga backends: ...``) already lists it.
"""

import select
import sys
from pathlib import Path

from danga.backends.kqueue import KqueuePoller
from danga.testing import register_backend

sys.path.insert(0, str(Path(__file__).parent / "backends"))
import kqueue_emulation  # noqa: E402  (tests/backends/kqueue_emulation.py)


class EmulatedKqueuePoller(KqueuePoller):
    """The real kqueue translation of danga.backends.kqueue, over the Linux emulation."""

    name = "kqueue-emulated"
    _kq = kqueue_emulation


if hasattr(select, "poll"):  # the emulation runs over select.poll (not on Windows)
    register_backend(EmulatedKqueuePoller.name, EmulatedKqueuePoller)
