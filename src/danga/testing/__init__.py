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

The shipped conformance suite is :mod:`danga.testing.suite`. When ``--danga-backend`` is
given and no test path is (on the command line), the plugin collects that suite instead
of the configured ``testpaths``, so ``pytest -p danga.testing --danga-backend NAME`` run
anywhere checks backend NAME. Give paths to run your own tests on the backend instead.

Markers: ``danga_requires(capability, reason=...)`` or ``danga_requires(max_fd=N,
reason=...)`` (a strict expected failure on backends that do not declare the capability,
or declare a ``max_fd`` below N: :func:`danga.poller.capabilities`; this is how a test
says a backend legitimately differs; ``strict=False`` for a capability that is always
safe to leave undeclared, such as ``binds_open_files``: an XPASS is reported),
``danga_xfail(backends, reason=...)`` (a strict expected failure on backends named
explicitly; for a test's own emulations, never for a capability) and
``danga_group(name)`` (the group ``danga check`` reports a test under).
``--danga-report PATH`` writes per-group outcome counts as JSON (``danga check`` uses it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .. import backends as _backends
from ..loop import Loop
from ..poller import BackendUnavailable, Poller, capabilities

__all__ = ["SUITE", "backend_matrix", "register_backend", "registered_backends", "run_until"]

#: The file of the shipped conformance suite.
SUITE = Path(__file__).with_name("suite.py")

_extra: dict[str, type[Poller]] = {}


def register_backend(name: str, cls: type[Poller]) -> None:
    """Add a Poller class to the matrix under *name* (for classes that are not installed
    as entry points, such as test emulations). It runs only when no narrowing option
    excludes it."""
    _extra[name] = cls


def registered_backends() -> dict[str, type[Poller]]:
    """The classes added with :func:`register_backend`, by name."""
    return dict(_extra)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("danga", "danga backend conformance matrix")
    group.addoption(
        "--danga-backend",
        action="append",
        default=[],
        metavar="NAME",
        help="run the matrix on this backend only (repeatable; default: DANGA_BACKEND, "
        "else every available backend). With no test path, runs the shipped "
        "conformance suite (danga.testing.suite)",
    )
    group.addoption(
        "--danga-report",
        default=None,
        metavar="PATH",
        help="write per-group pass/fail/xfail counts of the conformance suite as JSON",
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
    classes = dict(backend_matrix(config))
    for item in items:
        item.user_properties.append(("danga_group", _group_of(item)))
        callspec = getattr(item, "callspec", None)
        name = callspec.params.get("danga_backend") if callspec is not None else None
        if name is None:
            continue
        for mark in item.iter_markers("danga_requires"):
            missing = _unmet(classes[name], mark)
            if missing:
                item.add_marker(pytest.mark.xfail(
                    reason=f"{mark.kwargs['reason']} ({missing})",
                    strict=mark.kwargs.get("strict", True)))
        for mark in item.iter_markers("danga_xfail"):
            if name in mark.args[0] if isinstance(mark.args[0], (list, tuple, set)) \
                    else name == mark.args[0]:
                item.add_marker(pytest.mark.xfail(reason=mark.kwargs["reason"], strict=True))


def _unmet(cls: type[Poller], mark: pytest.Mark) -> str | None:
    """Which requirement of a ``danga_requires`` mark *cls* does not declare, or None."""
    caps = capabilities(cls)
    for name in mark.args:
        if not getattr(caps, name):
            return f"{name} = False"
    need = mark.kwargs.get("max_fd")
    if need is not None and caps.max_fd is not None and caps.max_fd < need:
        return f"max_fd = {caps.max_fd}"
    return None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "danga_requires(*capabilities, max_fd=None, reason=..., strict=True): expected "
        "failure on backends that do not declare these capabilities "
        "(danga.poller.capabilities); strict=False where not declaring is always safe",
    )
    config.addinivalue_line(
        "markers",
        "danga_xfail(backends, reason=...): strict expected failure on these backends "
        "(a backend that legitimately differs; never a silent skip)",
    )
    config.addinivalue_line(
        "markers", "danga_group(name): the conformance group `danga check` reports under"
    )
    # The suite marks process-global tests for pytest-xdist; without xdist it is inert.
    config.addinivalue_line("markers", "xdist_group(name): pytest-xdist's grouping marker")
    if config.getoption("danga_backend", default=None) and not _paths_given(config):
        # `pytest -p danga.testing --danga-backend NAME` anywhere: run the shipped suite.
        config.args = [str(SUITE)]
    path = config.getoption("danga_report", default=None)
    if path and not hasattr(config, "workerinput"):  # the xdist controller reports
        config.pluginmanager.register(_GroupReport(Path(path)), "danga-group-report")


def _paths_given(config: pytest.Config) -> bool:
    source = getattr(config, "args_source", None)
    if source is not None:
        return bool(source == pytest.Config.ArgsSource.ARGS)
    return bool(config.invocation_params.args and any(
        not str(a).startswith("-") and os.path.exists(str(a).split("::")[0])
        for a in config.invocation_params.args))


def _group_of(item: pytest.Item) -> str:
    mark = item.get_closest_marker("danga_group")
    return str(mark.args[0]) if mark is not None and mark.args else "other"


class _GroupReport:
    """Counts each test's outcome per danga_group and writes them as JSON at the end."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.outcomes: dict[str, tuple[str, str]] = {}  # nodeid -> (group, outcome)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        group = dict(report.user_properties).get("danga_group", "other")
        if report.failed:
            outcome = "failed"
        elif hasattr(report, "wasxfail"):
            outcome = "xfailed"
        elif report.skipped:
            outcome = "skipped"
        elif report.when == "call":
            outcome = "passed"
        else:
            return
        old = self.outcomes.get(report.nodeid, (group, "passed"))[1]
        order = ("passed", "xfailed", "skipped", "failed")
        if report.nodeid not in self.outcomes or order.index(outcome) > order.index(old):
            self.outcomes[report.nodeid] = (str(group), outcome)

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        groups: dict[str, dict[str, int]] = {}
        for group, outcome in self.outcomes.values():
            counts = groups.setdefault(
                group, {"passed": 0, "failed": 0, "xfailed": 0, "skipped": 0})
            counts[outcome] += 1
        data = {"exitstatus": int(exitstatus), "groups": groups,
                "backends": [n for n, _ in backend_matrix(session.config)]}
        self.path.write_text(json.dumps(data, indent=2, sort_keys=True))


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
