"""Resampling an irregular slice stack (gaps, non-uniform spacing) onto uniform slice spacing.

Used by ``read_dicom(..., on_irregular="resample")``. The slices are already sorted along the
slice normal; ``along`` holds their offsets (mm) from the first one. The output grid runs from
the first to the last slice with ``spacing`` (chosen by
:func:`medgen.data.dicom.geometry.stack_geometry`), and each output slice is the linear
interpolation, along the normal, of the two input slices around it. Output slices that fall on
an input slice (within 1e-6 mm) are copied exactly. In-plane geometry is unchanged.
"""

from __future__ import annotations

import numpy as np

EXACT_MM = 1e-6


def regrid_slices(array: np.ndarray, along, spacing: float) -> np.ndarray:
    """``array`` (n, rows, cols) at offsets ``along`` -> (m, rows, cols) at ``k * spacing``.

    ``m = round(along[-1] / spacing) + 1``; float32 out.
    """
    along = np.asarray(along, dtype=np.float64)
    if array.shape[0] != len(along) or len(along) < 2:
        raise ValueError(f"need one offset per slice (>= 2), got {len(along)} for {array.shape}")
    if np.any(np.diff(along) <= 0) or spacing <= 0:
        raise ValueError("offsets must increase strictly and spacing must be positive")
    m = int(np.rint(along[-1] / spacing)) + 1
    targets = np.arange(m, dtype=np.float64) * spacing
    upper = np.clip(np.searchsorted(along, targets, side="left"), 1, len(along) - 1)
    lower = upper - 1
    weight = (targets - along[lower]) / (along[upper] - along[lower])
    weight = np.clip(weight, 0.0, 1.0)
    out = np.empty((m, *array.shape[1:]), dtype=np.float32)
    for k in range(m):
        w = float(weight[k])
        if w <= EXACT_MM / (along[upper[k]] - along[lower[k]]):
            out[k] = array[lower[k]]
        elif 1.0 - w <= EXACT_MM / (along[upper[k]] - along[lower[k]]):
            out[k] = array[upper[k]]
        else:
            a = array[lower[k]].astype(np.float64)
            b = array[upper[k]].astype(np.float64)
            out[k] = ((1.0 - w) * a + w * b).astype(np.float32)
    return out
