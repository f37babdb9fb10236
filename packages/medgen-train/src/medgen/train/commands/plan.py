"""``medgen-train plan ROOT [--out DIR]``: a dataset folder -> its fingerprint and a proposed
cache recipe and run config.

ROOT is an nnU-Net v2 raw dataset, a Medical Segmentation Decathlon task or a BIDS dataset
(detected, or ``--layout``). The folder is checked first: every problem (missing channel,
extra case, wrong file_ending, label values outside ``labels``, channels on different grids,
no matching BIDS suffix) is listed, one line each, and nothing is written. Then per case:
shape, spacing, orientation, foreground box, foreground intensity statistics, label voxel
counts and lesion sizes (nnU-Net's fingerprint and more), and from them a proposal: target
spacing (median, nnU-Net's anisotropy rule), size, z range, CT window or MR percentile
scaling, lesion class threshold, 2D or 3D with its memory estimate. Written to DIR (default
``plan/<ROOT name>``): ``recipe.yaml`` (for ``medgen-train cache``), ``fit.yaml`` (for
``medgen-train fit``; it names recipe.yaml), ``fingerprint.json``, ``plan.md``, ``plan.png``.
Needs scipy, plus pybids for BIDS (``pip install 'medgen-data[layouts]'``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tqdm.auto import tqdm

from medgen.data import CacheRecipe, LayoutSource, read_layout
from medgen.data.cache.atomic import atomic_write_bytes
from medgen.data.planning.fingerprint import SAMPLES, fingerprint
from medgen.data.planning.proposal import propose
from medgen.train.commands.verb import add_quiet, add_verb, printer
from medgen.train.config.schema import load_config
from medgen.train.config.yaml_io import dump_yaml
from medgen.train.progress import bars_disabled

FILES = {
    "recipe.yaml": "medgen-train cache",
    "fit.yaml": "medgen-train fit",
    "fingerprint.json": "every number",
    "plan.png": "histograms",
}


def fit_config(recipe_path: Path, out: Path, kind: str, has_val: bool, has_mask: bool) -> dict:
    """The run config the plan proposes: a small UNet, rectified flow, the cache of
    ``recipe_path`` built by ``fit`` itself if missing."""
    volumes = kind == "volumes"
    data = {"recipe": str(recipe_path), "eval_split": "val" if has_val else ""}
    if has_mask:
        data["oversample"] = 3
    return {
        "run": {"dir": str(out / "run")},
        "data": data,
        "model": {"kind": "unet", "channels": [32, 64, 64],
                  "attention_levels": [False, False, False], "num_res_blocks": 1},
        "task": {"kind": "diffusion",
                 "strategy": {"kind": "rflow", "shift": 1.0, "t_sampling": "logit_normal"},
                 "generate": ["image", "mask"] if has_mask else ["image"],
                 "eval_samples": 16 if volumes else 64},
        "training": {"steps": 2000 if volumes else 900, "batch_size": 2 if volumes else 32,
                     "lr": 2.0e-4 if volumes else 1.0e-3, "warmup_steps": 50, "log_every": 25,
                     "eval_every": 500 if volumes else 300,
                     "checkpoint_every": 500 if volumes else 300},
    }  # fmt: skip


def _write(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def _command(args: argparse.Namespace) -> int:
    from medgen.train.config.fit import load_fit_config
    from medgen.train.reports.plan import plan_figure, plan_markdown

    say = printer(args.quiet)
    root = Path(args.root).absolute()
    source = LayoutSource(layout=args.layout, root=str(root), fold=args.fold)
    dataset = read_layout(source)  # every problem of the folder, before anything is written
    disable = bars_disabled(args.quiet)
    fp = fingerprint(
        dataset, args.samples, lambda xs: tqdm(xs, "plan: fingerprint", disable=disable)
    )
    proposal = propose(fp)
    out = Path(args.out) if args.out else Path("plan") / root.name
    out.mkdir(parents=True, exist_ok=True)
    out = out.absolute()
    sources = {"layout": dataset.layout, "root": str(root)}
    if source.fold:
        sources["fold"] = source.fold
    recipe = {"out": str(out / "cache"), "sources": sources, **proposal.recipe}
    has_val = fp.fixed_splits or recipe.get("val_fraction", 0) > 0
    has_mask = any(s.mask is not None for s in dataset.subjects)
    head = f"# Proposed by medgen-train plan from {root} ({dataset.layout}); edit freely.\n"
    _write(out / "recipe.yaml", head + dump_yaml(recipe))
    config = fit_config(out / "recipe.yaml", out, proposal.kind, has_val, has_mask)
    _write(out / "fit.yaml", head + dump_yaml(config))
    load_config(CacheRecipe, out / "recipe.yaml")  # both accepted as written
    load_fit_config(out / "fit.yaml")
    _write(out / "fingerprint.json", json.dumps(
        {**fp.to_dict(), "proposal": {**proposal.__dict__}}, indent=1) + "\n")  # fmt: skip
    plan_figure(out / "plan.png", fp)
    _write(out / "plan.md", plan_markdown(fp, proposal, FILES))
    spacing = " x ".join(f"{s:g}" for s in proposal.spacing)
    say(f"plan {root.name}: {dataset.layout}, {len(fp.cases)} cases, channels "
        f"{', '.join(fp.channels)}, labels {list(recipe['labels'])}")  # fmt: skip
    for note in proposal.notes:
        say(f"  {note}")
    say(
        f"  proposed: kind {proposal.kind}, spacing {spacing} mm, "
        + (f"size {recipe['size']}" if proposal.kind == "slices" else f"shape {recipe['shape']}")
    )
    say(f"  wrote {out}/: recipe.yaml, fit.yaml, fingerprint.json, plan.md, plan.png")
    say(f"  next: medgen-train cache {out}/recipe.yaml && medgen-train fit {out}/fit.yaml")
    return 0


def register(subparsers) -> None:
    """Add ``plan`` to the CLI."""
    help_ = "fingerprint an nnU-Net / Decathlon / BIDS dataset and propose its recipe + config"
    p = add_verb(subparsers, "plan", _command, help_, __doc__)
    p.add_argument("root", help="the dataset folder")
    p.add_argument("--out", help="output directory (default plan/<ROOT name>)")
    p.add_argument("--layout", default="auto", choices=("auto", "nnunet", "decathlon", "bids"))
    p.add_argument("--fold", type=int, default=0, help="fold of splits_final.json (default 0)")
    p.add_argument("--samples", type=int, default=SAMPLES,
                   help=f"pooled foreground intensity samples (default {SAMPLES:g})")  # fmt: skip
    add_quiet(p)
