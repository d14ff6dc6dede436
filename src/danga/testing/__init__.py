"""danga's conformance matrix, as a pytest plugin (``-p danga.testing``).

Installed danga registers this plugin under the ``pytest11`` entry point; with
``PYTEST_DISABLE_PLUGIN_AUTOLOAD=1`` load it with ``-p danga.testing``.

It parametrizes every test that uses the ``danga_backend`` fixture (directly, or through
``poller_cls``, ``poller`` or ``loop``) over the backends of the matrix:

- the names given with ``--danga-backend NAME`` (repeatable), else
- the names in ``DANGA_BACKEND`` (comma-separated), else
- every backend available here, plus any registered with :func:`register_backend`
  (the tests register the kqueue emulation this way).

A named backend that cannot be used here is an error, not a silent skip: a CI cell must
never pass on the wrong backend. The header of the run lists the backends that ran.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from .. import backends as _backends
from ..loop import Loop
from ..poller import BackendUnavailable, Poller

__all__ = ["backend_matrix", "register_backend"]

_extra: dict[str, type[Poller]] = {}


def register_backend(name: str, cls: type[Poller]) -> None:
    """Add a Poller class to the matrix under *name* (for classes that are not installed
    as entry points, such as test emulations). It runs only when no narrowing option
    excludes it."""
    _extra[name] = cls


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("danga", "danga backend conformance matrix")
    group.addoption(
        "--danga-backend",
        action="append",
        default=[],
        metavar="NAME",
        help="run the matrix on this backend only (repeatable; default: DANGA_BACKEND, "
        "else every available backend)",
    )


def _requested(config: pytest.Config) -> list[str] | None:
    names: list[str] = []
    for value in config.getoption("danga_backend", default=[]) or []:
        names.extend(_backends.parse_spec(value))
    if names:
        return names
    env = os.environ.get(_backends.ENV_VAR, "").strip()
    return _backends.parse_spec(env) if env else None


def backend_matrix(config: pytest.Config) -> list[tuple[str, type[Poller]]]:
    """The (name, Poller class) pairs this run covers, in a stable order.

    Raises:
        pytest.UsageError: a requested backend is unknown or unusable here.
    """
    cached = getattr(config, "_danga_matrix", None)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    wanted = _requested(config)
    matrix: list[tuple[str, type[Poller]]] = []
    if wanted is None:
        matrix = [(name, _backends.get(name)) for name in _backends.available()]
        matrix += sorted(_extra.items())
    else:
        for name in wanted:
            if name in _extra:
                matrix.append((name, _extra[name]))
                continue
            try:
                matrix.append((name, _backends.choose(name)))
            except (BackendUnavailable, LookupError) as exc:
                raise pytest.UsageError(f"danga matrix: {exc}") from exc
    config._danga_matrix = matrix  # type: ignore[attr-defined]
    return matrix


def pytest_report_header(config: pytest.Config) -> str:
    try:
        names = [name for name, _ in backend_matrix(config)]
    except pytest.UsageError as exc:
        return f"danga backends: error: {exc}"
    return f"danga backends: {', '.join(names) or '(none)'}"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "danga_backend" in metafunc.fixturenames:
        matrix = backend_matrix(metafunc.config)
        metafunc.parametrize(
            "danga_backend", [name for name, _ in matrix], ids=[n for n, _ in matrix],
            scope="function",
        )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Give every matrix test a marker naming its backend, so `-m` and per-backend
    # expected failures (danga_xfail) can refer to it.
    for item in items:
        callspec = getattr(item, "callspec", None)
        name = callspec.params.get("danga_backend") if callspec is not None else None
        if name is None:
            continue
        for mark in item.iter_markers("danga_xfail"):
            if name in mark.args[0] if isinstance(mark.args[0], (list, tuple, set)) \
                    else name == mark.args[0]:
                item.add_marker(pytest.mark.xfail(reason=mark.kwargs["reason"], strict=True))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "danga_xfail(backends, reason=...): strict expected failure on these backends "
        "(a backend that legitimately differs; never a silent skip)",
    )


@pytest.fixture
def danga_backend(request: pytest.FixtureRequest) -> str:
    """The name of the backend this test instance runs on."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def poller_cls(request: pytest.FixtureRequest, danga_backend: str) -> type[Poller]:
    """The Poller class of this test's backend."""
    return dict(backend_matrix(request.config))[danga_backend]


@pytest.fixture
def poller(poller_cls: type[Poller]) -> Iterator[Poller]:
    """A fresh Poller of this test's backend, closed afterwards."""
    p = poller_cls()
    yield p
    p.close()


@pytest.fixture
def loop(poller_cls: type[Poller]) -> Iterator[Loop]:
    """A fresh danga.Loop on this test's backend; its sockets and poller are closed after."""
    lp = Loop(poller_cls)
    yield lp
    _dispose(lp)


def _dispose(lp: Loop) -> None:
    for obj in list(lp.descriptor_map.values()):
        try:
            obj.close("test over")
        except Exception:
            pass
    if not lp.closed:
        lp.close()


def run_until(lp: Loop, condition: Any, timeout: float = 5.0) -> None:
    """Run *lp* until ``condition()`` is true, failing the test after *timeout* seconds.

    Raises:
        AssertionError: the condition did not become true in time.
    """
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"condition not met within {timeout}s: {condition!r}")
        lp.run_once(min(left, 0.05))
