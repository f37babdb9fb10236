"""Training-data loading: MedGen's ``LoaderBatches`` over a sharded cache vs MONAI's
``PersistentDataset`` + ``DataLoader`` on the same files, and whether a training step waits
for the loader (CPU).

    python benchmarks/bench_loader.py --out DIR [--quick] [--subjects 6] [--workers 0 1 2]
        [--batches 100] [--rounds 3] [--steps 20] [--warmup 3] [--threads T]

Inputs are made by the script in a temporary directory under DIR: the demo data set
(``write_demo_dataset``: deformed MNI152 subjects with lesion masks, all NIfTI, 2 mm; no
download) and, for (c), the quickstart's own MNI152 slice cache (its ``mni152`` recipe).

(a) MedGen: caches built with ``build_cache`` from the demo ``subjects.csv`` (build time
    reported): axial slices (z from the foreground, 10 local z-bins, class from the lesion
    mask, in-plane fit: foreground crop, square pad with -1, resize) at S x S, and volumes
    centre padded/cropped to V^3, read whole or as random (V/2)^3 crops from the per-item
    seeds. Read through ``LoaderBatches`` (a ``DataLoader`` over ``CacheDataset`` driven by
    a ``ResumableBatchSampler``; persistent workers, prefetch 2, no pinning) with 0, 1 and 2
    workers: items/s over ``--batches`` batches after 3 untimed ones (worker start-up),
    crossing epochs as training does.
(b) The peer, MONAI: ``monai.data.PersistentDataset`` over the same NIfTI files with
    ``LoadImaged``, ``EnsureChannelFirstd``, ``ScaleIntensityRangePercentilesd`` (0.5-99.5 ->
    [-1, 1], clipped, as MedGen scales), then for slices ``CropForegroundd`` (image > -0.8),
    the axial slice, a square pad with -1 and an area resize (masks nearest), for volumes
    ``ResizeWithPadOrCropd`` to V^3 (pad -1) and, for crops, ``RandSpatialCropd`` after the
    cache; its first pass (filling the cache: one ``.pt`` file per item) is reported beside
    MedGen's build; then a ``monai.data.DataLoader`` (shuffled, ragged tail dropped, the same
    workers, persistent, prefetch 2) read the same way. The items are checked against
    MedGen's (mean |difference| of the images after transposing MONAI's (x, y, z) order,
    share of mask pixels that differ). What the peer does not do is listed in the Markdown.
(c) Training step consumption: the quickstart's step (``fit`` over the diffusion task built
    from the quickstart config: ConditionedUNet 32/64/64, batch 32, 32 x 32, image + mask)
    fed from the cache's items held in memory (``ShardedBatches``) vs fed by the quickstart's
    own loader (``medgen.train.tasks.data.make_batches`` over the MNI152 slice cache) with 0
    and 2 workers. A step's time is the interval between consecutive loss computations (the
    whole update, the wait for the next batch included); rounds alternate the three feeds
    (and their order) so that drift hits all of them; after ``--warmup`` steps per round the
    median and the mean step are reported, as ratios to in-memory (target: <= 1.05x). The
    mean counts the epoch starts (the cache has 100 slices: 3 batches an epoch).

Rows carry items/s (or ms per step) and the ratio to the peer measured in the same run.
Writes DIR/<timestamp>_loader.json and .md.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from bench_engine import DictBatches, intervals, now, stamped
from harness import DEFAULT_OUT, base_meta, cpu_name, load_at_start, write_results
from torch.utils.data import default_collate

from medgen.data import (
    CacheDataset,
    CacheRecipe,
    ResumableBatchSampler,
    build_cache,
    open_shard,
    read_manifest,
    resolve_sources,
    write_demo_dataset,
)
from medgen.train.config.fit import load_fit_config
from medgen.train.engine import LoaderBatches, Objective, TrainingSetup, fit
from medgen.train.engine.distributed import DistContext
from medgen.train.tasks.data import describe, make_batches
from medgen.train.tasks.diffusion.task import NETWORK, DiffusionModel, DiffusionTask

FOREGROUND = -0.8  # image > this is foreground (z extent and in-plane box), both sides
WARM_BATCHES = 3  # untimed batches per loader (worker start-up, first reads)
SLICE_BATCH, VOLUME_BATCH = 32, 2


# -- the peer (MONAI) ---------------------------------------------------------------------------
logging.getLogger("monai").setLevel(logging.ERROR)
# MONAI's notices about optional DICOM decoders it does not need here (NIfTI only)
warnings.filterwarnings("ignore", message=".*nvImageCodec", category=UserWarning)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import monai
    from monai import transforms as T
    from monai.data import DataLoader as MonaiDataLoader
    from monai.data import PersistentDataset


def above_foreground(x):
    """CropForegroundd's select_fn: the same threshold MedGen's recipe uses."""
    return x > FOREGROUND


class AxialSliced(T.MapTransform):
    """Peer code: the axial slice ``z`` (a volume index) of each key, after the foreground
    crop (whose start it subtracts)."""

    def __call__(self, data):
        d = dict(data)
        z = int(d.pop("z")) - int(d.pop("foreground_start_coord")[-1])
        d.pop("foreground_end_coord")
        for key in self.keys:
            d[key] = d[key][..., z]
        return d


class SquarePadd(T.MapTransform):
    """Peer code: pad each slice symmetrically to a square (image -1, mask 0)."""

    def __call__(self, data):
        d = dict(data)
        side = max(d["image"].shape[1:])
        d["image"] = T.SpatialPad((side, side), value=-1.0)(d["image"])
        d["mask"] = T.SpatialPad((side, side), value=0)(d["mask"])
        return d


def slice_transforms(size: int) -> list:
    """Deterministic MONAI chain: NIfTI -> one S x S axial slice of image and mask."""
    keys = ["image", "mask"]
    return [
        T.LoadImaged(keys),
        T.EnsureChannelFirstd(keys),
        T.ScaleIntensityRangePercentilesd("image", 0.5, 99.5, -1.0, 1.0, clip=True),
        T.CropForegroundd(keys, source_key="image", select_fn=above_foreground),
        AxialSliced(keys),
        SquarePadd(keys),
        T.Resized("image", (size, size), mode="area"),
        T.Resized("mask", (size, size), mode="nearest-exact"),
        T.CastToTyped("mask", np.uint8),
    ]


def volume_transforms(side: int) -> list:
    """Deterministic MONAI chain: NIfTI -> image and mask centre padded/cropped to side^3."""
    keys = ["image", "mask"]
    return [
        T.LoadImaged(keys),
        T.EnsureChannelFirstd(keys),
        T.ScaleIntensityRangePercentilesd("image", 0.5, 99.5, -1.0, 1.0, clip=True),
        T.ResizeWithPadOrCropd("image", (side,) * 3, value=-1.0),
        T.ResizeWithPadOrCropd("mask", (side,) * 3),
        T.CastToTyped("mask", np.uint8),
    ]


def peer_items(cache: Path, table: Path) -> list[dict]:
    """The peer's data list, in MedGen's item order: the files of each item's subject, and for
    slices the volume z index and the token MedGen computed (MONAI has neither z-bins nor
    classes from masks)."""
    subjects = {s.pseudonym: s for s in resolve_sources((str(table),))}
    manifest = read_manifest(cache)
    items = []
    for entry in manifest["shards"]:
        s = subjects[entry["subject"]]
        base = {"image": str(s.images["image"]), "mask": str(s.mask)}
        arrays = open_shard(cache, entry)
        if manifest["kind"] == "slices":
            for z, token in zip(arrays["z_index"], arrays["token"], strict=True):
                items.append({**base, "z": int(z), "token": int(token)})
        else:
            items.append({**base, "token": int(arrays["token"][0])})
    return items


def persistent_dataset(items, deterministic, random, cache_dir: Path):
    """``monai.data.PersistentDataset`` over ``items`` (cache in ``cache_dir``)."""
    return PersistentDataset(items, T.Compose([*deterministic, *random]), cache_dir=cache_dir)


def agreement(ours: CacheDataset, peer, n: int = 8) -> dict:
    """Mean |image difference| and mask mismatch share of the first ``n`` items (MONAI's
    spatial axes reversed to MedGen's order)."""
    diffs, masks = [], []
    for i in np.linspace(0, len(ours) - 1, min(n, len(ours))).round().astype(int):
        a, b = ours[int(i)], peer[int(i)]
        axes = tuple(range(b["image"].ndim - 1, 0, -1))
        image = np.asarray(b["image"]).transpose(0, *axes)
        mask = np.asarray(b["mask"]).transpose(0, *axes)
        diffs.append(float(np.abs(image - a["image"].numpy()).mean()))
        masks.append(float((mask != a["mask"].numpy()).mean()))
    return {"image_mean_abs_diff": float(np.mean(diffs)), "mask_mismatch": float(np.mean(masks))}


# -- loaders ------------------------------------------------------------------------------------
def medgen_source(ds: CacheDataset, batch: int, workers: int):
    """``next_batch`` of LoaderBatches over ``ds`` (and the object to drop afterwards)."""
    sampler = ResumableBatchSampler(len(ds), batch, seed=0)
    source = LoaderBatches(
        ds, sampler, num_workers=workers, pin_memory=False, prefetch_factor=2,
        persistent_workers=True,
    )  # fmt: skip
    return source.next_batch, source


def monai_source(ds, batch: int, workers: int):
    """``next_batch`` over epochs of a ``monai.data.DataLoader`` (and the loader)."""
    loader = MonaiDataLoader(
        ds, batch_size=batch, shuffle=True, drop_last=True, num_workers=workers,
        persistent_workers=workers > 0, prefetch_factor=2 if workers else None,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    state = {"it": iter(loader)}

    def next_batch():
        try:
            return next(state["it"])
        except StopIteration:
            state["it"] = iter(loader)
            return next(state["it"])

    return next_batch, (loader, state)


def read_rate(make, batches: int) -> tuple[float, int, int]:
    """(seconds, items, image bytes) of ``batches`` batches after the warm ones."""
    next_batch, keep = make()
    for _ in range(WARM_BATCHES):
        next_batch()
    items = nbytes = 0
    t0 = time.perf_counter()
    for _ in range(batches):
        b = next_batch()
        items += len(b["image"])
        nbytes += b["image"].numel() * b["image"].element_size()
    seconds = time.perf_counter() - t0
    del next_batch, keep  # stops the workers
    gc.collect()
    return seconds, items, nbytes


def build_caches(args, scratch: Path, table: Path) -> tuple[list[dict], list[dict]]:
    """MedGen caches (timed builds) and the loader cases over them."""
    sizes, side = args.sizes, args.volume
    recipes = {
        f"slices {s}x{s}": CacheRecipe(
            out=str(scratch / f"slices{s}"), kind="slices", sources=(str(table),),
            z_from="foreground", foreground_threshold=FOREGROUND, n_bins=10, size=s,
            in_plane="fit", class_from="mask", min_lesion_voxels=4,
        )
        for s in sizes
    }  # fmt: skip
    recipes[f"volumes {side}^3"] = CacheRecipe(
        out=str(scratch / f"volumes{side}"), kind="volumes", sources=(str(table),),
        shape=(side,) * 3, class_from="mask", min_lesion_voxels=4,
    )  # fmt: skip
    builds, cases = [], []
    for name, recipe in recipes.items():
        t0 = time.perf_counter()
        build_cache(recipe, quiet=True)
        seconds = time.perf_counter() - t0
        n = int(read_manifest(recipe.out)["n_items"])
        builds.append({"cache": name, "recipe": recipe, "medgen_build_s": seconds, "items": n})
        if recipe.kind == "slices":
            cases.append(dict(case=name, cache=name, batch=SLICE_BATCH, crop=None,
                              deterministic=slice_transforms(recipe.size)))  # fmt: skip
        else:
            det = volume_transforms(side)
            cases.append(dict(case=name, cache=name, batch=VOLUME_BATCH, crop=None,
                              deterministic=det))  # fmt: skip
            cases.append(dict(case=f"{name}, random crop {side // 2}^3", cache=name,
                              batch=VOLUME_BATCH, crop=(side // 2,) * 3, deterministic=det))  # fmt: skip
    return builds, cases


def loader_rows(args, scratch: Path, table: Path) -> tuple[list[dict], list[dict]]:
    """(a) + (b): build rows and throughput rows."""
    builds, cases = build_caches(args, scratch, table)
    peers = {}
    for b in builds:  # the peer's first pass: every item through the deterministic chain,
        case = next(c for c in cases if c["cache"] == b["cache"])  # saved to its cache
        items = peer_items(Path(b["recipe"].out), table)
        pds = persistent_dataset(items, case["deterministic"], [], scratch / "monai" / b["cache"])
        t0 = time.perf_counter()
        for i in range(len(pds)):
            pds[i]
        b["monai_first_pass_s"] = time.perf_counter() - t0
        b["agreement"] = agreement(CacheDataset(b["recipe"].out, "train", verify=False), pds)
        peers[b["cache"]] = items
    rows = []
    for case in cases:
        out = Path(next(b["recipe"].out for b in builds if b["cache"] == case["cache"]))
        ours = CacheDataset(out, "train", verify=True, crop=case["crop"])
        random = []
        if case["crop"] is not None:
            random = [T.RandSpatialCropd(["image", "mask"], case["crop"], random_size=False)]
        theirs = persistent_dataset(
            peers[case["cache"]], case["deterministic"], random, scratch / "monai" / case["cache"]
        )
        batch = case["batch"]
        n_batches = max(1, args.batches if batch == SLICE_BATCH else args.batches // 2)
        for workers in args.workers:
            runs = {"medgen": [], "monai": []}
            makers = [
                ("medgen", partial(medgen_source, ours, batch, workers)),
                ("monai", partial(monai_source, theirs, batch, workers)),
            ]
            for r in range(args.rounds):  # alternate which goes first
                for impl, make in makers if r % 2 == 0 else makers[::-1]:
                    runs[impl].append(read_rate(make, n_batches))
            rates = {}
            for impl, values in runs.items():
                seconds = statistics.median(v[0] for v in values)
                items, nbytes = values[0][1], values[0][2]
                rates[impl] = (items / seconds, nbytes / seconds / 1e6, seconds, len(values))
            for impl, (ips, mbs, seconds, n) in rates.items():
                rows.append(
                    dict(case=case["case"], impl=impl, workers=workers, batch=batch,
                         batches=n_batches, seconds=seconds, rounds=n, items_per_s=ips,
                         image_MB_per_s=mbs, vs_monai=ips / rates["monai"][0])
                )  # fmt: skip
    build_rows = [
        dict(cache=b["cache"], items=b["items"], medgen_build_s=b["medgen_build_s"],
             monai_first_pass_s=b["monai_first_pass_s"],
             speedup=b["monai_first_pass_s"] / b["medgen_build_s"], **b["agreement"])
        for b in builds
    ]  # fmt: skip
    return build_rows, rows


# -- (c) training step consumption --------------------------------------------------------------
def step_rows(args, scratch: Path) -> tuple[list[dict], dict]:
    """(c): per-step times of the quickstart's step fed three ways."""
    overrides = [f"data.recipe.out={scratch / 'quickstart'}", *args.step_overrides]
    cfg = load_fit_config("quickstart", overrides)
    cache = Path(cfg.data.recipe.out)
    build_cache(cfg.data.recipe, quiet=True)
    description = describe(read_manifest(cache), cfg.data, cache)
    dataset = CacheDataset(cache, cfg.data.train_split, verify=True)
    held = default_collate([dataset[i] for i in range(len(dataset))])
    cpu = torch.device("cpu")
    batch = cfg.training.batch_size

    def feed(kind: str):
        if kind == "in-memory":
            return DictBatches(held, batch, seed=cfg.training.seed)
        workers = int(kind.split()[1])
        data = replace(cfg.data, num_workers=workers)
        return make_batches(dataset, data, batch, cfg.training.seed, DistContext(), cuda=False)

    total = args.warmup + args.steps
    settings = replace(
        cfg.training, steps=total, log_every=total, eval_every=0, checkpoint_every=0,
        tensorboard=False, warmup_steps=min(cfg.training.warmup_steps, total - 1),
    )  # fmt: skip

    def one_round(kind: str) -> list[tuple[float, float]]:
        torch.manual_seed(0)  # the same initial weights for every feed
        model = DiffusionModel.build(cfg.task, cfg.model, description, cpu)
        task = DiffusionTask(model, cpu, seed=cfg.training.seed + 1)
        stamps: list = []
        setup = TrainingSetup(
            modules={NETWORK: model.network},
            objectives=[Objective("diffusion", (NETWORK,), stamped(task.loss, cpu, stamps))],
            state=task,
        )
        source = feed(kind)
        fit(setup, source, settings, quiet=True)
        out = intervals([*stamps, now()])[args.warmup :]
        del source
        gc.collect()
        return out

    feeds = ["in-memory", "loader 0 workers", "loader 2 workers"]
    times: dict[str, list] = {k: [] for k in feeds}
    for r in range(args.rounds):
        for kind in feeds if r % 2 == 0 else feeds[::-1]:
            times[kind] += one_round(kind)
    med = {k: statistics.median(t[0] for t in v) for k, v in times.items()}
    mean = {k: statistics.fmean(t[0] for t in v) for k, v in times.items()}
    rows = [
        dict(feed=k, median_s=med[k], mean_s=mean[k], min_s=min(t[0] for t in v),
             max_s=max(t[0] for t in v), cpu_median_s=statistics.median(t[1] for t in v),
             n=len(v), median_vs_memory=med[k] / med["in-memory"],
             mean_vs_memory=mean[k] / mean["in-memory"])
        for k, v in times.items()
    ]  # fmt: skip
    info = {
        "batch": batch,
        "size": list(description.shape),
        "channels": list(cfg.model.channels),
        "items": len(dataset),
        "batches_per_epoch": len(dataset) // batch,
        "steps": args.steps,
        "warmup": args.warmup,
        "rounds": args.rounds,
    }
    return rows, info


# -- report -------------------------------------------------------------------------------------
PEER_NOTE = (
    "**The peer.** MONAI reads the same NIfTI files and does the same steps: channel-first, "
    "percentile scaling (0.5-99.5 -> [-1, 1], clipped), for slices the 3D foreground box "
    "(image > -0.8), the axial slice, a square pad with -1 and an area resize (MedGen: "
    "antialiased bilinear; masks nearest on both sides), for volumes the centre pad/crop "
    "(-1) and random crops after its cache; `PersistentDataset` stores every item after the "
    "deterministic transforms as one `.pt` file (`torch.save`, loaded with "
    "`weights_only=True`); its cache is keyed per item, so its first pass reads and scales "
    "the whole volume once per slice (MedGen's build: once per subject). It does **not**: "
    "find the slices or the tokens itself (it is "
    "handed MedGen's slice list and z-bin x class tokens: MONAI has no local z-binning nor "
    "classes from lesion masks); check that mask and image share a grid (shape, spacing, "
    "origin, direction) or that mask values are the declared labels; give a validity mask "
    "of padded voxels (MedGen's `valid`); hash sources or cached items (its cache key is "
    "the pickled input dict, so an edited source file or transform serves stale items "
    "unless `hash_transform` is set; MedGen keys shards by content and verifies sha256 on "
    "opening); split by subject; seed crops per item (MONAI draws them from each worker's "
    "RNG, so a resumed run sees other crops; MedGen's sampler gives every item a seed and "
    "resumes mid-epoch). MONAI keeps NIfTI's (x, y, z) axis order, MedGen gives (z, y, x): "
    "the agreement columns compare after reversing the axes."
)


def to_markdown(result: dict) -> str:
    """The result as Markdown tables with their reading notes."""
    m = result["meta"]
    quick = " **(--quick: tiny sizes, few batches and steps; not a measurement)**"
    quick = quick if m["quick"] else ""
    c = result["step_info"]
    lines = [
        f"# Training-data loading: MedGen LoaderBatches vs MONAI PersistentDataset{quick}",
        "",
        f"{m['timestamp']} on {m['cpu']} ({m['threads']} threads in the main process, torch "
        f"{m['torch']}, MONAI {m['monai']}); demo data set: {m['subjects']} subjects, "
        f"{m['spacing_mm']} mm NIfTI; median of {m['rounds']} rounds, alternating order; "
        f"1-min load average at start {m['load_avg_1m_at_start']}.",
        "",
        "## Cache build vs the peer's first pass (fills its cache)",
        "",
        "| cache | items | MedGen build_cache (s) | MONAI first pass (s) | MedGen faster by | "
        "image mean abs diff | mask mismatch |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["build_rows"]:
        lines.append(
            f"| {r['cache']} | {r['items']} | {r['medgen_build_s']:.2f} | "
            f"{r['monai_first_pass_s']:.2f} | {r['speedup']:.1f}x | "
            f"{r['image_mean_abs_diff']:.4f} | {r['mask_mismatch']:.4f} |"
        )
    lines += [
        "",
        "## Loader throughput (warm caches)",
        "",
        "| case | impl | workers | batch | items/s | image MB/s | vs MONAI |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in result["loader_rows"]:
        lines.append(
            f"| {r['case']} | {r['impl']} | {r['workers']} | {r['batch']} | "
            f"{r['items_per_s']:.1f} | {r['image_MB_per_s']:.1f} | {r['vs_monai']:.2f}x |"
        )
    lines += [
        "",
        f"Items/s over {result['loader_rows'][0]['batches']} slice batches (half as many "
        f"volume batches) after {WARM_BATCHES} untimed ones per loader, crossing epochs; "
        "`vs MONAI` = items/s / MONAI's items/s with the same workers.",
        "",
        PEER_NOTE,
        "",
        "## Does the training step wait for the loader? (the quickstart's step)",
        "",
        f"`fit` of the diffusion task from the quickstart config: ConditionedUNet "
        f"{'/'.join(map(str, c['channels']))}, batch {c['batch']}, "
        f"{'x'.join(map(str, c['size']))}, image + mask; the MNI152 slice cache "
        f"({c['items']} items, {c['batches_per_epoch']} batches an epoch); {c['steps']} steps "
        f"x {c['rounds']} rounds per feed after {c['warmup']} warm-up steps per round.",
        "",
        "| feed | median step (ms) | mean (ms) | min (ms) | max (ms) | CPU, main (ms) | "
        "median vs in-memory | mean vs in-memory |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["step_rows"]:
        lines.append(
            f"| {r['feed']} | {r['median_s'] * 1e3:.1f} | {r['mean_s'] * 1e3:.1f} | "
            f"{r['min_s'] * 1e3:.1f} | {r['max_s'] * 1e3:.1f} | {r['cpu_median_s'] * 1e3:.1f} | "
            f"{r['median_vs_memory']:.3f}x | {r['mean_vs_memory']:.3f}x |"
        )
    lines += [
        "",
        "Target: the loader-fed step at most 1.05x the in-memory step. `loader N workers` is "
        "`make_batches` (the quickstart's `LoaderBatches`) with `data.num_workers=N`; "
        "in-memory serves the same items from tensors. The mean includes every epoch start "
        "(a new loader iterator); the CPU column is the training process alone (workers "
        "not counted).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run (a), (b), (c), write the results."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, few batches: a smoke run")
    ap.add_argument("--subjects", type=int, help="demo subjects (6; quick 2)")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--batches", type=int, help="timed slice batches per loader (100; quick 4)")
    ap.add_argument("--rounds", type=int, help="rounds (3; quick 2)")
    ap.add_argument("--steps", type=int, help="(c) timed steps per round and feed (20; quick 2)")
    ap.add_argument("--warmup", type=int, help="(c) untimed steps per round (3; quick 1)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args(argv)
    defaults = (("subjects", 6, 2), ("batches", 100, 4), ("rounds", 3, 2), ("steps", 20, 2),
                ("warmup", 3, 1))  # fmt: skip
    for key, full, quick in defaults:
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)
    if args.quick:  # 4 mm subjects, 16/32 slices, 32^3 volumes, a small quickstart step
        args.spacing, args.sizes, args.volume = 4.0, (32, 16), 32
        args.step_overrides = [
            "data.recipe.size=16", "model.channels=[16,32]",
            "model.attention_levels=[false,true]", "training.batch_size=8",
        ]  # fmt: skip
    else:
        args.spacing, args.sizes, args.volume, args.step_overrides = 2.0, (64, 32), 64, []
    torch.set_num_threads(args.threads)
    os.environ.setdefault("MEDGEN_QUIET", "1")
    args.out.mkdir(parents=True, exist_ok=True)
    load = load_at_start()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=args.out, prefix=".bench_loader.") as tmp:
        scratch = Path(tmp)
        table = write_demo_dataset(
            scratch / "demo", args.subjects, spacing_mm=args.spacing, dicom_subjects=0
        )
        build_rows, rows = loader_rows(args, scratch, table)
        step, info = step_rows(args, scratch)
    result = {"build_rows": build_rows, "loader_rows": rows, "step_rows": step, "step_info": info}
    result["meta"] = {
        **base_meta(),
        "quick": args.quick,
        "device_name": cpu_name(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "subjects": args.subjects,
        "spacing_mm": args.spacing,
        "workers": list(args.workers),
        "rounds": args.rounds,
        "load_avg_1m_at_start": load,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    write_results(args.out, "loader", result, to_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
