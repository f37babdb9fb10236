"""Benchmark of medgen-data cache builds and reads on a synthetic subject set (CPU).

    python benchmarks/bench_cache.py --out DIR [--subjects N] [--depth D] [--side S] [--size P]
                                     [--shape V] [--threads T] [--repeats R]

Writes N synthetic subjects (balls whose radius follows z, with a lesion mask; NIfTI, 1 mm)
and their ``subjects.csv`` once, then times, medians of R runs, each cache in a fresh temporary
directory on the same disk as DIR:
  * slices, compute only: ``load_subject`` + ``slice_arrays`` for every subject (read, scale,
    z_range filter, local z-bins, in-plane fit, resize), no writes;
  * slices, cold ``build_cache``: compute + source hashes + atomic shard writes + sidecars +
    split + manifest;
  * slices, resumed build with every shard finished (source and shard hashes, no compute);
  * slices, ``verify_cache`` and ``CacheDataset(verify=True)`` construction;
  * slices, reading every item of ``CacheDataset`` (memory-mapped, copied out), and a
    ``DataLoader`` (batch 32, no workers) over it with ``ResumableBatchSampler``;
  * volumes, cold build (``shape`` V^3) and reading every item, and with a random crop of
    (V/2)^3 per item seed;
  * pairs, cold build with Gaussian 1 mm -> 5 mm thick-slice simulation.
Rows report seconds, items/s and MB/s of cache written or read. Writes
DIR/<timestamp>_cache.json and .md.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from harness import DEFAULT_OUT, base_meta, write_results
from torch.utils.data import DataLoader

from medgen.data import (
    CacheDataset,
    CacheRecipe,
    ResumableBatchSampler,
    Volume,
    build_cache,
    resolve_sources,
    verify_cache,
    write_nifti,
)
from medgen.data.cache.arrays import slice_arrays
from medgen.data.cache.load import load_subject


def write_subjects(root: Path, n: int, depth: int, side: int) -> Path:
    """n subjects (image + lesion mask NIfTI) and their subjects.csv; returns the CSV."""
    z, y, x = np.mgrid[:depth, :side, :side].astype(np.float32)
    direction = np.eye(3)[:, ::-1].copy()  # axial LPS in Volume's (z, y, x) column order
    lines = ["subject,image,mask"]
    for seed in range(n):
        rng = np.random.default_rng(seed)
        r = np.hypot(y - side / 2 - seed, x - side / 2)
        radius = side * (0.15 + 0.2 * np.sin(np.pi * z / depth))
        img = np.where(r < radius, 300.0, 0.0) + 5.0 * rng.standard_normal(r.shape)
        mask = (np.hypot(y - side / 2, x - side / 2 - side / 8) < side / 16) & (z > depth / 3)
        g = dict(spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=direction)
        write_nifti(Volume(img.astype(np.float32), **g), root / f"s{seed}.nii.gz")
        write_nifti(Volume(mask.astype(np.float32), **g), root / f"s{seed}_mask.nii.gz")
        lines.append(f"s{seed},s{seed}.nii.gz,s{seed}_mask.nii.gz")
    table = root / "subjects.csv"
    table.write_text("\n".join(lines) + "\n")
    return table


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def timed(fn, repeats: int, scratch: Path):
    """Median seconds of ``fn(tmpdir)`` over ``repeats`` runs, plus the last result/dir size."""
    times, result, size = [], None, 0
    for _ in range(repeats):
        d = Path(tempfile.mkdtemp(dir=scratch))
        t0 = time.perf_counter()
        result = fn(d)
        times.append(time.perf_counter() - t0)
        size = du(d)
        shutil.rmtree(d)
    return statistics.median(times), result, size


def read_all(ds) -> int:
    n = 0
    for i in range(len(ds)):
        n += ds[(i, i)]["image"].numel() * 4
    return n


def run(args: argparse.Namespace, scratch: Path) -> dict:
    table = write_subjects(scratch, args.subjects, args.depth, args.side)
    z_range = (args.depth // 10, args.depth - args.depth // 10 - 1)
    slices = CacheRecipe(
        out="",
        sources=(str(table),),
        z_range=z_range,
        n_bins=10,
        size=args.size,
        class_from="mask",
        val_fraction=0.2,
    )
    n_slices = (z_range[1] - z_range[0] + 1) * args.subjects
    rows = []

    def row(name, seconds, items, unit, nbytes=0):
        rows.append(
            {
                "case": name,
                "seconds": round(seconds, 4),
                "items": items,
                "unit": unit,
                "items_per_s": round(items / seconds, 1),
                "MB_per_s": round(nbytes / seconds / 1e6, 1) if nbytes else None,
            }
        )

    def compute(_):
        subjects = resolve_sources(slices.sources)
        for s in subjects:
            slice_arrays(load_subject(s, ("image",), slices), slices, None, s.id)

    t, _, _ = timed(compute, args.repeats, scratch)
    row("slices: compute only (read, scale, fit, resize)", t, n_slices, "slices")

    def cold(d):
        build_cache(replace(slices, out=str(d / "c")), quiet=True)

    t, _, size = timed(cold, args.repeats, scratch)
    row("slices: cold build_cache", t, n_slices, "slices", size)

    def reads(d):
        recipe = replace(slices, out=str(d / "c"))
        build_cache(recipe, quiet=True)
        t0 = time.perf_counter()
        assert not build_cache(recipe, quiet=True).built
        t1 = time.perf_counter()
        assert verify_cache(d / "c") == []
        t2 = time.perf_counter()
        ds = CacheDataset(d / "c", None, verify=True)
        t3 = time.perf_counter()
        nbytes = read_all(ds)
        t4 = time.perf_counter()
        sampler = ResumableBatchSampler(len(ds), 32, labels=ds.labels(), oversample=2)
        n_loaded = sum(len(b["image"]) for b in DataLoader(ds, batch_sampler=sampler))
        t5 = time.perf_counter()
        return t1 - t0, t2 - t1, t3 - t2, (t4 - t3, nbytes), (t5 - t4, n_loaded)

    _, (t_resume, t_verify, t_open, (t_read, nbytes), (t_dl, n_dl)), size = timed(
        reads, args.repeats, scratch
    )
    row("slices: resumed build, all shards finished", t_resume, n_slices, "slices", size)
    row("slices: verify_cache", t_verify, n_slices, "slices", size)
    row("slices: CacheDataset(verify=True) construction", t_open, n_slices, "slices", size)
    row("slices: CacheDataset, every item", t_read, n_slices, "slices", nbytes)
    row("slices: DataLoader(batch 32, ResumableBatchSampler)", t_dl, n_dl, "slices")

    v = args.shape
    volumes = replace(slices, kind="volumes", shape=(v, v, v), val_fraction=0.0)

    def volume_reads(d):
        build_cache(replace(volumes, out=str(d / "v")), quiet=True)
        out = []
        for crop in (None, (v // 2,) * 3):
            ds = CacheDataset(d / "v", None, crop=crop)
            t0 = time.perf_counter()
            for _ in range(args.read_rounds):
                read_all(ds)
            out.append(time.perf_counter() - t0)
        return out

    t, _, size = timed(
        lambda d: build_cache(replace(volumes, out=str(d / "v")), quiet=True), args.repeats, scratch
    )
    row(f"volumes: cold build_cache ({v}^3)", t, args.subjects, "volumes", size)
    _, (t_full, t_crop), _ = timed(volume_reads, args.repeats, scratch)
    n_read = args.subjects * args.read_rounds
    row(f"volumes: CacheDataset, every item ({v}^3)", t_full, n_read, "volumes", n_read * 4 * v**3)
    row(
        f"volumes: CacheDataset, random crop ({v // 2}^3)",
        t_crop,
        n_read,
        "volumes",
        n_read * 4 * (v // 2) ** 3,
    )
    pairs = replace(slices, kind="pairs", thickness=5.0, profile="gaussian", val_fraction=0.0)
    t, _, size = timed(
        lambda d: build_cache(replace(pairs, out=str(d / "p")), quiet=True), args.repeats, scratch
    )
    row("pairs: cold build_cache (1 -> 5 mm, Gaussian)", t, args.subjects, "pairs", size)
    return {"rows": rows, "n_slices": n_slices, "z_range": list(z_range), "n_bins": 10}


def to_markdown(result: dict) -> str:
    m = result["meta"]
    lines = [
        "# medgen-data cache build and read benchmark",
        "",
        f"{m['subjects']} synthetic subjects of {m['depth']}x{m['side']}x{m['side']} (NIfTI, "
        f"with masks), slices resized to {m['size']}x{m['size']}, z_range {result['z_range']}, "
        f"{result['n_bins']} bins ({result['n_slices']} slices), volumes {m['shape']}^3; median "
        f"of {m['repeats']} runs; {m['threads']} thread(s), {m['cpu']}; torch {m['torch']}, "
        f"numpy {m['numpy']}; {m['timestamp']}.",
        "",
        "| case | seconds | items/s | MB/s |",
        "|---|---:|---:|---:|",
    ]
    for r in result["rows"]:
        mbs = "" if r["MB_per_s"] is None else f"{r['MB_per_s']:.1f}"
        lines.append(
            f"| {r['case']} | {r['seconds']:.3f} | {r['items_per_s']:.1f} {r['unit']}/s | {mbs} |"
        )
    lines += ["", "MB/s: cache bytes on disk per second for builds, item bytes for reads."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    ap.add_argument("--subjects", type=int, default=8)
    ap.add_argument("--depth", type=int, default=120)
    ap.add_argument("--side", type=int, default=192)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--shape", type=int, default=64, help="volume side V (items V^3)")
    ap.add_argument("--read-rounds", type=int, default=20, help="volume reads per item")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=args.out, prefix=".bench_cache.") as scratch:
        result = run(args, Path(scratch))
    result["meta"] = {
        **base_meta(),
        "subjects": args.subjects,
        "depth": args.depth,
        "side": args.side,
        "size": args.size,
        "shape": args.shape,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    write_results(args.out, "cache", result, to_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
