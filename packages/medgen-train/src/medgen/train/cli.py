"""The ``medgen-train`` command line."""

from __future__ import annotations

import argparse
import os
import sys

from medgen.data.errors import DataError
from medgen.train import cache_command, data_commands
from medgen.train.errors import MedGenError
from medgen.train.preemption import REQUEUE_EXIT_CODE, Preempted


def _quickstart(args: argparse.Namespace) -> int:
    from medgen.train.config import apply_overrides
    from medgen.train.quickstart import QuickstartConfig, run_quickstart

    cfg = QuickstartConfig()
    overrides = list(args.overrides)
    for flag, key in (
        ("size", "size"),
        ("steps", "train_steps"),
        ("seed", "seed"),
        ("device", "device"),
        ("batch_size", "batch_size"),
    ):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={value}")
    cfg = apply_overrides(cfg, overrides)
    run_quickstart(cfg, args.out, quiet=args.quiet)
    return 0


def _fit(args: argparse.Namespace) -> int:
    from medgen.train.fit_command import read_fit_config, run_fit

    cfg = read_fit_config(args.config, args.overrides)
    result = run_fit(cfg, args.out, quiet=args.quiet)
    if not args.quiet and os.environ.get("RANK", "0") == "0":
        last = result.rows[-1] if result.rows else {}
        print(
            f"fit: step {result.step} (resumed from {result.resumed_from}), "
            f"loss {last.get('loss', float('nan')):.4f}, {result.skipped_updates} skipped "
            f"updates; checkpoint {result.checkpoint}",
            flush=True,
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medgen-train", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    q = sub.add_parser(
        "quickstart",
        help="train and sample a joint image+mask DDPM on MNI152 slices (~10 CPU-minutes)",
        description="Train a token-conditioned joint image + white-matter-mask DDPM on the "
        "MNI152 template that ships with nilearn, sample every z-bin with DDIM, and write "
        "metrics, figures and a report to --out. Any config key can be overridden as "
        "key=value (e.g. lr=2e-3 channels=64,128,128).",
    )
    q.add_argument("--out", default="runs/quickstart", help="run directory (default: %(default)s)")
    q.add_argument("--size", type=int, help="slice size in pixels (default 32)")
    q.add_argument("--steps", type=int, help="training steps")
    q.add_argument("--batch-size", type=int, dest="batch_size")
    q.add_argument("--seed", type=int)
    q.add_argument("--device", help="auto, cpu, cuda, cuda:1, ...")
    q.add_argument("--quiet", action="store_true", help="no progress bars or messages")
    q.add_argument("overrides", nargs="*", help="config overrides key=value")
    q.set_defaults(func=_quickstart)

    f = sub.add_parser(
        "fit",
        help="train from a YAML config through the engine (resumes its run directory)",
        description="Train as CONFIG says (sections run, data, model, diffusion, training; "
        "see configs/jsddpm_quickstart.yaml). Override any key as section.key=value, e.g. "
        "training.lr=1e-4. A run directory that holds checkpoints/latest is resumed. On "
        "SIGTERM or SIGUSR1 the current step finishes, a checkpoint is written and the "
        f"exit status is {REQUEUE_EXIT_CODE} (requeue me). Under torchrun, every rank "
        "trains on its shard and rank 0 writes.",
    )
    f.add_argument("config", help="YAML config file")
    f.add_argument("overrides", nargs="*", help="overrides section.key=value")
    f.add_argument("--out", help="run directory (default: run.dir of the config)")
    f.add_argument("--quiet", action="store_true", help="no progress bars or messages")
    f.set_defaults(func=_fit)
    data_commands.register(sub)  # inspect, convert
    cache_command.register(sub)  # cache
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest:  # overrides given after an option (fit CONFIG --out DIR a.b=1)
        takes = getattr(args, "overrides", None) is not None
        if not takes or not all("=" in r and not r.startswith("-") for r in rest):
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        args.overrides = [*args.overrides, *rest]
    try:
        return args.func(args)
    except Preempted as exc:
        print(f"medgen-train: {exc}", file=sys.stderr)
        return exc.exit_code
    except (MedGenError, DataError) as exc:
        print(f"medgen-train: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
