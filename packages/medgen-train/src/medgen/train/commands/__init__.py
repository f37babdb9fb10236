"""The ``medgen-train`` verbs, one module each; every module has ``register(subparsers)``.

General commands come first; ``quickstart`` composes them and sits on top.
"""

from medgen.train.commands import (
    cache,
    config,
    convert,
    demo_data,
    evaluate,
    fit,
    inspect,
    plan,
    quickstart,
    report,
    sample,
)

COMMANDS = (
    inspect, convert, demo_data, plan, cache, config, fit, sample, evaluate, report, quickstart,
)  # fmt: skip

__all__ = ["COMMANDS"]
