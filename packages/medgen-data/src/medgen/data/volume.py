"""The ``Volume`` value: voxels plus geometry, and nothing that identifies a patient."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

import numpy as np

DEFAULT_SALT = "medgen-dicom-v1"


def pseudonym(value: str, salt: str | None = None) -> str:
    """16 hex characters of ``sha256(salt NUL value)``: the id MedGen keeps instead of ``value``.

    ``salt``: else the ``MEDGEN_ID_SALT`` environment variable, else a fixed public default
    (stable ids, but only a pseudonym while the salt is secret).
    """
    salt = salt if salt is not None else os.environ.get("MEDGEN_ID_SALT", DEFAULT_SALT)
    return hashlib.sha256(f"{salt}\0{value}".encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Volume:
    """A 3D image in array-axis order ``(z, y, x)`` (SimpleITK's ``GetArrayFromImage`` order).

    ``spacing``, ``origin`` and ``direction`` follow the array axes too: ``spacing[0]`` is the
    distance between slices in mm. ``direction`` is the 3x3 matrix whose *columns* are the
    physical (LPS) directions of the array axes ``(z, y, x)``. ``meta`` holds acquisition facts
    only (never names, ids, dates or institutions).
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray
    modality: str = "OT"
    id: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"Volume array must be 3D (z, y, x), got shape {self.array.shape}")
        if len(self.spacing) != 3 or any(s <= 0 for s in self.spacing):
            raise ValueError(f"Volume spacing must be 3 positive numbers, got {self.spacing}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """``array.shape`` as Python ints ``(z, y, x)``."""
        return tuple(int(s) for s in self.array.shape)
