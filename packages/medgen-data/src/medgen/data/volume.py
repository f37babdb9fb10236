"""The ``Volume`` value: voxels plus geometry, and nothing that identifies a patient."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


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
        return tuple(int(s) for s in self.array.shape)
