"""``medgen-train encode RUN_DIR --cache CACHE --out LATENTS``: a pixel cache -> a latent cache.

RUN_DIR is a ``task.kind: autoencoder`` fit run; its checkpoint ``--checkpoint`` (best by
default) encodes every item of every split of CACHE (the channels it was trained on) into the
latent cache LATENTS: the same sharded format, one shard per pixel shard (written to a
temporary name, renamed, re-hashed), everything but the images carried over (masks at full
resolution, z-bins, classes, tokens, split), and a manifest written last that records the
autoencoder (run, checkpoint step, weights sha256), the latent shape and channels, and the
scale factor: 1 / std of the TRAINING split's stored latents. An interrupted encode resumes
with the missing shards; a damaged shard is encoded again. Train on it with
``medgen-train fit CONFIG data.cache=LATENTS task.space.kind=latent
task.space.autoencoder=RUN_DIR task.clip_x0=null``.
"""

from __future__ import annotations

import argparse
import sys
import warnings

import torch

from medgen.train.commands.verb import add_quiet, add_verb, printer
from medgen.train.errors import ConfigError
from medgen.train.latents.autoencoder import AutoencoderRun
from medgen.train.latents.cache import EncodeReport, encode_cache
from medgen.train.progress import bars_disabled


def run_encode(
    run_dir: str,
    cache: str,
    out: str,
    *,
    checkpoint: str = "best",
    batch_size: int = 8,
    chunks: int = 1,
    device: str = "cpu",
    quiet: bool = False,
) -> EncodeReport:
    """Encode ``cache`` with the autoencoder of ``run_dir`` into ``out`` (see the module)."""
    if batch_size < 1:
        raise ConfigError(f"--batch-size: expected at least 1, got {batch_size}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    ae = AutoencoderRun.open(run_dir, checkpoint, device, key="RUN_DIR")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = encode_cache(ae, cache, out, batch_size=batch_size, chunks=chunks,
                              device=device, quiet=bars_disabled(quiet))  # fmt: skip
    for w in caught:
        print(f"medgen-train: warning: {' '.join(str(w.message).split())}", file=sys.stderr)
    return report


def _command(args: argparse.Namespace) -> int:
    report = run_encode(args.run_dir, args.cache, args.out, checkpoint=args.checkpoint,
                        batch_size=args.batch_size, chunks=args.chunks, device=args.device,
                        quiet=args.quiet)  # fmt: skip
    printer(args.quiet)(report.summary())
    return 0


def register(subparsers) -> None:
    """Add ``encode`` to the CLI."""
    help_ = "encode a cache with a trained autoencoder into a latent cache"
    p = add_verb(subparsers, "encode", _command, help_, __doc__)
    p.add_argument("run_dir", help="an autoencoder fit run directory")
    p.add_argument("--cache", required=True, help="the pixel cache to encode")
    p.add_argument("--out", required=True, help="the latent cache directory")
    p.add_argument("--checkpoint", default="best", help="best (default), latest or step_N")
    p.add_argument("--batch-size", type=int, default=8, dest="batch_size")
    p.add_argument(
        "--chunks",
        type=int,
        default=1,
        help="encode each item in N pieces along depth (memory; 1: at once)",
    )
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1")
    add_quiet(p)
