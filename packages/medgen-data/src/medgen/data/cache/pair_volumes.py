"""``PairVolumes``: a pairs cache presented as fixed-size volumes for a conditional model.

Every item is the thin volume (the target) and its thick stack interpolated onto the thin grid
(the prior, :func:`~medgen.data.slicing.thin_grid.thick_to_thin`), both ``(C, depth, H, W)``:
shorter volumes are padded with -1 at the end of the slice axis (``valid`` marks the real
voxels), longer ones give a window of ``depth`` thin slices (drawn from
``numpy.random.default_rng(seed)`` for an index ``(i, seed)``, centred for a plain ``i``). The
prior is computed from the whole thick stack before the window is taken, so a window sees the
same values as the whole volume.

Items whose shard stores ``thick_z`` (the thick slice centres, mm from thin slice 0: real thick
series, and simulated stacks of caches built since) are interpolated from those centres
(:func:`~medgen.data.slicing.thin_grid.centres_to_thin`); older caches without it use the
recipe's geometry (:func:`~medgen.data.slicing.thin_grid.thick_to_thin`). Cubic needs evenly
spaced centres: an item with uneven ones is a DataError naming its subject.
"""

from __future__ import annotations

import math
import operator

import numpy as np
import torch
from torch.utils.data import Dataset

from medgen.data.cache.dataset import CacheDataset
from medgen.data.errors import DataError
from medgen.data.loading.collate import IMAGE_PAD
from medgen.data.slicing.thick import slab_centres
from medgen.data.slicing.thin_grid import (
    INTERPOLATIONS,
    centres_to_thin,
    thick_to_thin,
    uniform_step,
)


def _positive_int(key: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise DataError(f"{key}: expected an integer >= 1, got {value!r}")
    return int(value)


def _pad_or_window(x: torch.Tensor, start: int, depth: int, fill) -> torch.Tensor:
    """Slices ``[start, start + depth)`` of axis 1 of ``x`` (C, D, H, W), padded at the end."""
    part = x[:, start : start + depth]
    if part.shape[1] == depth:
        return part.contiguous()
    out = torch.full((x.shape[0], depth, *x.shape[2:]), fill, dtype=x.dtype)
    out[:, : part.shape[1]] = part
    return out


class PairVolumes(Dataset):
    """The items of a pairs :class:`~medgen.data.cache.dataset.CacheDataset` as fixed-size
    ``(C, depth, H, W)`` volumes with the thick stack on the thin grid as a prior.

    ``depth`` None: the largest thin depth over all the cache's items (every split), rounded up
    to a multiple of ``multiple``; an int must be >= 1 and a multiple of ``multiple``.
    ``prior``: ``"linear"`` or ``"cubic"`` (see :data:`~medgen.data.slicing.thin_grid.
    INTERPOLATIONS`). Keys: ``image``, ``thick`` float32 ``(C, depth, H, W)``; ``valid`` bool
    ``(1, depth, H, W)``; ``mask`` uint8 ``(1, depth, H, W)`` (caches with masks);
    ``token``/``z_bin``/``class_id`` int64 0-d; ``depth`` int64 0-d, the real thin depth.
    """

    def __init__(
        self,
        pairs: CacheDataset,
        depth: int | None = None,
        multiple: int = 1,
        prior: str = "linear",
    ) -> None:
        if not isinstance(pairs, CacheDataset) or pairs.kind != "pairs":
            where = getattr(pairs, "directory", type(pairs).__name__)
            kind = getattr(pairs, "kind", "no cache")
            raise DataError(f"{where}: PairVolumes needs a pairs cache, this one holds {kind}")
        if pairs.modality_as != "channels":
            raise DataError(
                f"{pairs.directory}: PairVolumes stacks modalities as channels; open the cache "
                f"with modality_as='channels', not {pairs.modality_as!r}"
            )
        if prior not in INTERPOLATIONS:
            raise DataError(
                f"prior: unknown interpolation {prior!r}; known: {', '.join(INTERPOLATIONS)}"
            )
        multiple = _positive_int("multiple", multiple)
        shards = pairs.manifest["shards"]
        if depth is None:
            longest = max(int(e["shapes"]["thin"][2]) for e in shards)
            depth = multiple * math.ceil(longest / multiple)
        else:
            depth = _positive_int("depth", depth)
            if depth % multiple:
                raise DataError(f"depth: {depth} is not a multiple of {multiple} (multiple)")
        self.pairs = pairs
        self.depth = depth
        self.prior = prior
        self._plane = tuple(int(n) for n in shards[0]["shapes"]["thin"][3:])
        recipe = pairs.manifest["recipe"]
        self._thickness = float(recipe["thickness"])
        spacing = recipe.get("thick_spacing")
        self._thick_spacing = self._thickness if spacing is None else float(spacing)
        self._spacings = pairs.spacings()
        self._has_mask = bool(pairs.manifest.get("has_mask"))

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(depth, H, W)`` of every item."""
        return (self.depth, *self._plane)

    @property
    def channels(self) -> list[str]:
        """The cache's modalities: the channels of ``image`` and ``thick``."""
        return list(self.pairs.manifest["modalities"])

    @property
    def thickness(self) -> float:
        """Simulated slice thickness (mm) from the cache's recipe."""
        return self._thickness

    @property
    def thick_spacing(self) -> float:
        """Thick slice spacing (mm) from the cache's recipe (the thickness when it was null)."""
        return self._thick_spacing

    def __len__(self) -> int:
        return len(self.pairs)

    def labels(self) -> np.ndarray:
        """``class_id`` of every item (delegates to the cache)."""
        return self.pairs.labels()

    def tokens(self) -> np.ndarray:
        """``token`` of every item (delegates to the cache)."""
        return self.pairs.tokens()

    def groups(self) -> np.ndarray:
        """The group of every item (delegates to the cache)."""
        return self.pairs.groups()

    def subjects(self) -> np.ndarray:
        """The subject pseudonym of every item (delegates to the cache)."""
        return self.pairs.subjects()

    def _index(self, index: int) -> int:
        i = operator.index(index)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        return i

    def thick_centres(self, index: int) -> np.ndarray:
        """The thick slice centres of item ``index`` (float64 ``(Dk,)``, mm from thin slice 0):
        stored ``thick_z``, else the recipe's simulated geometry."""
        i = self._index(index)
        stored = self.pairs.stored(i, "thick_z")
        if stored is not None:
            return stored.astype(np.float64)
        n = int(self.pairs[i]["thin"].shape[1])
        return slab_centres(n, float(self._spacings[i, 0]), self._thickness, self._thick_spacing)

    def prior_of(self, thick, index: int, kind: str | None = None):
        """``thick`` (C, Dk, H, W) of item ``index`` on its thin grid by ``kind`` (default: the
        dataset's ``prior``), from its stored centres when it has them (module docstring)."""
        i = self._index(index)
        kind = self.prior if kind is None else kind
        n, s = int(self.pairs[i]["thin"].shape[1]), float(self._spacings[i, 0])
        centres = self.pairs.stored(i, "thick_z")
        if centres is None:
            return thick_to_thin(thick, n, s, self._thickness, self._thick_spacing, kind=kind)
        if kind == "cubic" and len(centres) > 1 and uniform_step(centres) is None:
            raise DataError(
                f"{self.pairs.directory}: subject {self.pairs.subjects()[i]}: prior 'cubic' "
                "needs evenly spaced thick slices, this item's are not; use prior='linear'"
            )
        return centres_to_thin(thick, n, s, centres, kind=kind)

    def raw(self, index: int) -> dict:
        """The uncropped, unpadded item: ``thin`` (C, D, H, W) and ``thick`` (C, Dk, H, W)
        float32 numpy arrays, ``thick_z`` (:meth:`thick_centres`), ``thin_spacing`` (mm) and
        ``subject`` (pseudonym)."""
        i = self._index(index)
        item = self.pairs[i]
        return {
            "thin": item["thin"].numpy(),
            "thick": item["thick"].numpy(),
            "thick_z": self.thick_centres(i),
            "thin_spacing": float(self._spacings[i, 0]),
            "subject": str(self.pairs.subjects()[i]),
        }

    def __getitem__(self, index) -> dict[str, torch.Tensor]:
        seed = None
        if isinstance(index, tuple):
            index, seed = index
        i = self._index(index)
        item = self.pairs[i]
        thin = item["thin"]
        n = thin.shape[1]
        prior = self.prior_of(item["thick"], i)
        if n <= self.depth:
            start = 0
        elif seed is None:
            start = (n - self.depth) // 2
        else:
            start = int(np.random.default_rng(int(seed)).integers(0, n - self.depth + 1))
        valid = torch.ones((1, *thin.shape[1:]), dtype=torch.bool)
        out = {
            "image": _pad_or_window(thin, start, self.depth, IMAGE_PAD),
            "thick": _pad_or_window(prior, start, self.depth, IMAGE_PAD),
            "valid": _pad_or_window(valid, start, self.depth, False),
        }
        if "thin_label" in item:
            out["mask"] = _pad_or_window(item["thin_label"], start, self.depth, 0)
        for key in ("token", "z_bin", "class_id"):
            out[key] = item[key]
        out["depth"] = torch.tensor(n, dtype=torch.int64)
        return out
