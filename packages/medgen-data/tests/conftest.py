"""Shared fixtures: small NIfTI subjects with planted lesions, written per test."""

from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from medgen.data import Volume, write_nifti

SPACING = (2.0, 1.0, 1.0)  # z, y, x mm (anisotropic on purpose)
ORIGIN = (-10.0, 5.0, 3.0)
LPS = np.eye(3)[:, ::-1].copy()  # Volume.direction columns are the axes (z, y, x): axial LPS


def head(depth: int = 16, side: int = 24, seed: int = 0) -> np.ndarray:
    """A 'head': a ball-ish bright region whose radius follows z, background 0, some texture."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:depth, :side, :side].astype(np.float32)
    r = np.hypot(y - side / 2 + 0.5, x - side / 2 + 0.5)
    radius = side * (0.2 + 0.2 * np.sin(np.pi * (z + 0.5) / depth))
    img = np.where(r < radius, 100.0 + 20.0 * rng.random(r.shape), 0.0)
    return img.astype(np.float32)


def lesion(shape, z_slices, y=(10, 13), x=(10, 12)) -> np.ndarray:
    """uint8 mask with a box of 1s on ``z_slices`` (list), rows ``y``, cols ``x`` (half-open)."""
    m = np.zeros(shape, dtype=np.uint8)
    for z in z_slices:
        m[z, y[0] : y[1], x[0] : x[1]] = 1
    return m


def save(path: Path, array: np.ndarray, spacing=SPACING, origin=ORIGIN, direction=None) -> Path:
    """Write ``array`` as NIfTI with the given geometry; return the path."""
    direction = LPS if direction is None else direction
    vol = Volume(np.asarray(array, dtype=np.float32), spacing, origin, direction)
    return write_nifti(vol, path)


def table(path: Path, header: list[str], rows: list[list]) -> Path:
    """Write a CSV table; return its path."""
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture
def subjects_csv(tmp_path):
    """A factory: ``make(n, lesion_subjects=..., depth=..., side=...)`` writes n subjects
    (image + mask NIfTI, lesion boxes on slices 5-7 of the lesion subjects) and their CSV."""

    def make(n=4, lesion_subjects=(0, 2), depth=16, side=24, name="subjects.csv", **columns):
        rows = []
        for i in range(n):
            sid = f"s{i}"
            img = head(depth, side, seed=i)
            m = lesion(img.shape, [5, 6, 7]) if i in lesion_subjects else np.zeros(img.shape)
            save(tmp_path / f"{sid}.nii.gz", img)
            save(tmp_path / f"{sid}_mask.nii.gz", m)
            extra = [columns[k][i] for k in columns]
            rows.append([sid, f"{sid}.nii.gz", f"{sid}_mask.nii.gz", *extra])
        return table(tmp_path / name, ["subject", "image", "mask", *columns], rows)

    return make


@pytest.fixture
def tools():
    """The helpers of this conftest (test modules cannot import it under importlib mode)."""
    return SimpleNamespace(head=head, lesion=lesion, save=save, table=table, SPACING=SPACING)
