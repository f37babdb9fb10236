"""``medgen-train evaluate SAMPLES [--reference CACHE[:split]]``: score samples against real data.

Each sample is compared with the nearest real item of its own z-bin and class in the
reference split (mean squared error over the image channels): PSNR, SSIM and, for generated
masks, Dice; a sample is *speckled* when its mean squared Laplacian exceeds twice its nearest
real item's. Also the bin-mean reference (each bin's mean image against its nearest real
slice: what memorising averages would score). The reference defaults to the cache and split
the run trained on (a memorisation / fidelity check); name a held-out split to score
generalisation. Writes ``evaluation.json`` (every number, per sample too), ``evaluation.md``,
``nearest.png``, ``errors.png`` (per-pixel error maps against the nearest real items),
``worst.png`` (the 8 samples of lowest SSIM) and ``report.html`` (one self-contained page:
every table with its intervals and protocol, every figure, the samples' grid and denoising
trajectories) to ``SAMPLES/evaluation`` (or ``--out``).

``--features EXTRACTOR`` (repeatable; ``medicalnet:PATH``, ``resnet2d:PATH``,
``autoencoder:RUN_DIR[:CHECKPOINT]``, ``random:SEED``; local weights only) adds FID, KID, CMMD and
improved precision / recall of the samples against the whole reference split, each with percentile
and BCa bootstrap intervals (``--bootstrap N`` replicates, ``--seed``), and the protocol that
produced them (extractor, weights sha256, N generated / reference, planes, input handling, reference
split). With masks: regional metrics by lesion size (RANO-BM bins, Feret diameters from the cache's
spacing). Always: diversity (mean MS-SSIM over pairs of samples, overall and per z-bin x class);
samples holding NaN or inf are excluded from every metric, counted per group and listed
(``non_finite``), with one warning line. ``--lpips VGG16_WEIGHTS[,HEADS]`` adds LPIPS against the
nearest real item.

Paired samples (``sample --paired``) are also scored each against its OWN item (the reference
defaults to their split): PSNR over valid voxels (MSE clamped to >= 1e-10) and SSIM, and on a
pairs cache the same for linear and cubic interpolation of the item's thick stack, over all
real voxels and over the thin slices between slab centres, with means and paired differences
(percentile and BCa intervals over subjects) in one table, and ``interpolation.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from medgen.data import DataError
from medgen.train.commands.evaluate_inputs import load_reference, read_samples, run_description
from medgen.train.commands.paired_plan import parse_reference
from medgen.train.commands.verb import add_fresh, add_quiet, add_verb, printer
from medgen.train.errors import RunDirError
from medgen.train.evaluation.control import control_fidelity
from medgen.train.evaluation.distribution import SampleSizeError, distribution_metrics
from medgen.train.evaluation.diversity import diversity
from medgen.train.evaluation.features import Extractor, FeatureError
from medgen.train.evaluation.figures import evaluation_figures, sample_grid
from medgen.train.evaluation.finite import (
    NonFiniteSamplesError,
    original_index,
    screen_samples,
    with_original_indices,
)
from medgen.train.evaluation.interpolation_figure import interpolation_figure
from medgen.train.evaluation.lpips import LPIPS, lpips_nearest
from medgen.train.evaluation.nearest import bin_mean_reference, score_samples, summarize
from medgen.train.evaluation.paired_scores import score_paired
from medgen.train.evaluation.regional import regional_metrics, size_bin_counts
from medgen.train.reports.evaluation import evaluation_markdown
from medgen.train.reports.evaluation_blocks import evaluation_document, paired_markdown
from medgen.train.rundir import RunDir, Staging, check_target

KIND = "evaluation"


def run_evaluate(
    samples: str | Path,
    reference: str | None = None,
    out: str | Path | None = None,
    *,
    fresh: bool = False,
    quiet: bool = False,
    say=print,
    features: list[str] | None = None,
    bootstrap: int = 200,
    seed: int = 0,
    lpips: str | None = None,
) -> Path:
    """Score ``samples`` against ``reference`` (``CACHE[:split]``); returns the output dir."""
    samples = Path(samples)
    request = {"features": features or [], "bootstrap": bootstrap, "seed": seed}
    if lpips:
        request["lpips"] = lpips
    manifest, arrays = read_samples(samples)
    try:  # non-finite samples are excluded from every metric, counted and listed
        arrays, non_finite = screen_samples(arrays, str(samples))
    except NonFiniteSamplesError as e:
        raise DataError(str(e)) from None
    data = manifest["data"]
    paired = manifest.get("paired")  # sample --paired: each sample belongs to one item
    if reference is None:
        cache, split = Path(data["cache"]), data["train_split"]
        if paired:
            cache, split = Path(paired["cache"]), paired["split"]
    else:
        cache, split = parse_reference(reference, "test")
        own = (Path(paired["cache"]).resolve(), paired["split"]) if paired else None
        if paired and (cache.resolve(), split) != own:
            raise DataError(
                f"--reference: {samples} holds paired samples of {paired['cache']}:"
                f"{paired['split']}, scored against those items; leave --reference out"
            )
    out = Path(out) if out is not None else samples / "evaluation"
    if (out / "manifest.json").is_file() and not fresh:  # written last: a complete one
        old = json.loads((out / "evaluation.json").read_text())
        same = old.get("samples_request_hash") == manifest.get("request_hash")
        same = same and old.get("request", {}) == request
        if same and old.get("reference") == f"{cache}:{split}":
            say(f"evaluate: {out} already holds this evaluation")
            return out
        raise RunDirError(f"{out}: holds another evaluation; use --fresh or another --out")
    check_target(out, KIND)
    if bootstrap < 2:
        raise DataError(f"--bootstrap: expected at least 2 replicates, got {bootstrap}")
    extractors = []
    for spec in features or []:
        try:
            extractors.append(Extractor(spec))
        except FeatureError as e:
            raise DataError(str(e)) from None
    lpips_metric = None
    if lpips:
        try:
            lpips_metric = LPIPS(lpips, arrays["images"].ndim - 2, seed=seed)
        except (ValueError, OSError) as e:
            raise DataError(f"--lpips: {' '.join(str(e).split())}") from None
    description = run_description(samples, manifest)
    ref = load_reference(cache, split, description, "mode" in arrays, quiet)
    images = arrays["images"]
    if images.shape[1:] != ref["images"].shape[1:]:
        raise DataError(
            f"{samples}: samples of shape {list(images.shape[1:])} cannot be compared with "
            f"{cache}:{split} items of shape {list(ref['images'].shape[1:])}"
        )
    t0 = time.perf_counter()
    scores = score_samples(
        images,
        arrays["masks"].astype(bool) if "masks" in arrays else None,
        arrays["z_bin"],
        arrays["class_id"],
        ref["images"],
        ref["masks"],
        ref["z_bin"],
        ref["class_id"],
        modes=arrays.get("mode"),
        ref_modes=ref["mode"],
        ref_valid=ref["valid"],
    )
    result = {
        "samples": str(samples),
        "reference": f"{cache}:{split}",
        "n_reference": len(ref["images"]),
        "checkpoint": manifest.get("checkpoint"),
        "step": manifest.get("step"),
        "sampler": manifest.get("settings"),
        "samples_request_hash": manifest.get("request_hash"),
        **summarize(with_original_indices(scores, non_finite)),
        "non_finite": non_finite,
        "diversity": diversity(images, arrays["z_bin"], arrays["class_id"], seed=seed),
        "bin_mean_reference_ssim": bin_mean_reference(ref["images"], ref["z_bin"]),
        **control_fidelity(arrays),
        "request": request,
    }
    if lpips_metric is not None:
        kept = [original_index(s.index, non_finite) for s in scores]
        result["lpips"] = lpips_nearest(lpips_metric, images, ref["images"],
                                        [s.nearest for s in scores], kept)  # fmt: skip
    if extractors:
        result["distribution"] = [
            _distribution(ext, images, ref["images"], f"{cache}:{split}", bootstrap, seed, quiet)
            for ext in extractors
        ]
    regional = _regional(arrays, ref, scores, cache)
    if regional:
        result["regional"] = regional
    figure_rows = []
    if paired:
        kept = np.setdiff1d(np.arange(non_finite["n_samples"]), non_finite["indices"])
        result["paired"], figure_rows = score_paired(
            images, ref, ref["items"], paired, kept, non_finite["n_samples"],
            n_boot=bootstrap, seed=seed,
        )  # fmt: skip
    result["seconds"] = time.perf_counter() - t0
    with RunDir(out, KIND).claim(fresh) as claimed:
        claimed.mark()
        stage = Staging(out)
        try:
            stage.path("evaluation.json").write_text(json.dumps(result, indent=2))
            markdown = evaluation_markdown(result)
            if paired:
                markdown += "\n" + paired_markdown(result["paired"], bool(figure_rows))
            stage.path("evaluation.md").write_text(markdown)
            if figure_rows:
                aspect = description.spacing[0] / description.spacing[-1]
                interpolation_figure(stage.path("interpolation.png"), figure_rows, aspect)
            rows = []
            for s in scores[:: max(1, len(scores) // 12)][:12]:
                rows.append(
                    {
                        "label": f"#{original_index(s.index, non_finite)} bin {s.z_bin} "
                        f"class {s.class_id}",
                        "images": images[s.index : s.index + 1, 0],
                        "masks": arrays["masks"][s.index : s.index + 1]
                        if "masks" in arrays
                        else None,
                        "real": ref["images"][s.nearest, 0],
                        "real_mask": ref["masks"][s.nearest] if ref["masks"] is not None else None,
                        "note": f"SSIM {s.ssim:.2f}" + (" speckled" if s.speckled else ""),
                    }
                )
            sample_grid(stage.path("nearest.png"), rows)
            evaluation_figures(stage.dir, scores, images, ref["images"])
            page = evaluation_document(result, stage.dir, samples).html()
            stage.path("report.html").write_text(page)
            stage.commit("manifest.json", {"kind": KIND, "samples": str(samples)})
        except BaseException:
            stage.abandon()
            raise
    o = result["overall"]
    dice = f", Dice {o['dice']['mean']:.3f}" if "dice" in o else ""
    if "control" in result:
        dice += f", control Dice {result['control']['dice']['mean']:.3f}"
    say(
        f"evaluate: {o['n']} samples vs {cache}:{split}: SSIM {o['ssim']['mean']:.3f}, PSNR "
        f"{o['psnr']['mean']:.2f} dB{dice}, {o['speckled']} speckled -> {out}"
    )
    if paired:
        say(_paired_line(result["paired"]))
    if non_finite["warning"]:
        print(f"evaluate: warning: {non_finite['warning']}", file=sys.stderr)
    for block in result.get("distribution", []):
        for plane, m in block["planes"].items():
            f, lo, hi = m["fid"], *(m["fid"]["bca"] or (float("nan"),) * 2)
            say(f"evaluate: {block['protocol']['spec']} {plane}: FID {f['estimate']:.4g} "
                f"(95% BCa {lo:.4g}-{hi:.4g}), KID {m['kid']['estimate']:.3g}")  # fmt: skip
    return out


def _paired_line(block: dict) -> str:
    """One line: each method's mean PSNR and SSIM over all real voxels."""
    rows = block["tables"]["all"]
    parts = [f"{m} PSNR {rows[m]['psnr']['estimate']:.2f} dB SSIM {rows[m]['ssim']['estimate']:.3f}"
             for m in block["methods"]]  # fmt: skip
    return f"evaluate: paired, {block['n_samples']} samples: " + "; ".join(parts)


def _distribution(ext, images, ref_images, reference, n_boot, seed, quiet, groups=50) -> dict:
    """One extractor's distribution metrics (per plane, and averaged over 2.5D planes) with
    their protocol."""
    try:
        ext.check_sizes(len(images), len(ref_images), images.shape[1:])
        gen = ext.extract(images)
        real = ext.extract(ref_images)
        planes = {
            p: distribution_metrics(
                gen[p], real[p], n_boot=n_boot, seed=seed, jackknife_groups=groups
            )
            for p in gen
        }
    except (FeatureError, SampleSizeError, ValueError) as e:  # also non-finite features
        raise DataError(f"--features {ext.spec}: {e}") from None
    block = {
        "protocol": {
            **ext.protocol,
            "n_generated": len(images),
            "n_reference": len(ref_images),
            "feature_rows_per_sample": {p: int(v.shape[1]) for p, v in gen.items()},
            "planes": list(gen),
            "reference_split": reference,
            "bootstrap": {
                "replicates": n_boot,
                "seed": seed,
                "level": 0.95,
                "resampling": "generated and reference independently, with "
                "replacement, by sample (a volume's slices together)",
            },
        },
        "planes": planes,
    }
    if len(planes) > 1:
        block["mean_over_planes"] = {
            m: float(np.mean([planes[p][m]["estimate"] for p in planes])) for m in planes["XY"]
        }
    return block


def _regional(arrays: dict, ref: dict, scores, cache: Path) -> dict:
    """Regional metrics by lesion size where the samples carry masks."""
    if "masks" not in arrays:
        return {}
    manifest = json.loads((cache / "manifest.json").read_text())
    masks = arrays["masks"].astype(bool)
    spacing = manifest["spacing"][-masks.ndim + 1 :]
    out: dict = {"spacing_mm": spacing, "bins": "RANO-BM: tiny < 10, small 10-20, medium "
                 "20-30, large >= 30 mm (maximum Feret diameter)"}  # fmt: skip
    counts = [size_bin_counts(m, spacing) for m in masks]
    out["generated_lesions_per_bin"] = {b: sum(c[b] for c in counts) for b in counts[0]}
    if ref["masks"] is not None:
        rc = [size_bin_counts(m, spacing) for m in ref["masks"]]
        out["reference_lesions_per_bin"] = {b: sum(c[b] for c in rc) for b in rc[0]}
        nearest = [s.nearest for s in scores]
        out["vs_nearest_real"] = regional_metrics(
            ref["masks"][nearest], masks, spacing, arrays["images"], ref["images"][nearest]
        )
    if "control_mask" in arrays:
        out["vs_control_mask"] = regional_metrics(arrays["control_mask"].astype(bool), masks,
                                                  spacing)  # fmt: skip
    return out


def _command(args: argparse.Namespace) -> int:
    run_evaluate(
        args.samples,
        args.reference,
        args.out,
        fresh=args.fresh,
        quiet=args.quiet,
        say=printer(args.quiet),
        features=args.features,
        bootstrap=args.bootstrap,
        lpips=args.lpips,
        seed=args.seed,
    )
    return 0


def register(subparsers) -> None:
    """Add ``evaluate`` to the CLI."""
    help_ = "score a samples directory against a cache split (nearest real, speckle)"
    p = add_verb(subparsers, "evaluate", _command, help_, __doc__)
    p.add_argument("samples", help="a samples directory (from medgen-train sample)")
    p.add_argument("--reference", help="CACHE[:split] (default: the run's cache, train split)")
    p.add_argument("--out", help="output directory (default: SAMPLES/evaluation)")
    p.add_argument("--features", action="append", metavar="EXTRACTOR",
                   help="FID / KID / CMMD / precision / recall with bootstrap CIs on these "
                   "features: medicalnet:PATH, resnet2d:PATH (local weights), "
                   "autoencoder:RUN_DIR[:CHECKPOINT] (a MedGen autoencoder run) or random:SEED "
                   "(tests and demos only); repeatable")  # fmt: skip
    p.add_argument("--bootstrap", type=int, default=200, metavar="N",
                   help="bootstrap replicates for the intervals (default 200)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="bootstrap / KID subset seed")
    p.add_argument("--lpips", metavar="VGG16_WEIGHTS[,HEADS]",
                   help="LPIPS against the nearest real item, from local torchvision VGG16 "
                   "weights (and lpips' vgg.pth heads)")  # fmt: skip
    add_fresh(p, "evaluation")
    add_quiet(p)
