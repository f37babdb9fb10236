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
    quickstart,
    report,
    sample,
)

COMMANDS = (inspect, convert, demo_data, cache, config, fit, sample, evaluate, report, quickstart)

__all__ = ["COMMANDS"]
