"""The ``medgen-train`` command line.

Exit status: 0 done; 2 bad input, config, data, checkpoint or run directory (one line on
stderr naming the file or key, nothing of value written; a dataset folder that disagrees
with its dataset.json: a summary line, then one line per problem), also when the NaN guard stops a
run; 75 stopped by SIGTERM / SIGUSR1 after writing a checkpoint (requeue me); 130 stopped by
Ctrl-C after writing a checkpoint.
"""

from __future__ import annotations

import argparse
import sys

from medgen.data import DataError, DatasetError
from medgen.train.commands import COMMANDS
from medgen.train.engine.preemption import Preempted
from medgen.train.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, MedGenError


def build_parser() -> argparse.ArgumentParser:
    """The parser with every command registered."""
    parser = argparse.ArgumentParser(
        prog="medgen-train",
        description="MedGen: train, sample and evaluate generative models of medical images.",
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return parser


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest:  # overrides given after an option (fit CONFIG --out DIR a.b=1)
        takes = getattr(args, "takes_overrides", False)
        if not takes or not all("=" in r and not r.startswith("-") for r in rest):
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        args.overrides = [*args.overrides, *rest]
    try:
        return args.func(args)
    except Preempted as exc:
        print(f"medgen-train: {exc}", file=sys.stderr)
        return exc.exit_code
    except DatasetError as exc:  # every problem of a dataset folder: a summary, one per line
        print(f"medgen-train: error: {exc.summary}", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {_one_line(problem)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (MedGenError, DataError) as exc:
        print(f"medgen-train: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:  # disk full, read-only, not a directory: say which path
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"medgen-train: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:  # a second Ctrl-C: abort without a checkpoint
        print(
            "medgen-train: interrupted; the last checkpoint on disk is unchanged", file=sys.stderr
        )
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
