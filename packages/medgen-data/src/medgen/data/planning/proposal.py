"""From a :class:`~medgen.data.planning.fingerprint.DatasetFingerprint` to a cache recipe and
model settings.

* target spacing: nnU-Net v2's ``determine_fullres_target_spacing``: the median spacing; when
  the coarsest axis is more than 3x the finest other axis *and* has fewer than a third of the
  voxels of the smallest other axis (median cropped shape), that axis takes the 10th percentile
  of its spacings instead (at least the largest other spacing, plus 1e-5);
* 2D vs 3D: slices when that anisotropy rule fires, or when a 3D batch of 2 at the proposed
  shape needs more than ``memory_budget_gib``; volumes otherwise. Memory of a MONAI UNet with
  channels ``c_l`` (level ``l`` at 1 / 2^l per axis), training in float32:
  ``batch x sum_l voxels / 2^(dims l) x c_l x 32 bytes x 4`` (about 32 stored activations per
  voxel and channel through a level's encoder + decoder blocks, x4 bytes: an estimate to
  compare 2D with 3D, not a promise);
* size: the median extent of the canonical (RAS) foreground at the target spacing, rounded up
  to a multiple of 16 (slices: the larger in-plane side; volumes: every axis);
* z selection: ``z_from: range`` with the union of the foreground's axial extents when every
  case has the same number of slices at the target spacing, else ``z_from: foreground`` (each
  subject's own extent); ``n_bins`` at most 8 and at most the fewest slices of any extent;
* normalisation: every channel named CT: the CT window preset whose range covers the pooled
  foreground [p0.5, p99.5] best (interval overlap over union); otherwise MR percentile
  scaling 0.5 / 99.5 (nnU-Net z-scores MR; the cache's range is [-1, 1]);
* classes: ``class_from: mask`` with ``min_lesion_voxels`` the 10th percentile of the lesion
  voxels per axial slice at the target spacing (slices), or half the smallest case's lesion
  voxels (volumes: every case with a lesion is class 1), at least 1;
* split: a fixed one (``splits_final.json``) keeps val_fraction 0; else val 1 subject in 5
  (at least one), test as much when there are 5 subjects or more.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from medgen.data.intensity import WINDOW_PRESETS
from medgen.data.planning.fingerprint import DatasetFingerprint, is_ct

ANISOTROPY = 3.0
UNET_CHANNELS = (32, 64, 64)
BYTES_PER_VOXEL_CHANNEL = 32 * 4
MEMORY_BUDGET_GIB = 8.0
MAX_BINS = 8


def target_spacing(spacings: np.ndarray, shapes: np.ndarray) -> np.ndarray:
    """nnU-Net v2's full-resolution target spacing (module docstring), ``(z, y, x)`` mm."""
    target = np.percentile(spacings, 50, axis=0)
    size = np.percentile(shapes, 50, axis=0)
    worst = int(np.argmax(target))
    others = [i for i in range(len(target)) if i != worst]
    other_spacing = max(target[i] for i in others)
    aniso_spacing = target[worst] > ANISOTROPY * other_spacing
    aniso_voxels = size[worst] * ANISOTROPY < min(size[i] for i in others)
    if aniso_spacing and aniso_voxels:
        t = np.percentile(spacings[:, worst], 10)
        if t < other_spacing:
            t = max(other_spacing, t) + 1e-5
        target[worst] = t
    return target


def is_anisotropic(spacings: np.ndarray, shapes: np.ndarray) -> bool:
    """Whether nnU-Net's anisotropy rule fires on these spacings and cropped shapes."""
    median, size = np.median(spacings, axis=0), np.median(shapes, axis=0)
    worst = int(np.argmax(median))
    others = [i for i in range(3) if i != worst]
    return bool(
        median[worst] > ANISOTROPY * max(median[i] for i in others)
        and size[worst] * ANISOTROPY < min(size[i] for i in others)
    )


def unet_memory_gib(shape: tuple[int, ...], batch: int, channels=UNET_CHANNELS) -> float:
    """Training memory estimate of a UNet on items of ``shape`` (module docstring), GiB."""
    voxels, dims = float(np.prod(shape)), len(shape)
    total = sum(voxels / 2 ** (dims * level) * c for level, c in enumerate(channels))
    return batch * total * BYTES_PER_VOXEL_CHANNEL / 2**30


def _round16(n: float) -> int:
    return max(16, math.ceil(n / 16.0) * 16)


def _window(lo: float, hi: float) -> tuple[str, float]:
    def overlap(name: str) -> float:
        c, w = WINDOW_PRESETS[name]
        a, b = c - w / 2, c + w / 2
        inter = max(0.0, min(b, hi) - max(a, lo))
        return inter / (max(b, hi) - min(a, lo))

    best = max(sorted(WINDOW_PRESETS), key=overlap)
    return best, overlap(best)


@dataclass
class Proposal:
    """A proposed cache recipe (CacheRecipe keys, ``sources`` excepted), the recommendation
    and the reasons behind it (``notes``, one line each)."""

    recipe: dict
    kind: str
    spacing: list[float]
    anisotropic: bool
    memory_gib: dict[str, float]
    notes: list[str] = field(default_factory=list)


def _extents(fp: DatasetFingerprint, spacing: np.ndarray):
    """Per case at ``spacing``: canonical foreground extents (voxels), slice counts, and the
    axial foreground range ``(z0, z1)``."""
    ext, depth, z = [], [], []
    for c in fp.cases:
        s = np.asarray(c.canonical_spacing)
        box = np.asarray(c.foreground_box, dtype=np.float64)
        ext.append((box[:, 1] - box[:, 0] + 1) * s / spacing)
        depth.append(int(max(1, round(c.canonical_shape[0] * s[0] / spacing[0]))))
        z.append((math.floor(box[0, 0] * s[0] / spacing[0]),
                  math.ceil(box[0, 1] * s[0] / spacing[0])))  # fmt: skip
    return np.asarray(ext), depth, z


def propose(fp: DatasetFingerprint, memory_budget_gib: float = MEMORY_BUDGET_GIB) -> Proposal:
    """The proposal for ``fp`` (see the module docstring)."""
    notes = []
    spacings, shapes = fp.column("spacing"), fp.column("shape_after_crop")
    spacing = target_spacing(spacings, shapes)
    aniso = is_anisotropic(spacings, shapes)
    # the cache works in canonical RAS: order the target like the canonical axes of case 0
    canon_spacing = np.asarray(fp.cases[0].canonical_spacing)
    native = np.asarray(fp.cases[0].spacing)
    order = [int(np.argmin(np.abs(native - s))) for s in canon_spacing]
    if sorted(order) != [0, 1, 2]:
        order = [0, 1, 2]
    spacing = np.round(spacing[order], 4)
    ext, depth, z = _extents(fp, spacing)
    median_ext = np.median(ext, axis=0)
    size = _round16(max(median_ext[1], median_ext[2]))
    shape3d = [_round16(e) for e in median_ext]
    mem = {
        "slices (batch 32)": round(unet_memory_gib((size, size), 32), 3),
        "volumes (batch 2)": round(unet_memory_gib(tuple(shape3d), 2), 3),
    }
    kind = "volumes"
    if aniso:
        kind = "slices"
        notes.append(f"anisotropic (median spacing {np.median(spacings, 0).round(3).tolist()} mm "
                     f"and cropped shape {np.median(shapes, 0).tolist()}): 2D slices")  # fmt: skip
    elif mem["volumes (batch 2)"] > memory_budget_gib:
        kind = "slices"
        notes.append(f"3D at {shape3d} needs ~{mem['volumes (batch 2)']:.1f} GiB at batch 2 "
                     f"(> {memory_budget_gib:g} GiB): 2D slices")  # fmt: skip
    else:
        notes.append(f"3D at {shape3d} needs ~{mem['volumes (batch 2)']:.2f} GiB at batch 2: "
                     "volumes (kind: slices for 2D)")  # fmt: skip
    recipe: dict = {"kind": kind, "modalities": list(fp.channels)}
    values = sorted({0, *(v for vs in fp.labels.values() for v in vs)})
    recipe["labels"] = values
    recipe["orientation"] = "RAS"
    recipe["spacing"] = [float(s) for s in spacing]
    ct = [is_ct(c) for c in fp.channels]
    if all(ct):
        lo = min(fp.intensity[c]["percentile_00_5"] for c in fp.channels)
        hi = max(fp.intensity[c]["percentile_99_5"] for c in fp.channels)
        name, score = _window(lo, hi)
        recipe["window"] = name
        notes.append(f"CT channels: window {name} (covers foreground [{lo:.0f}, {hi:.0f}] HU, "
                     f"overlap {score:.2f})")  # fmt: skip
    else:
        recipe["percentiles"] = [0.5, 99.5]
        if any(ct):
            notes.append("CT and MR channels mixed: MR percentile scaling for all (one scaling "
                         "per recipe); cache CT separately to window it")  # fmt: skip
        else:
            notes.append("MR channels: percentile scaling 0.5 / 99.5 to [-1, 1]")
    counts = [int(e[0]) for e in np.floor(ext)]
    if len(set(depth)) == 1:
        z0 = min(a for a, _ in z)
        z1 = min(depth[0] - 1, max(b for _, b in z))
        recipe["z_from"], recipe["z_range"] = "range", [max(0, z0), z1]
        counts = [z1 - max(0, z0) + 1]
        notes.append(f"every case has {depth[0]} slices at the target spacing: z_range "
                     f"[{max(0, z0)}, {z1}] holds every case's foreground")  # fmt: skip
    else:
        recipe["z_from"] = "foreground"
        recipe["foreground_threshold"] = -0.9
        notes.append(f"cases have {min(depth)}-{max(depth)} slices at the target spacing: "
                     "z_from foreground (each subject's own extent)")  # fmt: skip
    if kind == "slices":
        recipe["n_bins"] = int(max(1, min(MAX_BINS, min(counts) - 1)))
        recipe["size"] = size
        recipe["in_plane"] = "fit"
    else:
        recipe["shape"] = shape3d
    lesion = fp.lesion_sizes()
    if lesion.size:
        voxel = float(np.prod(spacing))
        if kind == "slices":
            ratio = float(np.prod(spacing[1:]))
            per = [n * float(np.prod(c.canonical_spacing[1:])) / ratio
                   for c in fp.cases for n in c.lesion_per_slice]  # fmt: skip
            threshold = max(1, int(np.percentile(per, 10)))
        else:  # every case with a lesion stays class 1
            per = [sum(c.lesions_mm3) / voxel for c in fp.cases if c.lesions_mm3]
            threshold = max(1, int(min(per) / 2))
        recipe["class_from"], recipe["min_lesion_voxels"] = "mask", threshold
        notes.append(f"{lesion.size} lesions, median {np.median(lesion):.0f} mm^3: class 1 at "
                     f">= {threshold} lesion voxels per {kind[:-1]}")  # fmt: skip
    n = len(fp.cases)
    if fp.fixed_splits:
        notes.append("splits_final.json fixes the train/val split")
    elif n >= 2:
        recipe["val_fraction"] = round(max(0.2, 1.0 / n), 4) if n < 5 else 0.2
        if n >= 5:
            recipe["test_fraction"] = 0.2
    return Proposal(recipe, kind, [float(s) for s in spacing], aniso, mem, notes)
