"""The local CI matrix: every installed Python 3.10-3.13 x every backend available here.

    pip install nox
    nox                      # the whole grid, then lint and docs
    nox -s tests             # the grid only
    nox -s "tests-3.12(backend='poll')"   # one cell
    nox -l                   # list the cells

Each ``tests`` cell installs danga with its ``test`` extra into a fresh virtualenv of that
Python and runs the README's command, ``pytest -n auto``, with the backend forced through
``DANGA_BACKEND`` (so the conformance matrix, the default loop and every subprocess use
it). These are the cells of ``.github/workflows/ci.yml`` for this platform (its Linux
job: epoll, poll, select). On a platform without a real kqueue, the ``kqueue_emulated``
session adds one cell per Python that runs the matrix on the test suite's kqueue
emulation (the real translation of ``danga.backends.kqueue`` over an emulated kernel),
which no ``DANGA_BACKEND`` can name because it is not an installed backend; on GitHub
the emulation runs in the coverage job, as in ``.ci/run``.

Interpreters are found on ``PATH`` (``python3.12``) and, when pyenv is present, in
``$(pyenv root)/versions/3.12.*``. Only the Pythons found are in the grid, so no cell is
skipped for a missing interpreter; ``nox -l`` shows which are.
"""

from __future__ import annotations

import glob
import os
import select
import shutil
import sys
from pathlib import Path

import nox

PYTHONS_WANTED = ("3.10", "3.11", "3.12", "3.13")

nox.options.sessions = ["tests", "compiled", "lint", "docs"]
if not hasattr(select, "kqueue"):
    nox.options.sessions.insert(1, "kqueue_emulated")
nox.options.reuse_venv = "yes"  # the cells rebuild nothing but danga itself (editable)
nox.options.error_on_missing_interpreters = True


def _pyenv_root() -> Path | None:
    root = os.environ.get("PYENV_ROOT")
    if root:
        return Path(root)
    default = Path.home() / ".pyenv"
    return default if default.is_dir() else None


def _version_key(path: str) -> tuple[int, ...]:
    name = Path(path).parent.parent.name  # .../versions/3.12.1/bin/python -> 3.12.1
    return tuple(int(part) if part.isdigit() else -1 for part in name.split("."))


def _find_pythons() -> list[str]:
    """The wanted Python versions that are installed, with pyenv's put on PATH.

    Putting the newest pyenv patch release of each version first on PATH lets nox find
    ``python3.X`` by its ordinary lookup, so the cells keep short names (tests-3.12).
    """
    found = []
    root = _pyenv_root()
    extra_path = []
    for version in PYTHONS_WANTED:
        candidates = []
        if root is not None:
            candidates = sorted(glob.glob(str(root / "versions" / f"{version}.*" / "bin" /
                                              "python")), key=_version_key)
            candidates = [c for c in candidates if _version_key(c)[:2] == tuple(
                int(p) for p in version.split("."))]
        if candidates:
            extra_path.append(str(Path(candidates[-1]).parent.parent / "bin"))
            found.append(version)
        elif shutil.which(f"python{version}"):
            found.append(version)
    if extra_path:
        # Each pyenv bin dir holds only its own python3.X, so their order does not matter.
        os.environ["PATH"] = os.pathsep.join([*extra_path, os.environ.get("PATH", "")])
    return found


def _backends_here() -> list[str]:
    """The built-in backends whose primitive exists on this platform (each cell's probe
    then proves it works: a forced backend that does not is an error, not a skip)."""
    names = []
    if hasattr(select, "epoll"):
        names.append("epoll")
    if hasattr(select, "kqueue"):
        names.append("kqueue")
    if hasattr(select, "poll") and sys.platform != "win32":
        names.append("poll")
    names.append("select")
    return names


PYTHONS = _find_pythons()
BACKENDS = _backends_here()


@nox.session(python=PYTHONS)
@nox.parametrize("backend", BACKENDS)
def tests(session: nox.Session, backend: str) -> None:
    """The suite on one Python with one backend forced."""
    session.install("-e", ".[test]")
    session.run("danga", "backends", env={"DANGA_BACKEND": backend})
    # One backend per cell, so CPython's peer suites run in full (DANGA_PEER_SUITES=all).
    session.run("pytest", "-n", "auto", *session.posargs,
                env={"DANGA_BACKEND": backend, "DANGA_PEER_SUITES": "all"})


@nox.session(python=PYTHONS)
def compiled(session: nox.Session) -> None:
    """The suite on the compiled core (docs/internals.md#compiled-core), every backend."""
    session.install("-e", ".[test]", env={"DANGA_COMPILE": "1"})
    session.run("danga", "backends")
    # DANGA_EXPECT_CORE: tests/test_core.py fails if the build fell back to pure.
    session.run("pytest", "-n", "auto", *session.posargs,
                env={"DANGA_EXPECT_CORE": "compiled"})
    session.install("-e", ".")  # pure again: removes the in-place build


def kqueue_emulated(session: nox.Session) -> None:
    """The suite with the conformance matrix on the kqueue emulation (no real kqueue here)."""
    session.install("-e", ".[test]")
    # Not an installed backend: name it to the matrix only. The path keeps the whole
    # suite (--danga-backend alone would run just danga.testing.suite). select joins
    # the matrix because the examples' subprocess tests need an installed backend to
    # name (with the emulation alone their parameter set would be empty: a skip).
    session.run("pytest", "-n", "auto", "--danga-backend", "kqueue-emulated",
                "--danga-backend", "select", *(session.posargs or ["tests"]))


if not hasattr(select, "kqueue"):  # where the real kqueue exists, its cells test it
    nox.session(python=PYTHONS)(kqueue_emulated)


@nox.session(python=PYTHONS[-1:] or None)
def lint(session: nox.Session) -> None:
    """ruff over the whole tree and mypy --strict over the package."""
    session.install("-e", ".[lint]")
    session.run("ruff", "check", ".")
    session.run("mypy", "--strict", "src/danga")


@nox.session(python=PYTHONS[-1:] or None)
def docs(session: nox.Session) -> None:
    """The documentation site, built strictly (warnings are errors) into a temp dir."""
    session.install("-e", ".[docs]")
    session.run("mkdocs", "build", "--strict", "--site-dir",
                str(Path(session.create_tmp()) / "site"))
