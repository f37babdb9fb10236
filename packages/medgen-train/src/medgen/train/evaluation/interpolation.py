"""The baselines of thick -> thin interpolation for one pairs item: its thick stack put on the
thin grid by linear and by cubic interpolation (:class:`medgen.data.PairVolumes` with
``prior="linear"`` / ``"cubic"``, the geometry of :func:`medgen.data.thick_to_thin`), on the
same ``(C, depth, H, W)`` grid, window and padding as the model's samples, and which of those
thin slices lie between slab centres."""

from __future__ import annotations

import numpy as np

from medgen.data import DataError, PairVolumes, positions_from_centres
from medgen.train.evaluation.paired import between_slices

BASELINES = ("linear", "cubic")


class InterpolationBaselines:
    """Linear and cubic interpolation of the thick stacks of ``items`` (a :class:`PairVolumes`
    at the run's depth, as ``medgen.train.tasks.data.open_items`` opens a pairs split)."""

    def __init__(self, items: PairVolumes) -> None:
        if not isinstance(items, PairVolumes):
            raise DataError(f"interpolation baselines need a pairs cache, got {type(items)}")
        self.items = items
        self.by_kind = {k: PairVolumes(items.pairs, depth=items.depth, prior=k) for k in BASELINES}

    def protocol(self) -> dict:
        """The geometry and the baselines, for the evaluation's protocol."""
        return {
            "baselines": {
                "linear": "thick stack interpolated linearly onto the thin grid (tent weights)",
                "cubic": "thick stack by Keys cubic convolution (a = -0.5, Catmull-Rom), "
                "edge slabs replicated",
            },
            "thickness_mm": self.items.thickness,
            "thick_spacing_mm": self.items.thick_spacing,
            "depth": self.items.depth,
            "beyond_edge_slabs": "thin slices before the first / after the last slab centre "
            "take the edge slab's value (no extrapolation)",
        }

    def item(self, index: int, truth: np.ndarray) -> dict:
        """Item ``index``'s ``linear`` and ``cubic`` (C, depth, H, W), ``between`` (bool per
        slice of the depth axis: real thin slices between slab centres), ``depth`` (real thin
        slices) and ``window_start`` (where a window of a longer volume starts); ``truth`` is
        the item's image as the evaluation holds it (checked against the cache)."""
        raw = self.items.raw(index)
        n = raw["thin"].shape[1]
        depth = self.items.depth
        start = 0 if n <= depth else (n - depth) // 2  # PairVolumes' centred window
        real = min(n, depth)
        if not np.array_equal(truth[:, :real], raw["thin"][:, start : start + real]):
            raise DataError(
                f"{self.items.pairs.directory}: item {index}'s thin volume does not match the "
                f"reference image evaluated against it (window start {start})"
            )
        u = positions_from_centres(n, raw["thin_spacing"], self.items.thick_centres(index))
        u = u[start : start + real]
        between = np.zeros(depth, bool)
        between[:real] = between_slices(u, raw["thick"].shape[1])
        out = {k: ds[index]["thick"].numpy() for k, ds in self.by_kind.items()}
        return {**out, "between": between, "depth": n, "window_start": start,
                "thin_spacing_mm": raw["thin_spacing"]}  # fmt: skip
