"""The ``medgen-train`` command line."""

from __future__ import annotations

import argparse
import sys

from medgen.data.errors import DataError
from medgen.train.errors import MedGenError


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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (MedGenError, DataError) as exc:
        print(f"medgen-train: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
