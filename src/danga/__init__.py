"""danga: an event loop and event-driven async socket base class.

A faithful, faster and safer successor to Perl's Danga::Socket. Subclass
:class:`Socket`, react to ``event_read`` / ``event_write`` / ``event_err`` /
``event_hup``, and run a :class:`Loop`::

    import danga

    class Echo(danga.Socket):
        def event_read(self):
            data = self.read(65536)
            if data is None:
                self.close("eof")
            elif data:
                self.write(data)

Importing danga is cheap: backends are discovered only when a choice needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# First, before any core module: honours DANGA_PURE and ignores stale in-place builds.
from . import _core
from .connect import connect
from .listener import Listener
from .loop import Loop, get_loop
from .poller import (
    API_VERSION,
    ERR,
    HUP,
    READ,
    WRITE,
    BackendError,
    BackendUnavailable,
    FdOutOfRange,
    UnknownBackend,
    UnsupportedFileType,
)
from .socket import Socket
from .timers import Timer

if TYPE_CHECKING:
    from .process import prefork
    from .selector import Selector

__version__ = "0.1.0"

#: Which core runs: "compiled" (the extension modules setup.py builds from the core's
#: sources with Cython) or "pure" (the .py sources; forced by DANGA_PURE=1); "mixed"
#: means a partial build. docs/internals.md#compiled-core
CORE: str = _core.active()

__all__ = [
    "API_VERSION",
    "CORE",
    "ERR",
    "HUP",
    "READ",
    "WRITE",
    "BackendError",
    "BackendUnavailable",
    "FdOutOfRange",
    "Listener",
    "Loop",
    "Selector",
    "Socket",
    "Timer",
    "UnknownBackend",
    "UnsupportedFileType",
    "__version__",
    "connect",
    "get_loop",
    "prefork",
]


def __getattr__(name: str) -> Any:
    # danga.prefork and danga.Selector are imported on first use: most programs never
    # fork workers or run asyncio on danga, and `import danga` stays light.
    if name == "prefork":
        from .process import prefork

        return prefork
    if name == "Selector":
        from .selector import Selector

        return Selector
    raise AttributeError(f"module 'danga' has no attribute {name!r}")
