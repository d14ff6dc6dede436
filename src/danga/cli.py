"""The ``danga`` command.

- ``danga backends``: every declared backend, its priority, where it came from, whether
  it works here (or why not), and which one an automatic choice takes (the HaveEpoll
  question, answered for every backend). ``DANGA_BACKEND`` is honoured. Its last line
  says which core runs (``danga.CORE``: compiled or pure).
- ``danga demo``: an echo server and client on 127.0.0.1 over the chosen backend.

Bad input (an unknown or unusable ``DANGA_BACKEND``) prints one line and exits 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from . import backends
from ._core import PURE_ENV
from ._core import active as active_core
from .poller import BackendError

__all__ = ["main"]

Command = Callable[[argparse.Namespace], int]
_COMMANDS: dict[str, tuple[str, Command, Callable[[argparse.ArgumentParser], None]]] = {}


def command(name: str, help_text: str,
            configure: Callable[[argparse.ArgumentParser], None] = lambda p: None
            ) -> Callable[[Command], Command]:
    """Register a subcommand (other modules add theirs, e.g. ``check`` and ``bench``)."""

    def register(fn: Command) -> Command:
        _COMMANDS[name] = (help_text, fn, configure)
        return fn

    return register


def _core_line() -> str:
    core = active_core()
    how = {"compiled": f"Cython extension modules; {PURE_ENV}=1 forces the pure core",
           "pure": "the .py sources" + (f", forced by {PURE_ENV}" if os.environ.get(
               PURE_ENV, "").strip() not in ("", "0") else ""),
           "mixed": f"a partial build: rebuild it, or set {PURE_ENV}=1"}[core]
    return f"core: {core} ({how})"


def _fail(message: str) -> int:
    print(f"danga: {message}", file=sys.stderr)
    return 2


@command("backends", "list the backends, whether each works here, and which is chosen")
def _backends(args: argparse.Namespace) -> int:
    rows = backends.describe()
    chosen = backends.choose(None).name  # honours DANGA_BACKEND; errors reach main()
    width = max([len(r.name) for r in rows] + [7])
    dist_width = max([len(r.distribution) for r in rows] + [12])
    print(f"  {'backend':<{width}}  priority  {'distribution':<{dist_width}}  status")
    for row in rows:
        mark = "*" if row.name == chosen else " "
        prio = "-" if row.priority is None else str(row.priority)
        status = "available" if row.available else f"unavailable: {row.reason}"
        if row.name == chosen:
            status += "  <- chosen"
        print(f"{mark} {row.name:<{width}}  {prio:>8}  {row.distribution:<{dist_width}}  {status}")
    how = "DANGA_BACKEND" if os.environ.get(backends.ENV_VAR, "").strip() else "automatic"
    print(f"\nchosen ({how}): {chosen}")
    print(_core_line())
    return 0


def _demo_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", help="backend name (default: DANGA_BACKEND or automatic)")
    parser.add_argument("--messages", type=int, default=1000, help="round trips (default 1000)")


@command("demo", "echo messages over 127.0.0.1 and report the round-trip rate", _demo_options)
def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args.backend, args.messages)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``danga`` command. Returns the exit status."""
    _load_extra_commands(sys.argv[1:] if argv is None else list(argv))
    parser = argparse.ArgumentParser(prog="danga", description="danga event loop tools")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, _, configure) in _COMMANDS.items():
        configure(sub.add_parser(name, help=help_text, description=help_text))
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return _COMMANDS[args.command][1](args)
    except (BackendError, ValueError) as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return 130


# Subcommands that live in their own modules and register themselves on import. They
# are imported only when asked for (or for the help), so `danga backends` never pays
# for pytest, which `danga.testing` imports.
_LAZY_COMMANDS = {"check": "danga.testing.check", "bench": "danga.bench"}


def _load_extra_commands(argv: list[str]) -> None:
    import importlib

    first = next((a for a in argv if not a.startswith("-")), None)
    wanted = [first] if first in _LAZY_COMMANDS else [] if first in _COMMANDS else list(
        _LAZY_COMMANDS)
    for name in wanted:
        module = _LAZY_COMMANDS[name]
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name not in (module, "pytest"):  # absent optional parts only
                raise
