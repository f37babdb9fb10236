"""The ``medgen-train`` verbs, one module each; every module has ``register(subparsers)``.

General commands come first; ``quickstart`` composes them and sits on top.
"""

from medgen.train.commands import (
    cache,
    config,
    convert,
    demo_data,
    downstream,
    encode,
    evaluate,
    fit,
    inspect,
    plan,
    quickstart,
    report,
    sample,
    sweep,
)

COMMANDS = (
    inspect, convert, demo_data, plan, cache, encode, config, fit, sample, evaluate, downstream,
    sweep, report, quickstart,
)  # fmt: skip

__all__ = ["COMMANDS"]
