"""FID and KID on 10,000 x 2048 features against torchmetrics and the ``scipy.linalg.sqrtm``
route, and feature-extraction throughput of every offline extractor.

    python benchmarks/bench_fid.py --out DIR [--quick] [--threads N] [--n 10000] [--dim 2048]
        [--kid-subsets 100] [--kid-subset-size 1000] [--autoencoder RUN_DIR]

Part 1 (metrics, one run, the same features for every route). Generated and reference features
are seeded Gaussians (N x d each, float64; the reference shifted by 0.1 and scaled by 1.1, so
the FID is far from 0). Routes, each timed from the features to the number (means and
covariances included), run in turn:

- FID, ours: ``medgen.train.evaluation.distribution.fid`` (float64, the trace of the square
  root by two symmetric eigendecompositions);
- FID, torchmetrics: means and covariances in torch (float64, as its ``compute`` forms them),
  then ``torchmetrics.image.fid._compute_fid`` (eigenvalues of ``S_g S_r``);
- FID, scipy: ``np.cov`` and ``scipy.linalg.sqrtm(S_g @ S_r)`` (the pytorch-fid route);
- KID, ours: ``distribution.kid`` (polynomial kernel degree 3, gamma 1/d, coef 1; mean and std
  over ``--kid-subsets`` subsets of ``--kid-subset-size``);
- KID, torchmetrics: its ``poly_mmd`` over the *same* subsets (torchmetrics' ``compute`` loop).

Equal values are reported as relative differences, times as ratios (target: ours >= 5x faster
than the sqrtm route).

Part 2 (extraction throughput, images/s, 32 images in batches of 16, after one warm-up batch):
``random:0`` on 1 x 32 x 32 slices and 1 x 32^3 volumes; ``resnet2d`` (ResNet-50, inputs resized to
224 x 224) on 1 x 32 x 32 slices; ``medicalnet`` resnet10 / resnet50 on 1 x 32^3 volumes;
``autoencoder`` (the encoder of ``--autoencoder RUN_DIR``, or of a vae_mni152 run this script fits
for 2 steps into a temporary directory: the template's KL-VAE, 32 / 64 / 64 channels, 4 latent
channels) on 1 x 32 x 32 slices. ResNet / MedicalNet weights are random, written by this script to a
temporary file (throughput does not depend on the values).

Writes DIR/<timestamp>_fid.json / .md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
from harness import DEFAULT_OUT, base_meta, load_at_start, write_results

from medgen.train.evaluation import distribution as D
from medgen.train.evaluation.features import Extractor, medicalnet_model, resnet2d_model


def features(n: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded generated / reference features (N x d, float64)."""
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, d)), rng.normal(size=(n, d)) * 1.1 + 0.1


def timed(fn):
    """(result, seconds) of one call."""
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def fid_torchmetrics(g: np.ndarray, r: np.ndarray) -> float:
    """torchmetrics' FID maths: float64 means / covariances, then ``_compute_fid``."""
    from torchmetrics.image.fid import _compute_fid

    def stats(x):
        t = torch.from_numpy(x)
        mu = t.mean(0)
        c = t - mu
        return mu, c.T @ c / (len(t) - 1)

    return float(_compute_fid(*stats(g), *stats(r)))


def fid_sqrtm(g: np.ndarray, r: np.ndarray) -> float:
    """The pytorch-fid route: ``np.cov`` and ``scipy.linalg.sqrtm`` of the product."""
    m1, s1 = g.mean(0), np.cov(g, rowvar=False)
    m2, s2 = r.mean(0), np.cov(r, rowvar=False)
    root = scipy.linalg.sqrtm(s1 @ s2)
    root = root.real if np.iscomplexobj(root) else root
    return float(((m1 - m2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(root))


def kid_torchmetrics(g: np.ndarray, r: np.ndarray, subsets: list) -> tuple[float, float]:
    """torchmetrics' KID loop (``poly_mmd`` per subset) over the given subsets."""
    from torchmetrics.image.kid import poly_mmd

    tg, tr = torch.from_numpy(g), torch.from_numpy(r)
    values = torch.stack([poly_mmd(tr[b], tg[a]) for a, b in subsets])
    return float(values.mean()), float(values.std(unbiased=False))


def metric_rows(n: int, d: int, kid_subsets: int, kid_size: int) -> list[dict]:
    """Part 1: every route's value and time."""
    g, r = features(n, d)
    rows = []
    ours, t_ours = timed(lambda: D.fid(g, r))
    for name, fn in (("torchmetrics", fid_torchmetrics), ("scipy sqrtm", fid_sqrtm)):
        value, t = timed(lambda fn=fn: fn(g, r))
        rows.append(
            {
                "metric": "FID",
                "peer": name,
                "ours": ours,
                "peer_value": value,
                "rel_diff": abs(ours - value) / abs(value),
                "ours_s": t_ours,
                "peer_s": t,
                "speedup": t / t_ours,
            }
        )
    size = min(kid_size, n)
    k, t_ours = timed(lambda: D.kid(g, r, subsets=kid_subsets, subset_size=size, seed=0))
    subs = D.kid_subsets(n, n, kid_subsets, size, 0)
    (mean, std), t = timed(lambda: kid_torchmetrics(g, r, subs))
    rows.append(
        {
            "metric": "KID",
            "peer": "torchmetrics",
            "ours": k["mean"],
            "peer_value": mean,
            "rel_diff": abs(k["mean"] - mean) / abs(mean),
            "ours_s": t_ours,
            "peer_s": t,
            "speedup": t / t_ours,
            "std_rel_diff": abs(k["std"] - std) / abs(std),
        }
    )
    return rows


def fit_autoencoder(root: Path) -> Path:
    """A vae_mni152 run fitted for 2 steps (the template's network) under ``root``."""
    from medgen.train.cli import main as cli

    os.environ["MEDGEN_CACHE_DIR"] = str(root / "caches")
    args = [
        "fit",
        "vae_mni152",
        "training.steps=2",
        "training.batch_size=4",
        "training.warmup_steps=1",
        "training.eval_every=0",
        "training.checkpoint_every=0",
        "task.eval_samples=4",
        "--out",
        str(root / "vae"),
        "--quiet",
    ]
    if cli(args) != 0:
        raise SystemExit("could not fit the benchmark's autoencoder run")
    return root / "vae"


def throughput_rows(tmp: Path, autoencoder: str | None, n: int) -> list[dict]:
    """Part 2: images/s of each extractor at its stated input size."""
    torch.manual_seed(0)
    torch.save(medicalnet_model(10).state_dict(), tmp / "mn10.pt")
    torch.save(medicalnet_model(50).state_dict(), tmp / "mn50.pt")
    torch.save(resnet2d_model().state_dict(), tmp / "r50.pt")
    ae = autoencoder or str(fit_autoencoder(tmp))
    rng = np.random.default_rng(0)
    slices = np.tanh(rng.normal(size=(n, 1, 32, 32))).astype(np.float32)
    volumes = np.tanh(rng.normal(size=(n, 1, 32, 32, 32))).astype(np.float32)
    cases = [
        ("random:0", "random:0", slices, "1 x 32 x 32"),
        ("random:0", "random:0", volumes, "1 x 32^3"),
        ("resnet2d (ResNet-50)", f"resnet2d:{tmp / 'r50.pt'}", slices, "1 x 32 x 32 -> 224 x 224"),
        ("medicalnet resnet10", f"medicalnet:{tmp / 'mn10.pt'}", volumes, "1 x 32^3"),
        ("medicalnet resnet50", f"medicalnet:{tmp / 'mn50.pt'}", volumes, "1 x 32^3"),
        ("autoencoder (KL-VAE encoder)", f"autoencoder:{ae}:latest", slices, "1 x 32 x 32"),
    ]
    rows = []
    for name, spec, x, size in cases:
        ext = Extractor(spec)
        ext.extract(x[: ext.batch_size])  # warm-up
        _, t = timed(lambda ext=ext, x=x: ext.extract(x))
        rows.append(
            {
                "extractor": name,
                "input": size,
                "dim": ext.protocol["dim"],
                "images": len(x),
                "seconds": t,
                "images_per_s": len(x) / t,
            }
        )
    return rows


def to_markdown(result: dict) -> str:
    """The two tables."""
    m = result["meta"]
    lines = [
        f"# FID / KID ({m['n']} x {m['dim']} features) and extraction throughput",
        "",
        f"{m['cpu']}, {m['threads']} threads, load average {m['load_avg_1m_at_start']} at start",
        "",
        "| metric | peer | ours | peer value | rel. diff | ours (s) | peer (s) | peer / ours |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["metrics"]:
        lines.append(
            f"| {r['metric']} | {r['peer']} | {r['ours']:.6g} | {r['peer_value']:.6g} | "
            f"{r['rel_diff']:.1e} | {r['ours_s']:.2f} | {r['peer_s']:.2f} | "
            f"{r['speedup']:.1f}x |"
        )
    lines += ["", "| extractor | input | features | images/s |", "|---|---|---|---|"]
    for r in result["throughput"]:
        lines.append(f"| {r['extractor']} | {r['input']} | {r['dim']} | {r['images_per_s']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run, write the results."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--n", type=int, help="features per set (10000; quick 600)")
    ap.add_argument("--dim", type=int, help="feature dimension (2048; quick 64)")
    ap.add_argument("--kid-subsets", type=int, default=100)
    ap.add_argument("--kid-subset-size", type=int, default=1000)
    ap.add_argument("--images", type=int, help="images per extractor (32; quick 16)")
    ap.add_argument("--autoencoder", help="an autoencoder fit run (default: fit a 2-step one)")
    args = ap.parse_args(argv)
    n = args.n or (600 if args.quick else 10000)
    dim = args.dim or (64 if args.quick else 2048)
    images = args.images or (16 if args.quick else 32)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("MEDGEN_QUIET", "1")
    load = load_at_start()
    t0 = time.perf_counter()
    result = {"metrics": metric_rows(n, dim, args.kid_subsets, args.kid_subset_size)}
    print(
        to_markdown(
            {
                **result,
                "throughput": [],
                "meta": {
                    "n": n,
                    "dim": dim,
                    "cpu": "",
                    "threads": args.threads,
                    "load_avg_1m_at_start": load,
                },
            }
        ),
        file=sys.stderr,
    )
    with tempfile.TemporaryDirectory() as tmp:
        result["throughput"] = throughput_rows(Path(tmp), args.autoencoder, images)
    result["meta"] = {
        **base_meta(),
        "quick": args.quick,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "n": n,
        "dim": dim,
        "kid_subsets": args.kid_subsets,
        "kid_subset_size": args.kid_subset_size,
        "load_avg_1m_at_start": load,
        "load_avg_1m_at_end": os.getloadavg()[0],
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    write_results(args.out, "fid", result, to_markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
