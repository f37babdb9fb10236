"""The demo data set: several synthetic subjects made from the MNI152 template, some with lesions.

:func:`write_demo_dataset` writes, for each subject ``sub-001``, ``sub-002``, ...:

* a T1 image: the template (reoriented to LPS, resampled to ``spacing_mm``) warped by a random
  smooth deformation (a displacement field of a few mm, interpolated from a coarse grid and
  applied with ``torch.nn.functional.grid_sample``), with random gain, bias and Gaussian noise;
* lesion subjects get 1-3 hyperintense lesions (a sphere, an ellipsoid or an irregular blob of
  a few overlapping spheres; radii 3-15 mm) inside the (warped) brain; the label mask {0, 1}
  marks exactly the voxels they changed (all 0 for controls);
* images as NIfTI (``.nii.gz``), except the last ``dicom_subjects`` subjects, written as DICOM
  series (int16, RescaleSlope 0.1) on the same grid as their NIfTI mask;
* ``subjects.csv`` with the columns subject, image, mask, class (1 lesion, 0 control), split
  (empty, so a cache recipe generates it).

Each subject draws from its own random streams (``[seed, index, purpose]``), so the lesions
of a subject do not change its deformation or noise: the same call with ``lesion_fraction=0``
gives the same images without lesions. Deterministic in ``seed``.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medgen.data.errors import DataError
from medgen.data.nifti import read_nifti, write_nifti
from medgen.data.orientation import to_canonical
from medgen.data.resample import resample
from medgen.data.synthetic.dicom import write_series
from medgen.data.templates import mni152_path
from medgen.data.volume import Volume

DICOM_SLOPE = 0.1
LESION_RADII_MM = (3.0, 15.0)
DEFORMATION_MM = 3.0
COARSE_GRID = (4, 5, 4)


def load_template(spacing_mm: float) -> tuple[Volume, np.ndarray]:
    """The MNI152 T1 (LPS, ``spacing_mm`` isotropic) and its brain mask (GM + WM > 0.5)."""

    def canonical(kind: str) -> Volume:
        """Template file ``kind`` in LPS at ``spacing_mm``."""
        vol = to_canonical(read_nifti(mni152_path(kind), modality="MR"), "LPS")
        return resample(vol, spacing_mm)

    t1, gm, wm = canonical("t1"), canonical("gm"), canonical("wm")
    brain = (gm.array + wm.array) / 255.0 > 0.5
    return Volume(t1.array, t1.spacing, t1.origin, t1.direction, "MR"), brain


def deform(arrays: list[np.ndarray], spacing, rng: np.random.Generator) -> list[np.ndarray]:
    """``arrays`` (one grid) warped by one random smooth displacement field (trilinear)."""
    shape = arrays[0].shape
    coarse = torch.from_numpy(rng.normal(0.0, DEFORMATION_MM, (1, 3, *COARSE_GRID)))
    field = F.interpolate(coarse, size=shape, mode="trilinear", align_corners=True)[0]
    axes = [torch.linspace(-1.0, 1.0, n, dtype=torch.float64) for n in shape]
    base = torch.stack(torch.meshgrid(*axes, indexing="ij"))  # (3, Z, Y, X) in (z, y, x)
    scale = [2.0 / ((n - 1) * s) for n, s in zip(shape, spacing, strict=True)]  # mm -> [-1, 1]
    grid = base + field * torch.tensor(scale, dtype=torch.float64).view(3, 1, 1, 1)
    grid = grid.flip(0).permute(1, 2, 3, 0)[None].to(torch.float32)  # (1, Z, Y, X, (x, y, z))
    stack = torch.from_numpy(np.stack(arrays).astype(np.float32))[None]
    out = F.grid_sample(stack, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return [a.numpy() for a in out[0]]


def _inside(brain: np.ndarray, centre: np.ndarray, radius_vox: np.ndarray) -> bool:
    for axis in range(3):
        for sign in (-1, 1):
            p = centre.copy()
            p[axis] += sign * radius_vox[axis]
            q = np.clip(np.rint(p).astype(int), 0, np.array(brain.shape) - 1)
            if not brain[tuple(q)]:
                return False
    return True


def lesion_mask(brain: np.ndarray, spacing, rng: np.random.Generator) -> np.ndarray:
    """1-3 lesions (sphere / ellipsoid / blob, radii 3-15 mm) inside ``brain``: a bool mask."""
    spacing = np.asarray(spacing, dtype=np.float64)
    idx = np.argwhere(brain)
    mm = np.stack(
        np.meshgrid(
            *[np.arange(n) * s for n, s in zip(brain.shape, spacing, strict=True)], indexing="ij"
        ),
        axis=-1,
    )
    out = np.zeros(brain.shape, dtype=bool)
    for _ in range(int(rng.integers(1, 4))):
        radius = float(rng.uniform(*LESION_RADII_MM))
        for _attempt in range(50):
            centre = idx[rng.integers(len(idx))].astype(np.float64)
            if _inside(brain, centre, radius / spacing):
                break
        d = mm - centre * spacing
        shape = ("sphere", "ellipsoid", "blob")[int(rng.integers(3))]
        if shape == "sphere":
            lesion = (d**2).sum(-1) < radius**2
        elif shape == "ellipsoid":
            rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
            axes = radius * rng.uniform(0.5, 1.0, 3)
            lesion = (((d @ rotation) / axes) ** 2).sum(-1) < 1.0
        else:
            lesion = np.zeros(brain.shape, dtype=bool)
            for _part in range(int(rng.integers(3, 6))):
                offset = rng.normal(0.0, radius / 2, 3)
                r = radius * rng.uniform(0.4, 0.8)
                lesion |= ((d - offset) ** 2).sum(-1) < r**2
        out |= lesion & brain
    return out


def subject_image(template: Volume, brain: np.ndarray, index: int, lesions: bool, seed: int):
    """``(image, lesion mask)`` of demo subject ``index`` (float32 >= 0, uint8 {0, 1})."""
    warp_rng = np.random.default_rng([seed, index, 0])
    lesion_rng = np.random.default_rng([seed, index, 1])
    noise_rng = np.random.default_rng([seed, index, 2])
    image, brain_p = deform([template.array, brain.astype(np.float32)], template.spacing, warp_rng)
    brain = brain_p > 0.5
    level = float(np.percentile(image[brain], 99))
    mask = lesion_mask(brain, template.spacing, lesion_rng) if lesions else np.zeros_like(brain)
    texture = 1.0 + 0.03 * lesion_rng.standard_normal(image.shape)
    image = np.where(mask, 1.3 * level * texture, image)
    gain, bias = noise_rng.uniform(0.9, 1.1), noise_rng.uniform(-2.0, 2.0)
    noisy = gain * image + bias + noise_rng.normal(0.0, 0.01 * level, image.shape)
    return np.clip(noisy, 0.0, None).astype(np.float32), mask.astype(np.uint8)


def write_demo_dataset(
    out_dir: str | Path,
    n_subjects: int = 6,
    *,
    spacing_mm: float = 2.0,
    dicom_subjects: int | None = None,
    lesion_fraction: float = 0.5,
    seed: int = 0,
) -> Path:
    """Write the demo data set (module docstring) into ``out_dir``; return its subjects.csv.

    ``dicom_subjects`` (default: 2, or every subject when there are fewer) are written as
    DICOM series, the others as NIfTI."""
    if int(n_subjects) != n_subjects or n_subjects < 1:
        raise DataError(f"n_subjects: expected an integer >= 1, got {n_subjects!r}")
    if dicom_subjects is None:
        dicom_subjects = min(2, n_subjects)
    if not 0 <= dicom_subjects <= n_subjects:
        raise DataError(f"dicom_subjects: expected 0..{n_subjects}, got {dicom_subjects!r}")
    if not 0.0 <= lesion_fraction <= 1.0:
        raise DataError(f"lesion_fraction: expected a fraction in [0, 1], got {lesion_fraction!r}")
    if not (spacing_mm > 0 and math.isfinite(spacing_mm)):
        raise DataError(f"spacing_mm: expected a positive number, got {spacing_mm!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    template, brain = load_template(spacing_mm)
    n_lesion = math.floor(n_subjects * lesion_fraction + 0.5)
    lesion_subjects = set(np.random.default_rng([seed, 999]).permutation(n_subjects)[:n_lesion])
    rows = []
    for i in range(n_subjects):
        sid = f"sub-{i + 1:03d}"
        image, mask = subject_image(template, brain, i, i in lesion_subjects, seed)
        grid = dict(spacing=template.spacing, origin=template.origin, direction=template.direction)
        write_nifti(Volume(mask.astype(np.float32), **grid), out / f"{sid}_mask.nii.gz")
        if i >= n_subjects - dicom_subjects:
            name = f"{sid}_t1"
            stored = np.rint(image / DICOM_SLOPE).astype(np.int16)
            write_series(
                out / name,
                stored,
                spacing=template.spacing,
                origin=template.origin,
                slope=DICOM_SLOPE,
                intercept=0.0,
                modality="MR",
            )
        else:
            name = f"{sid}_t1.nii.gz"
            write_nifti(Volume(image, **grid), out / name)
        rows.append([sid, name, f"{sid}_mask.nii.gz", int(i in lesion_subjects), ""])
    table = out / "subjects.csv"
    with table.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["subject", "image", "mask", "class", "split"])
        writer.writerows(rows)
    return table
