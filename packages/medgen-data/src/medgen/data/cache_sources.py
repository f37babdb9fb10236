"""Cache sources: a Volume (plus optional mask) as a :class:`ShardSource` of slices or pairs.

The source key is the content hash of the volumes and the recipe (never a path, an ``id`` or
``meta``), so the same scan gives the same shard whatever its file is called.
"""

from __future__ import annotations

import hashlib

import numpy as np

from medgen.data.cache_shards import ShardSource, volume_key
from medgen.data.slices import SliceSet, axial_slices
from medgen.data.thick_slices import simulate_thick, thick_mask, uint8_labels
from medgen.data.volume import Volume


def _key(*parts) -> str:
    return hashlib.sha256(":".join(str(p) for p in parts).encode()).hexdigest()


def slice_arrays(
    image: Volume,
    z_range: tuple[int, int],
    n_bins: int,
    size: int,
    mask_probability: Volume | None = None,
    class_id: int = 0,
) -> dict[str, np.ndarray]:
    """The arrays of a slice shard: :func:`medgen.data.slices.axial_slices` as a dict."""
    s = axial_slices(image, tuple(z_range), n_bins, size, mask_probability, class_id)
    return {k: getattr(s, k) for k in SliceSet.ARRAYS}


def pair_arrays(
    thin: Volume,
    thickness: float,
    spacing: float | None = None,
    profile: str = "box",
    label: Volume | None = None,
    class_id: int = 0,
) -> dict[str, np.ndarray]:
    """The arrays of a one-pair shard (see :func:`pair_source`)."""
    out = {
        "thin": np.asarray(thin.array, dtype=np.float32)[None, None],
        "thick": simulate_thick(thin, thickness, spacing, profile).array[None, None],
        "class_id": np.array([class_id], dtype=np.int64),
    }
    if label is not None:
        out["thin_label"] = uint8_labels(label)[None, None]
        out["thick_label"] = uint8_labels(thick_mask(label, thickness, spacing))[None, None]
    return out


def slice_source(
    image: Volume,
    z_range: tuple[int, int],
    n_bins: int,
    size: int,
    mask_probability: Volume | None = None,
    class_id: int = 0,
) -> ShardSource:
    """Axial slices of ``image`` (see :func:`medgen.data.slices.axial_slices`) as one shard."""
    mask_key = volume_key(mask_probability) if mask_probability is not None else "-"
    key = _key("slices", volume_key(image), mask_key, class_id, tuple(z_range), n_bins, size)

    def make() -> dict[str, np.ndarray]:
        return slice_arrays(image, z_range, n_bins, size, mask_probability, class_id)

    return ShardSource(key, make)


def pair_source(
    thin: Volume,
    thickness: float,
    spacing: float | None = None,
    profile: str = "box",
    label: Volume | None = None,
    class_id: int = 0,
) -> ShardSource:
    """A thick/thin pair of ``thin`` as a one-item shard: ``thin`` ``(1, 1, D, H, W)`` and
    ``thick`` ``(1, 1, Dk, H, W)`` float32, ``class_id`` ``(1,)``, plus nearest-neighbour
    ``thin_label`` / ``thick_label`` uint8 when ``label`` is given."""
    label_key = volume_key(label) if label is not None else "-"
    key = _key("pairs", volume_key(thin), label_key, class_id, thickness, spacing, profile)

    def make() -> dict[str, np.ndarray]:
        return pair_arrays(thin, thickness, spacing, profile, label, class_id)

    return ShardSource(key, make)
