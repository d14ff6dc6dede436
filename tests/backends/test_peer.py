"""The peer suite (danga.testing.peer): CPython's own selectors and asyncio tests run
through danga.Selector, on every backend of the matrix (the available built-ins,
installed plugins and the kqueue emulation).

One test per backend runs every suite, each in a child process of its own, side by side:
the suites mostly wait (timeouts, signals, handshakes, subprocesses), so together they
take about as long as the longest one."""

import pytest

from danga.testing import peer


@pytest.mark.timeout(600)
def test_cpython_suites(danga_backend, poller_cls, record_property):
    missing = peer.missing_test_package()
    if missing is not None:
        pytest.skip(missing)
    results = peer.run_suites(poller_cls, timeout=540)
    table = peer.format_table(results)
    print(f"{danga_backend}:\n{table}")
    record_property("peer", table)
    failed = peer.problems_of(results)
    assert not failed, "\n\n".join(peer.format_problems(r) for r in failed)
    ran = [r for r in results if not r.get("unavailable")]
    assert ran, table
    for r in ran:
        # Every test that ran passed or was skipped with a reason, and something passed.
        assert r["passed"] > 0, table
        assert r["ran"] == r["passed"] + sum(r["skipped"].values()) + r["expected_failures"]
