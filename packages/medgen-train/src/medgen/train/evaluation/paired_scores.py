"""``evaluate`` on paired samples (``sample --paired``): every sample scored against its own
reference item (:mod:`.paired`), and on a pairs cache beside the linear and cubic interpolation
of the item's thick stack (:mod:`.interpolation`), over all real voxels and over the thin
slices between slab centres; means and paired differences with intervals over subjects."""

from __future__ import annotations

import numpy as np

from medgen.data import DataError, PairVolumes
from medgen.train.evaluation.interpolation import BASELINES, InterpolationBaselines
from medgen.train.evaluation.paired import (
    DATA_RANGE,
    INTEGER_TOLERANCE,
    MSE_FLOOR,
    SSIM_SIGMA,
    SSIM_WINDOW,
    paired_tables,
    score_pair,
)

FIGURE_ITEMS = 4


def _check_record(record: dict, items, n_samples: int, where: str) -> None:
    """The samples' items still exist and hold the subjects they held when sampled."""
    if len(record["items"]) != n_samples or len(record["subjects"]) != n_samples:
        raise DataError(f"{where}: 'paired' names {len(record['items'])} items for "
                        f"{n_samples} samples")  # fmt: skip
    now = items.subjects()
    for j, (i, subject) in enumerate(zip(record["items"], record["subjects"], strict=True)):
        if not 0 <= i < len(items) or str(now[i]) != subject:
            raise DataError(
                f"{where}: sample {j} was paired with item {i} of subject {subject} of "
                f"{record['cache']}:{record['split']}, which the cache no longer holds there; "
                "sample again (medgen-train sample --paired --fresh)"
            )


def _protocol(baselines: InterpolationBaselines | None, n_boot: int, seed: int) -> dict:
    out = {
        "pairing": "each sample against the reference item whose priors (and control maps, "
        "token) it was sampled from (sample --paired)",
        "psnr": f"over the item's valid voxels only (padding excluded), channels pooled, data "
        f"range {DATA_RANGE:g}; MSE clamped to >= {MSE_FLOOR:g} (PSNR <= "
        f"{10 * np.log10(DATA_RANGE**2 / MSE_FLOOR):.0f} dB, never inf), clamped samples counted",
        "ssim": f"scikit-image Gaussian window (sigma {SSIM_SIGMA}, {SSIM_WINDOW} taps, "
        f"population covariance), data range {DATA_RANGE:g}, per channel then averaged, over "
        "the item's valid bounding box (3D for volumes: the real thin depth; 2D for slices); "
        "mean of the SSIM map's interior",
        "intervals": f"95% percentile and BCa, {n_boot} bootstrap replicates over SUBJECTS "
        f"(a drawn subject brings all its items), seed {seed}; differences are per item "
        "(model - baseline) then bootstrapped the same way",
    }
    if baselines is not None:
        out.update(baselines.protocol())
        out["between"] = (
            "the thin slices whose fractional thick position u (medgen.data.thick_positions) "
            f"is not an integer (|u - round(u)| > {INTEGER_TOLERANCE:g}) and lies strictly "
            "between the first and last slab centre: where interpolation has to invent content. "
            "PSNR over their valid voxels; SSIM the mean of the same 3D SSIM map over those "
            "slices inside its interior"
        )
    return out


def score_paired(
    images: np.ndarray,
    ref: dict,
    items,
    record: dict,
    kept: np.ndarray,
    n_total: int,
    *,
    n_boot: int = 200,
    seed: int = 0,
) -> tuple[dict, list[dict]]:
    """``(block, figure rows)``: ``images`` (the finite samples, original indices ``kept`` of
    ``n_total``) against their own items of ``ref`` (``load_reference``'s arrays of
    ``items``); ``record`` is the samples manifest's ``paired``. The block holds the protocol, the tables
    (``all``; with a pairs cache also ``between``) and every per-sample number."""
    _check_record(record, items, n_total, "samples manifest")
    baselines = InterpolationBaselines(items) if isinstance(items, PairVolumes) else None
    methods = ["model", *(BASELINES if baselines else ())]
    per_sample, figure = [], []
    for k, j in enumerate(kept):
        i = int(record["items"][j])
        truth = ref["images"][i]
        valid = ref["valid"][i][None] if ref["valid"] is not None else None
        rec = {"sample": int(j), "item": i, "subject": record["subjects"][j]}
        if baselines is None:
            rec["model"] = score_pair(images[k], truth, valid)
            per_sample.append(rec)
            continue
        b = baselines.item(i, truth)
        rec.update(depth=b["depth"], window_start=b["window_start"],
                   n_between=int(b["between"].sum()))  # fmt: skip
        rec["model"] = score_pair(images[k], truth, valid, b["between"])
        for kind in BASELINES:
            rec[kind] = score_pair(b[kind], truth, valid, b["between"])
        per_sample.append(rec)
        if len(figure) < FIGURE_ITEMS:
            real = min(b["depth"], truth.shape[1])
            figure.append({"label": f"item {i}",
                           "truth": truth[0, :real], "model": images[k][0, :real],
                           **{kind: b[kind][0, :real] for kind in BASELINES}})  # fmt: skip
    subjects = [r["subject"] for r in per_sample]
    regions = ("all", "between") if baselines else ("all",)
    tables = paired_tables(per_sample, subjects, methods, n_boot=n_boot, seed=seed,
                           regions=regions)  # fmt: skip
    clamped = sum(r[m]["psnr_mse_clamped"] for r in per_sample for m in methods)
    block = {
        "reference": f"{record['cache']}:{record['split']}",
        "methods": methods,
        "n_samples": len(per_sample),
        "n_subjects": len(set(subjects)),
        "psnr_mse_clamped": int(clamped),
        "tables": tables,
        "protocol": _protocol(baselines, n_boot, seed),
        "per_sample": per_sample,
    }
    return block, figure
