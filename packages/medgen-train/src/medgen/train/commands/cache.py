"""``medgen-train cache RECIPE [key=value ...]``: scans (+ masks) -> a sharded cache.

RECIPE is a YAML file of :class:`medgen.data.CacheRecipe` keys (or a bundled recipe name,
e.g. ``mni152``); sources are NIfTI files, DICOM directories or ZIPs, globs, or a CSV table
(subject, image, mask, class, split, modality). Each subject becomes one resumable shard,
keyed by the content of its files and the recipe, so a rerun after a crash or with one more
scan only builds what is missing. The split is subject-level. The manifest stores the recipe
and content hashes, never paths or subject names. ``--verify`` re-hashes every shard.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from medgen.data import CacheRecipe, DataError, build_cache, verify_cache
from medgen.train.commands.verb import add_overrides, add_quiet, add_verb
from medgen.train.config.schema import load_config
from medgen.train.errors import ConfigError
from medgen.train.tasks.data import find_recipe


def _command(args: argparse.Namespace) -> int:
    recipe = load_config(CacheRecipe, find_recipe(args.config, "RECIPE"), list(args.overrides))
    if not recipe.out:
        raise ConfigError("out: the cache directory is required (out=DIR)")
    if args.verify:
        damaged = verify_cache(recipe.out)
        if damaged:
            raise DataError(f"{recipe.out}: damaged shards: {', '.join(damaged)}")
        print(f"cache {recipe.out}: every shard matches its manifest hash")
        return 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = build_cache(recipe, quiet=args.quiet)
    for w in caught:
        print(f"medgen-train: warning: {' '.join(str(w.message).split())}", file=sys.stderr)
    print(report.summary())
    return 0


def register(subparsers) -> None:
    """Add ``cache`` to the CLI."""
    help_ = "build a sharded slice / volume / pair cache from a recipe"
    p = add_verb(subparsers, "cache", _command, help_, __doc__)
    p.add_argument("config", help="recipe YAML (CacheRecipe keys), or a bundled recipe name")
    add_overrides(p, "key=value (e.g. size=128)")
    p.add_argument("--verify", action="store_true", help="only recheck the shard hashes")
    add_quiet(p)
