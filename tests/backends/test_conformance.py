"""The shipped conformance suite (danga.testing.suite), run on every backend of the
matrix: the available built-ins, installed plugins and the kqueue emulation."""

from danga.testing.suite import *  # noqa: F403  (the test classes and their fixtures)
