"""Benchmark of medgen-data cache builds on a synthetic volume set (CPU).

    python benchmarks/bench_cache.py --out DIR [--volumes N] [--depth D] [--side S] [--size P]
                                     [--threads T] [--repeats R]

Times, medians of R runs on the same synthetic volumes (balls whose radius follows z, with a
probability mask), each in a fresh temporary directory on the same disk as DIR:
  * slices, compute only: ``axial_slices`` (z_range filter, local z-bins, crop, resize);
  * slices, sharded cache cold build: compute + atomic shard writes + sidecars + manifest;
  * slices, resumed build with every shard finished (hash check of every shard, no compute);
  * slices, ``verify_sharded_cache`` and ``load_sharded_slices`` (verify=True);
  * slices, the single-file cache (``write_cache``) of the same SliceSet, write only;
  * pairs, sharded cache cold build with Gaussian 1 mm -> 5 mm thick-slice simulation.
Rows report seconds, items/s and MB/s of cache written or read. Writes DIR/bench_cache.json
and DIR/bench_cache.md.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from harness import DEFAULT_OUT, base_meta, write_results

from medgen.data import SliceSet, Volume, axial_slices, write_cache
from medgen.data.cache_shards import (
    build_sharded_cache,
    load_sharded_slices,
    verify_sharded_cache,
)
from medgen.data.cache_sources import pair_source, slice_source


def synthetic_volumes(n: int, depth: int, side: int) -> list[tuple[Volume, Volume]]:
    out = []
    z, y, x = np.mgrid[:depth, :side, :side].astype(np.float32)
    for seed in range(n):
        rng = np.random.default_rng(seed)
        r = np.hypot(y - side / 2 - seed, x - side / 2)
        radius = side * (0.15 + 0.2 * np.sin(np.pi * z / depth))
        img = np.where(r < radius, 0.3, -1.0) + 0.05 * rng.standard_normal(r.shape)
        prob = np.clip((radius * 0.5 - r) / 4, 0, 1)
        g = dict(spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=np.eye(3))
        out.append(
            (
                Volume(np.clip(img, -1, 1).astype(np.float32), **g),
                Volume(prob.astype(np.float32), **g),
            )
        )
    return out


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


def run(args: argparse.Namespace, scratch: Path) -> dict:
    vols = synthetic_volumes(args.volumes, args.depth, args.side)
    z_range, n_bins = (args.depth // 10, args.depth - args.depth // 10 - 1), 10
    n_slices = (z_range[1] - z_range[0] + 1) * args.volumes
    config = {"bench": "slices", "z_range": list(z_range), "n_bins": n_bins, "size": args.size}

    def sources():
        return [slice_source(i, z_range, n_bins, args.size, m) for i, m in vols]

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

    t, parts, _ = timed(
        lambda d: [axial_slices(i, z_range, n_bins, args.size, m) for i, m in vols],
        args.repeats,
        scratch,
    )
    row("slices: compute only (axial_slices)", t, n_slices, "slices")
    t, _, size = timed(
        lambda d: build_sharded_cache(d, sources(), config, n_bins=n_bins, quiet=True),
        args.repeats,
        scratch,
    )
    row("slices: sharded cache, cold build", t, n_slices, "slices", size)

    def resumed(d):
        build_sharded_cache(d, sources(), config, n_bins=n_bins, quiet=True)
        t0 = time.perf_counter()
        report = build_sharded_cache(d, sources(), config, n_bins=n_bins, quiet=True)
        assert not report.built
        t1 = time.perf_counter()
        assert verify_sharded_cache(d) == []
        t2 = time.perf_counter()
        load_sharded_slices(d)
        return t1 - t0, t2 - t1, time.perf_counter() - t2

    _, (t_resume, t_verify, t_load), size = timed(resumed, args.repeats, scratch)
    row("slices: resumed build, all shards finished", t_resume, n_slices, "slices", size)
    row("slices: verify_sharded_cache", t_verify, n_slices, "slices", size)
    row("slices: load_sharded_slices (verify)", t_load, n_slices, "slices", size)
    slices = SliceSet.concatenate(parts)
    t, _, size = timed(lambda d: write_cache(d, slices, config, n_bins), args.repeats, scratch)
    row("slices: single-file cache write (write_cache)", t, n_slices, "slices", size)
    pairs = [pair_source(i, 5.0, profile="gaussian") for i, _ in vols]
    t, _, size = timed(
        lambda d: build_sharded_cache(d, pairs, {"bench": "pairs"}, "pairs", quiet=True),
        args.repeats,
        scratch,
    )
    row("pairs: sharded cache, cold build (1 -> 5 mm, Gaussian)", t, args.volumes, "pairs", size)
    return {"rows": rows, "n_slices": n_slices, "z_range": list(z_range), "n_bins": n_bins}


def to_markdown(result: dict) -> str:
    m = result["meta"]
    lines = [
        "# medgen-data cache build benchmark",
        "",
        f"{m['volumes']} synthetic volumes of {m['depth']}x{m['side']}x{m['side']} float32, "
        f"slices resized to {m['size']}x{m['size']}, z_range {result['z_range']}, "
        f"{result['n_bins']} bins ({result['n_slices']} slices); median of {m['repeats']} runs; "
        f"{m['threads']} thread(s), {m['cpu']}; torch {m['torch']}, numpy {m['numpy']}; "
        f"{m['timestamp']}.",
        "",
        "| case | seconds | items/s | MB/s on disk |",
        "|---|---:|---:|---:|",
    ]
    for r in result["rows"]:
        mbs = "" if r["MB_per_s"] is None else f"{r['MB_per_s']:.1f}"
        lines.append(
            f"| {r['case']} | {r['seconds']:.3f} | {r['items_per_s']:.1f} {r['unit']}/s | {mbs} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    ap.add_argument("--volumes", type=int, default=8)
    ap.add_argument("--depth", type=int, default=120)
    ap.add_argument("--side", type=int, default=192)
    ap.add_argument("--size", type=int, default=128)
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
        "volumes": args.volumes,
        "depth": args.depth,
        "side": args.side,
        "size": args.size,
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
