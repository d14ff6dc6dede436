"""Which core runs: the compiled one (Cython, from the same sources) or the pure one.

The core's modules (``COMPILED``) may exist twice: as their ``.py`` source and as an
extension module compiled from it by setup.py (docs/internals.md#compiled-core). The
import system prefers the extension. This module, imported first by ``danga``, decides
before any core module is imported:

- ``DANGA_PURE=1`` loads every core module from its ``.py`` source, compiled or not;
- an in-place build (an editable install with ``DANGA_COMPILE=1``, which leaves a marker
  file next to the sources) is used only for the modules whose extension is newer than
  their source: a source edited since the build is loaded as it is, with one warning,
  never shadowed by the stale build.

Otherwise (a wheel, or no extension at all) the import system is left alone: no finder
is installed, and nothing here costs anything per import.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from importlib.machinery import EXTENSION_SUFFIXES, ModuleSpec, SourceFileLoader
from types import ModuleType

__all__ = ["COMPILED", "PURE_ENV", "active"]

# The modules setup.py compiles (the same list is in setup.py).
COMPILED = ("danga.timers", "danga._registry", "danga._waker", "danga.loop", "danga.socket",
            "danga.backends.epoll", "danga.backends.poll")
PURE_ENV = "DANGA_PURE"
_MARKER = "_compiled_inplace"


def _extension_of(directory: str, leaf: str) -> str | None:
    for suffix in EXTENSION_SUFFIXES:
        path = os.path.join(directory, leaf + suffix)
        if os.path.exists(path):
            return path
    return None


class _SourceFinder:
    """On ``sys.meta_path`` ahead of the path finder: loads a core module from its
    ``.py`` when the pure core is forced, or when its in-place build is stale."""

    def __init__(self, force_pure: bool) -> None:
        self.force_pure = force_pure

    def find_spec(self, name: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        if name not in COMPILED or not path:
            return None
        leaf = name.rpartition(".")[2]
        for directory in path:
            source = os.path.join(directory, leaf + ".py")
            if not os.path.exists(source):
                continue
            if not self.force_pure:
                built = _extension_of(directory, leaf)
                if built is None or os.stat(built).st_mtime_ns >= os.stat(source).st_mtime_ns:
                    return None  # the path finder finds the extension (or the source)
                import warnings

                warnings.warn(f"danga: {built} is older than {source}; using the source "
                              "(rebuild: DANGA_COMPILE=1 pip install -e .)", stacklevel=2)
            loader = SourceFileLoader(name, source)
            spec = ModuleSpec(name, loader, origin=source)
            spec.has_location = True
            return spec
        return None


def _install(package_dir: str) -> None:
    """Put the finder on ``sys.meta_path`` if ``DANGA_PURE=1`` or the package was built
    in place (at the import of this module, which ``danga/__init__.py`` imports first)."""
    force_pure = os.environ.get(PURE_ENV, "").strip() not in ("", "0")
    if not force_pure and not os.path.exists(os.path.join(package_dir, _MARKER)):
        return
    if not any(isinstance(f, _SourceFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _SourceFinder(force_pure))


def active() -> str:
    """``"compiled"`` if every core module imported so far is an extension module,
    ``"pure"`` if none is, ``"mixed"`` otherwise (a partial build: rebuild it)."""
    suffixes = tuple(EXTENSION_SUFFIXES)
    kinds = {(getattr(sys.modules[name], "__file__", None) or "").endswith(suffixes)
             for name in COMPILED if name in sys.modules}
    if kinds == {True}:
        return "compiled"
    return "pure" if True not in kinds else "mixed"


_install(os.path.dirname(__file__))
