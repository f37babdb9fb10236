"""Regional metrics by lesion size (RANO-BM bins), 2D and 3D.

Lesions are the connected components of a mask (scipy.ndimage.label, full connectivity:
8 in 2D, 26 in 3D). A lesion's size is its maximum **Feret diameter** in mm: the largest
distance between two of its voxel centres (exact: pairwise over the convex hull's vertices of
the boundary voxels, or over every boundary voxel when the hull is degenerate), plus the
length of one voxel along that direction (``1 / sqrt(sum (u_i / s_i)^2)``, the spacing for
isotropic voxels), so a lone voxel measures one voxel and a rasterised disc of diameter D
measures D within one voxel. Bins (RANO-BM): tiny < 10 mm, small [10, 20), medium [20, 30),
large >= 30.

Per bin, for a predicted mask against a true mask (lesions taken from the true mask):
detection rate (a true lesion is detected when a predicted voxel overlaps it), Dice and IoU
of the lesion with the predicted components touching it; and for images, mean squared error
inside the bin's lesions and in the background.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError
from scipy.spatial.distance import cdist

RANO_BM_BINS = (("tiny", 0.0, 10.0), ("small", 10.0, 20.0), ("medium", 20.0, 30.0),
                ("large", 30.0, float("inf")))  # fmt: skip


def size_bin(diameter_mm: float) -> str:
    """The RANO-BM bin of a Feret diameter in mm."""
    for name, lo, hi in RANO_BM_BINS:
        if lo <= diameter_mm < hi:
            return name
    raise ValueError(f"not a diameter: {diameter_mm}")


def label(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected components of a binary mask (full connectivity)."""
    mask = np.asarray(mask, bool)
    return ndimage.label(mask, structure=ndimage.generate_binary_structure(mask.ndim, mask.ndim))


def feret_diameter(component: np.ndarray, spacing) -> float:
    """Maximum Feret diameter in mm of one binary component (see the module docstring)."""
    component = np.asarray(component, bool)
    spacing = np.asarray(spacing, np.float64)
    if spacing.shape != (component.ndim,) or (spacing <= 0).any():
        raise ValueError(f"spacing {spacing.tolist()} does not fit a {component.ndim}D mask")
    boundary = component & ~ndimage.binary_erosion(component)
    pts = np.argwhere(boundary).astype(np.float64) * spacing
    if len(pts) == 0:
        raise ValueError("feret_diameter: empty component")
    if len(pts) == 1:
        return float(spacing.max())
    for options in ("", "QJ"):  # QJ (joggled input) for flat lesions: still their points
        try:
            pts = pts[ConvexHull(pts, qhull_options=options or None).vertices]
            break
        except (QhullError, ValueError):
            continue  # collinear or too few points: every boundary point
    dist = cdist(pts, pts)
    i, j = np.unravel_index(np.argmax(dist), dist.shape)
    u = (pts[j] - pts[i]) / dist[i, j]
    return float(dist[i, j] + 1.0 / np.sqrt(((u / spacing) ** 2).sum()))


def lesions(mask: np.ndarray, spacing) -> list[dict]:
    """Each lesion of ``mask``: its label, voxel count, Feret diameter (mm) and bin."""
    labels, _ = label(mask)
    out = []
    for i, box in enumerate(ndimage.find_objects(labels), start=1):
        comp = labels[box] == i
        d = feret_diameter(comp, spacing)
        out.append({"label": i, "voxels": int(comp.sum()), "feret_mm": d, "bin": size_bin(d)})
    return out


def size_bin_counts(mask: np.ndarray, spacing) -> dict[str, int]:
    """Number of lesions per RANO-BM bin (the size-bin vector of a mask)."""
    counts = {name: 0 for name, _, _ in RANO_BM_BINS}
    for les in lesions(mask, spacing):
        counts[les["bin"]] += 1
    return counts


def regional_metrics(
    truths, preds=None, spacing=None, images=None, references=None
) -> dict[str, dict]:
    """Per-bin lesion metrics over pairs of (true mask, predicted mask), and per-bin mean
    squared error of ``images`` against ``references`` inside the true lesions vs the
    background. Arrays are sequences of equally shaped 2D / 3D arrays (images may carry a
    leading channel axis)."""
    acc = {name: {"n_lesions": 0, "detected": 0, "dice": [], "iou": [], "se": 0.0, "nv": 0}
           for name, _, _ in RANO_BM_BINS}  # fmt: skip
    bg_se, bg_n = 0.0, 0
    for k, truth in enumerate(truths):
        truth = np.asarray(truth, bool)
        labels, _ = label(truth)
        pred_labels = label(preds[k])[0] if preds is not None else None
        err = None
        if images is not None:
            diff = np.asarray(images[k], np.float64) - np.asarray(references[k], np.float64)
            err = (diff**2).reshape(-1, *truth.shape).mean(axis=0)
            bg_se += float(err[~truth].sum())
            bg_n += int((~truth).sum())
        for les in lesions(truth, spacing):
            a = acc[les["bin"]]
            region = labels == les["label"]
            a["n_lesions"] += 1
            if err is not None:
                a["se"] += float(err[region].sum())
                a["nv"] += int(region.sum())
            if pred_labels is not None:
                touching = np.setdiff1d(np.unique(pred_labels[region]), [0])
                a["detected"] += int(touching.size > 0)
                p = np.isin(pred_labels, touching) if touching.size else np.zeros_like(region)
                inter, union = (p & region).sum(), (p | region).sum()
                a["dice"].append(2.0 * inter / (p.sum() + region.sum()))
                a["iou"].append(inter / union)
    out = {}
    for name, a in acc.items():
        row = {"n_lesions": a["n_lesions"]}
        if preds is not None:
            n = a["n_lesions"]
            row["detection_rate"] = a["detected"] / n if n else None
            row["dice"] = float(np.mean(a["dice"])) if a["dice"] else None
            row["iou"] = float(np.mean(a["iou"])) if a["iou"] else None
        if images is not None:
            row["mse_lesion"] = a["se"] / a["nv"] if a["nv"] else None
        out[name] = row
    if images is not None:
        out["background"] = {"mse": bg_se / bg_n if bg_n else None}
    return out
