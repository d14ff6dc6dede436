"""The peer suite (danga.testing.peer): CPython's own selectors and asyncio tests run
through danga.Selector, on every backend of the matrix (the available built-ins,
installed plugins and the kqueue emulation).

One test per backend runs the suites, each in a child process of its own, side by side:
the suites mostly wait (timeouts, signals, handshakes, subprocesses), so together they
take about as long as the longest one.

By default every suite but ``ssl`` runs: test_asyncio.test_ssl.TestSSL costs as much CPU
as the other five together and exercises the same selector calls as ``sslproto``'s
start-TLS tests, which do run; on every backend of a full matrix it would add a minute to
``pytest -n auto``. ``DANGA_PEER_SUITES=all`` runs all six (a CI cell, which has one
backend), and a comma-separated list runs those suites."""

import os

import pytest

import danga
from danga.testing import peer


@pytest.mark.timeout(600)
def test_cpython_suites(danga_backend, poller_cls, record_property):
    missing = peer.missing_test_package()
    if missing is not None:
        pytest.skip(missing)
    wanted = os.environ.get("DANGA_PEER_SUITES", "").strip()
    if wanted == "all":
        suites = list(peer.SUITES)
    elif wanted:
        suites = [s.strip() for s in wanted.split(",") if s.strip()]
    else:
        suites = [s for s in peer.SUITES if s != "ssl"]
    results = peer.run_suites(poller_cls, suites, timeout=540)
    table = peer.format_table(results)
    print(f"{danga_backend}:\n{table}")
    record_property("peer", table)
    failed = peer.problems_of(results)
    assert not failed, "\n\n".join(peer.format_problems(r) for r in failed)
    ran = [r for r in results if not r.get("unavailable")]
    assert ran, table
    for r in ran:
        # Something passed in every suite (and every passing test made a danga.Selector:
        # the runner fails one that did not).
        assert r["passed"] > 0, table


@pytest.mark.timeout(120)
def test_danga_check_peer_prints_the_table(capsys):
    # `danga check --backend NAME --peer` after the conformance run: one quick test
    # (selected with -k) of each suite on the best backend here.
    if peer.missing_test_package() is not None:
        pytest.skip(peer.missing_test_package())
    name = danga.backends.best().name
    assert peer.run_peer_check(name, keyword="test_register") == 0
    out = capsys.readouterr().out
    assert "peer suite" in out and "selectors" in out
    assert f"danga check: {name}: peer suites PASSED" in out


def test_a_failing_peer_test_fails_the_check(capsys, tmp_path, monkeypatch):
    # A poller that loses write readiness: CPython's test_select must catch it.
    if peer.missing_test_package() is not None:
        pytest.skip(peer.missing_test_package())
    (tmp_path / "capped_poller.py").write_text(
        "from danga.backends.select import SelectPoller\n"
        "class Capped(SelectPoller):\n"
        "    name = 'capped'\n"
        "    def poll(self, timeout):\n"
        "        return [(fd, m & ~4) for fd, m in super().poll(timeout) if m & ~4]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    result = peer.run_suite("capped_poller:Capped", "selectors", keyword="test_select",
                            timeout=100)
    assert result["ran"] > 0 and peer.problems_of([result]), result
    assert "SelectorTests.test_select\n" in peer.format_problems(result)


def test_unknown_suite():
    with pytest.raises(ValueError, match="unknown peer suite 'nope'"):
        peer.run_suite("select", "nope")
    with pytest.raises(ValueError, match="unknown peer suite 'nope'"):
        peer.run_suites("select", ["selectors", "nope"])
