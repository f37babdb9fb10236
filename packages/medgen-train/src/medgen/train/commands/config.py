"""``medgen-train config [NAME|PATH] [key=value ...]``: print a resolved config.

With a bundled name or a file, prints the config after the overrides, with every default
filled in and every value checked, exactly as ``fit`` would use it; ``--list`` names the
bundled run configs, cache recipes, downstream configs and sweeps.
"""

from __future__ import annotations

import argparse

from medgen.train.commands.verb import add_overrides, add_verb
from medgen.train.config.fit import bundled_names, load_fit_config
from medgen.train.config.schema import to_yaml
from medgen.train.evaluation.downstream_config import BUNDLED as DOWNSTREAM
from medgen.train.sweeps.spec import BUNDLED as SWEEPS
from medgen.train.tasks.data import RECIPES


def _names(folder) -> str:
    return ", ".join(sorted(p.stem for p in folder.glob("*.yaml")))


def _command(args: argparse.Namespace) -> int:
    if args.list or args.config is None:
        print("run configs:        " + ", ".join(bundled_names()))
        print("cache recipes:      " + _names(RECIPES))
        print("downstream configs: " + _names(DOWNSTREAM))
        print("sweeps:             " + _names(SWEEPS))
        return 0
    print(to_yaml(load_fit_config(args.config, args.overrides)), end="")
    return 0


def register(subparsers) -> None:
    """Add ``config`` to the CLI."""
    help_ = "print a run config resolved with its defaults and overrides; --list the bundled"
    p = add_verb(subparsers, "config", _command, help_, __doc__)
    p.add_argument("config", nargs="?", help="YAML run config, or a bundled config name")
    add_overrides(p)
    p.add_argument("--list", action="store_true", help="list the bundled configs and recipes")
