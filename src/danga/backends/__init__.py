"""The backend registry: discovery through entry points, capability probing, and choice.

Backends, built-in and third-party alike, are declared in the entry-point group
``danga.backends`` as ``name = "module:Class"``. The scan of installed distributions
(``importlib.metadata``) happens once, lazily, when an automatic choice or a listing
needs it, never at ``import danga`` and never when a built-in backend is named
explicitly. :func:`refresh` forgets the scan and the probe results.

Choosing (:func:`choose`, used by :class:`danga.Loop`):

1. an explicit choice (``Loop(backend="poll")``, a Poller class, or a comma-separated
   preference list), else
2. the ``DANGA_BACKEND`` environment variable (same syntax), else
3. the available backend with the highest priority (ties broken by name).

An explicit choice never falls back to a backend that was not named: if none of the
named backends works here, :class:`BackendUnavailable` says why for each of them.
"""

from __future__ import annotations

import importlib
import os
import warnings
from typing import TYPE_CHECKING, Any, NamedTuple

from ..poller import (
    API_VERSION,
    SUPPORTED_API_VERSIONS,
    BackendUnavailable,
    UnknownBackend,
    capabilities,
)

if TYPE_CHECKING:
    from ..poller import Poller

    PollerClass = type[Poller]

__all__ = [
    "ENTRY_POINT_GROUP",
    "BackendInfo",
    "PluginWarning",
    "available",
    "best",
    "choose",
    "describe",
    "get",
    "names",
    "parse_spec",
    "refresh",
]

ENTRY_POINT_GROUP = "danga.backends"
ENV_VAR = "DANGA_BACKEND"
_OWN_DIST = "danga"

# The built-ins, so that naming one needs no scan (and works from a source checkout).
_BUILTIN: dict[str, str] = {
    "epoll": "danga.backends.epoll:EpollPoller",
    "kqueue": "danga.backends.kqueue:KqueuePoller",
    "poll": "danga.backends.poll:PollPoller",
    "select": "danga.backends.select:SelectPoller",
}

_REQUIRED = ("name", "priority", "probe", "modify", "poll", "close")


class PluginWarning(RuntimeWarning):
    """A backend plugin could not be loaded or was declared twice; the others still work."""


class BackendInfo(NamedTuple):
    """One row of :func:`describe`."""

    name: str
    priority: int | None
    distribution: str
    available: bool
    reason: str | None
    target: str


class _Entry:
    __slots__ = ("cls", "dist", "error", "name", "probed", "target")

    def __init__(self, name: str, target: str, dist: str) -> None:
        self.name = name
        self.target = target
        self.dist = dist
        self.cls: Any = None
        self.error: str | None = None  # why it cannot be loaded or used
        self.probed = False


_entries: dict[str, _Entry] | None = None  # the scan, once
_builtin_entries: dict[str, _Entry] = {}  # built-ins loaded without a scan


def refresh() -> None:
    """Forget the entry-point scan and every probe result; the next query redoes them."""
    global _entries
    _entries = None
    _builtin_entries.clear()


def _scan() -> dict[str, _Entry]:
    global _entries
    if _entries is not None:
        return _entries
    from importlib import metadata  # lazy: keeps `import danga` fast

    found: dict[str, list[_Entry]] = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(getattr(ep, "dist", None), "name", None) or "?"
        found.setdefault(ep.name, []).append(_Entry(ep.name, ep.value, dist))
    entries: dict[str, _Entry] = {}
    for name, claims in found.items():
        unique = {(e.dist, e.target): e for e in claims}  # the same dist seen twice on sys.path
        claims = sorted(unique.values(), key=lambda e: (e.dist != _OWN_DIST, e.dist, e.target))
        if len(claims) > 1:
            warnings.warn(
                f"danga backend {name!r} is declared by several distributions "
                f"({', '.join(e.dist for e in claims)}); using the one from {claims[0].dist!r}",
                PluginWarning,
                stacklevel=3,
            )
        entries[name] = claims[0]
    for name, target in _BUILTIN.items():  # a source checkout has no metadata
        entries.setdefault(name, _Entry(name, target, _OWN_DIST))
    _entries = dict(sorted(entries.items()))
    return _entries


def _entry(name: str) -> _Entry:
    if _entries is None and name in _BUILTIN:
        entry = _builtin_entries.get(name)
        if entry is None:
            entry = _builtin_entries[name] = _Entry(name, _BUILTIN[name], _OWN_DIST)
        return entry
    entries = _scan()
    try:
        return entries[name]
    except KeyError:
        raise UnknownBackend(name, list(entries)) from None


def _load(entry: _Entry) -> Any:
    """Import the entry's class; records (and warns about) a failure."""
    if entry.cls is not None or entry.error is not None:
        return entry.cls
    try:
        module_name, _, attr = entry.target.partition(":")
        obj: Any = importlib.import_module(module_name)
        for part in attr.split(".") if attr else ():
            obj = getattr(obj, part)
    except Exception as exc:
        entry.error = f"failed to import {entry.target}: {type(exc).__name__}: {exc}"
        _warn_plugin(entry)
        return None
    missing = [a for a in _REQUIRED if not hasattr(obj, a)]
    version = getattr(obj, "api_version", None)
    if missing:
        entry.error = f"{entry.target} is not a Poller: it lacks {', '.join(missing)}"
    elif version not in SUPPORTED_API_VERSIONS:
        supported = " or ".join(map(str, SUPPORTED_API_VERSIONS))
        entry.error = (
            f"{entry.target} implements Poller API version {version!r}, but this danga "
            f"loads version {supported} (current: {API_VERSION}); upgrade the plugin"
        )
    else:
        try:
            capabilities(obj)
        except TypeError as exc:
            entry.error = f"{entry.target} declares bad capabilities: {exc}"
    if entry.error is not None:
        _warn_plugin(entry)
        return None
    entry.cls = obj
    return obj


def _warn_plugin(entry: _Entry) -> None:
    if entry.dist != _OWN_DIST:
        warnings.warn(
            f"danga backend plugin {entry.name!r} (from {entry.dist}) is unusable: "
            f"{entry.error}",
            PluginWarning,
            stacklevel=4,
        )


def _probe(entry: _Entry) -> str | None:
    """Why the entry's backend cannot be used here, or None if it can. Cached."""
    cls = _load(entry)
    if cls is None:
        return entry.error
    if not entry.probed:
        entry.probed = True
        try:
            cls.probe()
        except BackendUnavailable as exc:
            entry.error = exc.reason
        except Exception as exc:  # a plugin's probe must not break the others
            entry.error = f"probe() raised {type(exc).__name__}: {exc}"
            _warn_plugin(entry)
    return entry.error


def names() -> list[str]:
    """Every declared backend name (usable here or not), sorted."""
    return list(_scan())


def get(name: str) -> PollerClass:
    """The Poller class called *name* (without probing it).

    Raises:
        UnknownBackend: no backend has this name.
        BackendUnavailable: its module cannot be imported or it is not a valid Poller.
    """
    entry = _entry(name)
    cls = _load(entry)
    if cls is None:
        raise BackendUnavailable(name, entry.error or "cannot be loaded")
    return cls  # type: ignore[no-any-return]


def _ranked() -> list[tuple[str, Any]]:
    usable = []
    for entry in _scan().values():
        if _probe(entry) is None:
            usable.append((entry.name, entry.cls))
    usable.sort(key=lambda item: (-int(item[1].priority), item[0]))
    return usable


def available() -> list[str]:
    """The names of the backends that work here, best (highest priority) first."""
    return [name for name, _ in _ranked()]


def best() -> PollerClass:
    """The class of the backend an automatic choice takes.

    Raises:
        BackendUnavailable: if no backend works here.
    """
    ranked = _ranked()
    if not ranked:
        reasons = "; ".join(f"{e.name}: {e.error}" for e in _scan().values())
        raise BackendUnavailable("any", f"no backend works here ({reasons})")
    return ranked[0][1]  # type: ignore[no-any-return]


def describe() -> list[BackendInfo]:
    """For every declared backend: name, priority, distribution, availability, reason.

    Sorted best first: available ones by priority, then the unavailable ones by name.
    """
    rows = []
    for entry in _scan().values():
        reason = _probe(entry)
        priority = getattr(entry.cls, "priority", None) if entry.cls is not None else None
        rows.append(
            BackendInfo(entry.name, priority, entry.dist, reason is None, reason, entry.target)
        )
    rows.sort(key=lambda r: (not r.available, -(r.priority or 0), r.name))
    return rows


def parse_spec(spec: str) -> list[str]:
    """Split a preference list such as ``"kqueue,poll"``.

    Raises:
        ValueError: if it names nothing.
    """
    wanted = [part.strip() for part in spec.split(",") if part.strip()]
    if not wanted:
        raise ValueError(
            f"{ENV_VAR}={spec!r} names no backend; use e.g. {ENV_VAR}=poll or "
            f"{ENV_VAR}=kqueue,poll (see `danga backends`)"
        )
    return wanted


def choose(spec: str | type[Any] | None = None) -> PollerClass:
    """The Poller class a Loop built with ``backend=spec`` uses (see the module doc).

    Raises:
        UnknownBackend: a named backend does not exist.
        BackendUnavailable: no named backend works here (with every candidate's reason),
            or, for an automatic choice, no backend works at all.
        ValueError: an empty preference list.
        TypeError: *spec* is neither a name, a class nor None.
    """
    if spec is None:
        env = os.environ.get(ENV_VAR, "").strip()
        if not env:
            return best()
        spec = env
    if isinstance(spec, type):
        return spec
    if not isinstance(spec, str):
        raise TypeError(
            f"backend must be a backend name, a Poller class or None, not {type(spec).__name__}"
        )
    wanted = parse_spec(spec)
    entries = [_entry(name) for name in wanted]  # UnknownBackend before any probing
    reasons = []
    for entry in entries:
        reason = _probe(entry)
        if reason is None:
            return entry.cls  # type: ignore[no-any-return]
        reasons.append(f"{entry.name}: {reason}")
    raise BackendUnavailable(",".join(wanted), "; ".join(reasons))
