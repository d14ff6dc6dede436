"""CPython's own test cases, bound to a danga backend through :class:`danga.Selector`.

Each suite of :data:`SUITES` is a list of ``unittest.TestCase`` classes built from the
mixins of the interpreter's ``test`` package, with the event loop (or the selector) made
on the backend under test. The classes are chosen by what the backend declares, never by
its name:

- ``selectors``: ``test.test_selectors.BaseSelectorTestCase``, plus
  ``ScalableSelectorMixIn`` unless the backend declares a ``max_fd``; the cases CPython
  keeps for one selector run on every backend, because ``danga.Selector`` validates fds
  the same way everywhere (a regular file is refused: epoll's ``test_register_file``; a
  closed fd raises EBADF and a timeout holds with no fd: kqueue's ``test_register_bad_fd``
  and ``test_empty_select_timeout``). ``test_modify_unregister`` mocks private classes of
  the standard selectors; it is replaced by the same check over an injected Poller whose
  ``modify`` raises.
- ``events``: ``test_events.UnixEventLoopTestsMixin`` and ``SubprocessTestsMixin``.
- ``sock_lowlevel``: ``test_sock_lowlevel.BaseSockTestsMixin``.
- ``sendfile``: ``test_sendfile.SendfileTestsBase``.
- ``ssl``: ``test_ssl.TestSSL`` (CPython 3.11 and later).
- ``sslproto``: ``test_sslproto.SslProtoHandshakeTests`` and ``SelectorStartTLSTests``.

The SSL tests build their loops with ``asyncio.new_event_loop()``: the runner
(:mod:`danga.testing.peer`) installs an event loop policy that makes them on the backend.
"""

from __future__ import annotations

import asyncio
import importlib
import selectors
import sys
import unittest
from collections.abc import Callable
from typing import Any, Protocol

from ..poller import Poller
from ..selector import Selector

__all__ = ["SUITES", "SuiteUnavailable", "build", "missing_test_package"]

#: The suites, in the order they are run and reported.
SUITES = ("selectors", "events", "sock_lowlevel", "sendfile", "ssl", "sslproto")



class MakeSelector(Protocol):
    """Makes a selector on the backend under test; with *poller*, over that instance."""

    def __call__(self, poller: Any = None) -> Selector: ...


class SuiteUnavailable(Exception):
    """This interpreter cannot run the suite (the reason is the message)."""


def missing_test_package() -> str | None:
    """Why CPython's test suites cannot run here, or None if they can."""
    try:
        importlib.import_module("test.support")
        importlib.import_module("test.test_selectors")
    except ImportError as exc:
        return (
            f"this Python ({sys.executable}) has no CPython test package ({exc}); "
            "python.org and pyenv builds include it, Debian's system Python needs "
            f"libpython3.{sys.version_info[1]}-testsuite"
        )
    return None


def build(suite: str, poller_cls: type[Poller], make: MakeSelector) -> list[type[Any]]:
    """The TestCase classes of *suite*, each making its selectors or loops with *make*.

    Raises:
        ValueError: *suite* is not one of :data:`SUITES`.
        SuiteUnavailable: this interpreter lacks the suite (the message says why).
    """
    builders: dict[str, Callable[[type[Poller], MakeSelector], list[type[Any]]]] = {
        "selectors": _selectors,
        "events": _events,
        "sock_lowlevel": _sock_lowlevel,
        "sendfile": _sendfile,
        "ssl": _ssl,
        "sslproto": _sslproto,
    }
    if suite not in builders:
        raise ValueError(f"unknown peer suite {suite!r}; the suites are {', '.join(SUITES)}")
    reason = missing_test_package()
    if reason is not None:
        raise SuiteUnavailable(reason)
    return builders[suite](poller_cls, make)


def _module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise SuiteUnavailable(f"Python {sys.version.split()[0]} has no {name} ({exc})") from None
    except unittest.SkipTest as exc:
        raise SuiteUnavailable(f"{name} skips itself here: {exc}") from None


def _case(name: str, bases: tuple[type[Any], ...], namespace: dict[str, Any]) -> type[Any]:
    namespace.setdefault("__module__", __name__)
    namespace.setdefault("__qualname__", name)
    return type(name, bases, namespace)


# -- selectors -----------------------------------------------------------------------------


class _ModifyFails:
    """A Poller proxy whose modify() raises on a change of interest (old and new both
    set), as a kernel refusal would; every other call reaches the real Poller."""

    def __init__(self, poller: Poller) -> None:
        self.poller = poller
        self.name = poller.name

    def modify(self, fd: int, old: int, new: int) -> None:
        if old and new:
            raise ZeroDivisionError("injected modify failure")
        self.poller.modify(fd, old, new)

    def poll(self, timeout: float | None) -> list[tuple[int, int]]:
        return self.poller.poll(timeout)

    def close(self) -> None:
        self.poller.close()


def _make_modify_unregister(poller_cls: type[Poller], make: MakeSelector
                            ) -> Callable[[Any], None]:
    def test_modify_unregister(self: Any) -> None:
        # bpo-30014: an error in modify() unregisters the fd. CPython's version mocks the
        # private classes of the standard selectors; this one injects a failing Poller.
        inner = poller_cls()
        s = make(_ModifyFails(inner))
        self.addCleanup(s.close)
        rd, wr = self.make_socketpair()
        keys = s.get_map()
        s.register(rd, selectors.EVENT_READ)
        self.assertEqual(len(keys or ()), 1)
        with self.assertRaises(ZeroDivisionError):
            s.modify(rd, selectors.EVENT_WRITE)
        self.assertEqual(len(keys or ()), 0)
        # The kernel forgot it too: readable data is reported by nobody.
        wr.send(b"x")
        self.assertEqual(s.select(0), [])
        self.assertEqual(inner.poll(0), [])

    return test_modify_unregister


def _selectors(poller_cls: type[Poller], make: MakeSelector) -> list[type[Any]]:
    ts = _module("test.test_selectors")
    bases: tuple[type[Any], ...] = (ts.BaseSelectorTestCase,)
    namespace: dict[str, Any] = {
        "SELECTOR": staticmethod(make),
        # danga refuses a regular file and a closed fd at registration on every backend,
        # and every backend waits out a timeout with no fd: these cases apply to all.
        "test_register_file": ts.EpollSelectorTestCase.__dict__["test_register_file"],
        "test_register_bad_fd": ts.KqueueSelectorTestCase.__dict__["test_register_bad_fd"],
        "test_empty_select_timeout":
            ts.KqueueSelectorTestCase.__dict__["test_empty_select_timeout"],
        "test_modify_unregister": _make_modify_unregister(poller_cls, make),
    }
    max_fd = getattr(poller_cls, "max_fd", None)
    if max_fd is None:
        bases += (ts.ScalableSelectorMixIn,)
    else:
        namespace["test_above_fd_setsize"] = unittest.skip(
            f"the backend declares max_fd={max_fd}: it refuses fds above it"
        )(lambda self: None)
    return [_case("SelectorTests", (*bases, unittest.TestCase), namespace)]


# -- asyncio -------------------------------------------------------------------------------


def _loop_maker(make: MakeSelector) -> Callable[[Any], asyncio.AbstractEventLoop]:
    def create_event_loop(self: Any) -> asyncio.AbstractEventLoop:
        return asyncio.SelectorEventLoop(make())

    return create_event_loop


def _events(poller_cls: type[Poller], make: MakeSelector) -> list[type[Any]]:
    te = _module("test.test_asyncio.test_events")
    utils = _module("test.test_asyncio.utils")
    if not hasattr(te, "UnixEventLoopTestsMixin"):
        raise SuiteUnavailable("test_events has no UnixEventLoopTestsMixin on this platform")
    bases = (te.UnixEventLoopTestsMixin, te.SubprocessTestsMixin, utils.TestCase)
    return [_case("EventLoopTests", bases, {"create_event_loop": _loop_maker(make)})]


def _sock_lowlevel(poller_cls: type[Poller], make: MakeSelector) -> list[type[Any]]:
    m = _module("test.test_asyncio.test_sock_lowlevel")
    utils = _module("test.test_asyncio.utils")
    bases = (m.BaseSockTestsMixin, utils.TestCase)
    return [_case("SockTests", bases, {"create_event_loop": _loop_maker(make)})]


def _sendfile(poller_cls: type[Poller], make: MakeSelector) -> list[type[Any]]:
    m = _module("test.test_asyncio.test_sendfile")
    utils = _module("test.test_asyncio.utils")
    bases = (m.SendfileTestsBase, utils.TestCase)
    return [_case("SendfileTests", bases, {"create_event_loop": _loop_maker(make)})]


def _ssl(poller_cls: type[Poller], make: MakeSelector) -> list[type[Any]]:
    m = _module("test.test_asyncio.test_ssl")
    # setUp takes its loop from the policy; new_loop() makes the extra ones.
    return [_case("SSLTests", (m.TestSSL,), {"new_loop": _loop_maker(make)})]


def _sslproto(poller_cls: type[Poller], make: MakeSelector) -> list[type[Any]]:
    m = _module("test.test_asyncio.test_sslproto")
    return [
        _case("SslProtoHandshakeTests", (m.SslProtoHandshakeTests,), {}),
        _case("StartTLSTests", (m.SelectorStartTLSTests,), {"new_loop": _loop_maker(make)}),
    ]
