"""Build hook: the optional compiled core (docs/internals.md#compiled-core).

The core's own ``.py`` files (``danga._core.COMPILED``) are compiled with Cython in
pure-Python mode into extension modules of the same names, next to the sources. The
pure-Python package is the reference and the fallback:

- ``DANGA_COMPILE=0`` never compiles; ``DANGA_COMPILE=1`` compiles an editable install
  too (``pip install -e .`` is pure by default, so a build can never shadow the sources
  a developer edits without being asked for; ``danga._core`` also ignores an in-place
  build older than its source);
- no Cython, no C compiler, not CPython, or any module failing to compile: a warning,
  and the package installs pure (all or nothing: never half a compiled core).

Everything else about the package is in pyproject.toml.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent
SRC = ROOT / "src"
# The same list as danga._core.COMPILED (not imported from there: the build must not
# import the package it builds).
COMPILED = ("danga.timers", "danga._registry", "danga._waker", "danga.loop", "danga.socket",
            "danga.backends.epoll", "danga.backends.poll")
# A marker next to the sources, written by an in-place (editable) build: danga._core
# then checks that each extension is newer than its source (docs/internals.md#compiled-core).
INPLACE_MARKER = SRC / "danga" / "_compiled_inplace"


def _warn(message: str) -> None:
    warnings.warn(f"danga: {message}; installing the pure-Python core", stacklevel=2)
    print(f"danga: {message}; installing the pure-Python core", file=sys.stderr)


def _wanted(editable: bool) -> bool:
    flag = os.environ.get("DANGA_COMPILE", "").strip()
    if flag == "0":
        return False
    if sys.implementation.name != "cpython":
        return False
    return flag == "1" or not editable


def _extensions() -> list:  # type: ignore[type-arg]
    try:
        from Cython.Build import cythonize
    except ImportError as exc:
        _warn(f"Cython is not available ({exc})")
        return []
    exts = [Extension(name, ["src/" + name.replace(".", "/") + ".py"])
            for name in COMPILED]
    try:
        return cythonize(  # type: ignore[no-any-return]
            exts,
            build_dir="build/cython",
            compiler_directives={
                "language_level": 3,
                # The annotations are for mypy: as Cython types they would change
                # behaviour (a float argument becoming a C double, Cython's own
                # TypeErrors instead of danga's messages). C types come from .pxd files.
                "annotation_typing": False,
                "binding": True,
                "embedsignature": False,
            },
            quiet=True,
        )
    except Exception as exc:  # a Cython error in one module: no compiled core at all
        _warn(f"cythonize failed ({exc})")
        return []


class BuildCore(build_ext):
    """build_ext that never fails the install: a failed compile leaves the pure core."""

    def run(self) -> None:
        editable = bool(getattr(self, "editable_mode", False) or self.inplace)
        if not _wanted(editable):
            self.extensions = []
            if editable:  # an earlier opt-in build must not outlive this install
                _remove_inplace_builds()
            return
        compiled = {ext.name: ext for ext in _extensions()}
        if not compiled:
            self.extensions = []
            return
        for ext in self.extensions:  # finalised by setuptools: keep them, give them sources
            ext.sources = compiled[ext.name].sources
        try:
            super().run()
        except Exception as exc:  # no compiler, missing headers, a compile error
            _warn(f"compiling the core failed ({exc})")
            for path in self.get_outputs():
                Path(path).unlink(missing_ok=True)
            if editable:
                _remove_inplace_builds()
            self.extensions = []
            return
        if editable:
            INPLACE_MARKER.write_text(
                "Written by an editable build of the compiled core (setup.py): danga._core\n"
                "uses an extension module here only while it is newer than its .py.\n")

    def get_outputs(self) -> list[str]:
        return super().get_outputs() if self.extensions else []


def _remove_inplace_builds() -> None:
    INPLACE_MARKER.unlink(missing_ok=True)
    for name in COMPILED:
        base = SRC / name.replace(".", "/")
        for built in base.parent.glob(base.name + ".*.so"):
            built.unlink()
        for built in base.parent.glob(base.name + ".*.pyd"):
            built.unlink()


# Placeholder extensions make setuptools run build_ext (and tag the wheel for this
# platform); BuildCore.run replaces them with the real ones, or with nothing.
setup(
    ext_modules=[Extension(name, []) for name in COMPILED],
    cmdclass={"build_ext": BuildCore},
)
