"""The one way a command module joins the CLI: :func:`add_verb` (its parser, its function,
whether it takes ``key=value`` overrides), and the flags several verbs share."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def add_verb(subparsers, name: str, func: Callable, help: str, doc: str) -> argparse.ArgumentParser:
    """A subcommand ``name`` whose ``--help`` shows ``doc`` as written; ``func(args)`` runs it
    and returns the exit status."""
    p = subparsers.add_parser(
        name, help=help, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.set_defaults(func=func, takes_overrides=False)
    return p


def add_overrides(p: argparse.ArgumentParser, example: str = "section.key=value") -> None:
    """Trailing ``key=value`` overrides (also accepted after options)."""
    p.add_argument("overrides", nargs="*", help=f"config overrides {example}")
    p.set_defaults(takes_overrides=True)


def add_fresh(p: argparse.ArgumentParser, what: str) -> None:
    """``--fresh``: move an existing output directory aside (never delete it)."""
    p.add_argument("--fresh", action="store_true", help=f"move an existing {what} aside first")


def add_quiet(p: argparse.ArgumentParser) -> None:
    """``--quiet``: no progress bars or messages."""
    p.add_argument("--quiet", action="store_true", help="no progress bars or messages")


def printer(quiet: bool) -> Callable[..., None]:
    """``print``, or nothing with ``--quiet``."""
    return (lambda *_: None) if quiet else print
