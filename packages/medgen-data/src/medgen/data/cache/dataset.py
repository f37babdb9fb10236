"""``CacheDataset``: a map-style ``torch`` Dataset over the memory-mapped shards of a cache.

Items are dicts of CPU tensors, copied out of the memory map (contiguous, never sharing its
memory). ``modality_as="channels"`` stacks all modalities as channels; ``"mode"`` makes every
(item, modality) pair an item of one channel with its ``mode`` index (modality-major: index
``m * N + j`` is modality ``m`` of stored item ``j``). Volumes can be cropped: index
``(i, seed)`` draws the crop offsets from ``numpy.random.default_rng(seed)`` (what
:class:`~medgen.data.loading.samplers.ResumableBatchSampler` yields), a plain ``i`` takes the
centre crop, so a crop depends on the sampler's seed, never on the worker that loads it.

Shards are opened lazily in each process and dropped from the pickled state, so DataLoader
workers work with ``fork`` and ``spawn`` alike.
"""

from __future__ import annotations

import operator
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from medgen.data.cache.shards import open_shard, read_manifest, verify_cache
from medgen.data.errors import CacheError, DataError

MODALITY_AS = ("channels", "mode")


def _tensor(view: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(view, copy=True, order="C"))


def _scalar(value) -> torch.Tensor:
    return torch.tensor(int(value), dtype=torch.int64)


class CacheDataset(Dataset):
    """The items of the ``split`` (a name, a tuple of names, or None for all) of a cache.

    Keys: ``image`` float32 ``(C, *spatial)``, ``mask`` uint8 ``(1, *spatial)`` (with masks),
    ``valid`` bool ``(1, *spatial)`` (volumes), ``token``/``z_bin``/``class_id`` int64 0-d, and
    ``mode`` int64 0-d (``modality_as="mode"``). Pairs caches give ``thin``/``thick`` float32
    and ``thin_label``/``thick_label`` uint8 instead of ``image``/``mask``. ``verify`` re-hashes
    the selected shards once; ``crop`` (volumes only) is the ``(d, h, w)`` of a crop.
    """

    def __init__(
        self,
        directory: str | Path,
        split: str | tuple[str, ...] | None = "train",
        *,
        verify: bool = True,
        modality_as: str = "channels",
        crop: tuple[int, ...] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.manifest = read_manifest(self.directory)
        self.split = split
        if modality_as not in MODALITY_AS:
            raise DataError(f"modality_as: expected 'channels' or 'mode', got {modality_as!r}")
        self.modality_as = modality_as
        self.kind = self.manifest["kind"]
        self._entries = self._select(split)
        if verify:
            damaged = verify_cache(self.directory, self._entries)
            if damaged:
                raise CacheError(
                    f"{self.directory / 'shards' / damaged[0]}: shard damaged or missing (sha256 "
                    f"differs from the manifest; {len(damaged)} bad shard(s)); rebuild the cache"
                )
        self.crop = self._check_crop(crop)
        counts = [int(e["n_items"]) for e in self._entries]
        self._shard_of = np.repeat(np.arange(len(counts)), counts)
        self._item_of = np.concatenate([np.arange(n) for n in counts])
        self._n_stored = int(sum(counts))
        self._n_modes = len(self.manifest["modalities"]) if modality_as == "mode" else 1
        per_item = {k: [] for k in ("class_id", "token", "z_bin")}
        for entry in self._entries:
            arrays = open_shard(self.directory, entry)
            n = int(entry["n_items"])
            for key in per_item:
                values = arrays[key] if key in arrays else np.zeros(n, np.int64)
                per_item[key].append(np.array(values, dtype=np.int64))
        self._meta = {k: np.concatenate(v) for k, v in per_item.items()}
        self._subjects = np.repeat([e["subject"] for e in self._entries], counts)
        self._open: dict[int, dict[str, np.ndarray]] = {}
        self._pid = os.getpid()

    def _select(self, split) -> list[dict]:
        shards = self.manifest["shards"]
        if split is None:
            return list(shards)
        names = (split,) if isinstance(split, str) else tuple(split)
        existing = list(self.manifest["splits"])
        for name in names:
            if name not in existing:
                raise CacheError(
                    f"{self.directory}: split {name!r} is empty; this cache has the splits "
                    f"{', '.join(existing)}"
                )
        return [e for e in shards if e["split"] in names]

    def _check_crop(self, crop):
        if crop is None:
            return None
        if self.kind != "volumes":
            raise DataError(f"crop: applies to volumes caches only, this one holds {self.kind}")
        shape = self.manifest["item_shape"][1:]
        crop = tuple(int(c) for c in crop)
        if len(crop) != 3 or any(c < 1 or c > s for c, s in zip(crop, shape, strict=True)):
            raise DataError(f"crop: expected 3 sizes within the item shape {shape}, got {crop}")
        return crop

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_open"] = {}  # memory maps stay in the process that opened them
        return state

    def __len__(self) -> int:
        return self._n_stored * self._n_modes

    @property
    def channels(self) -> int:
        """Channels of ``image`` (or ``thin``/``thick``) per item."""
        return 1 if self.modality_as == "mode" else len(self.manifest["modalities"])

    def labels(self) -> np.ndarray:
        """``class_id`` of every item (int64, ``len(self)``)."""
        return np.tile(self._meta["class_id"], self._n_modes)

    def tokens(self) -> np.ndarray:
        """``token`` of every item (int64, ``len(self)``): z_bin + n_bins * class_id."""
        return np.tile(self._meta["token"], self._n_modes)

    def groups(self) -> np.ndarray:
        """The ``mode`` of every item (zeros with ``modality_as="channels"``)."""
        return np.repeat(np.arange(self._n_modes, dtype=np.int64), self._n_stored)

    def subjects(self) -> np.ndarray:
        """The subject pseudonym of every item."""
        return np.tile(self._subjects, self._n_modes)

    def spacings(self) -> np.ndarray:
        """The voxel spacing (z, y, x) in mm of every item's shard (float64, ``(len(self), 3)``):
        the spacing recorded when the shard was built (for pairs: the thin grid's)."""
        per_shard = np.array([e["spacing"] for e in self._entries], dtype=np.float64)
        per_item = per_shard[self._shard_of].reshape(self._n_stored, 3)
        return np.tile(per_item, (self._n_modes, 1))

    def stored(self, index: int, key: str) -> np.ndarray | None:
        """A copy of the stored array ``key`` of item ``index`` (e.g. a pairs cache's
        ``thick_z``), or None when its shard has no such array (an older cache)."""
        i = operator.index(index)
        arrays, row = self.stored_item((i + len(self) if i < 0 else i) % self._n_stored)
        return np.array(arrays[key][row]) if key in arrays else None

    def _arrays(self, shard: int) -> dict[str, np.ndarray]:
        if self._pid != os.getpid():  # a forked worker: open its own maps
            self._open, self._pid = {}, os.getpid()
        if shard not in self._open:
            self._open[shard] = open_shard(self.directory, self._entries[shard])
        return self._open[shard]

    def stored_item(self, index: int) -> tuple[dict[str, np.ndarray], int]:
        """``(arrays, row)`` of stored item ``index`` (``0 <= index < n_stored``, the items
        before any ``modality_as="mode"`` repetition): the memory-mapped arrays of its shard
        (opened once per process, read-only views: copy what you keep) and its row in them.
        For datasets over caches with other shard arrays (e.g. latent caches)."""
        if not 0 <= index < self._n_stored:
            raise IndexError(f"stored item {index} out of range for {self._n_stored} items")
        return self._arrays(int(self._shard_of[index])), int(self._item_of[index])

    def item_metadata(self, index: int) -> dict[str, torch.Tensor]:
        """``token``, ``z_bin`` and ``class_id`` of stored item ``index`` as int64 0-d tensors."""
        return {key: _scalar(self._meta[key][index]) for key in ("token", "z_bin", "class_id")}

    @property
    def n_stored(self) -> int:
        """Items stored in the selected shards (``len(self)`` without the mode repetition)."""
        return self._n_stored

    def __getitem__(self, index) -> dict[str, torch.Tensor]:
        seed = None
        if isinstance(index, tuple):
            index, seed = index
        i = operator.index(index)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        mode, j = divmod(i, self._n_stored)
        arrays, k = self.stored_item(j)
        channels = slice(mode, mode + 1) if self.modality_as == "mode" else slice(None)
        if self.kind == "pairs":
            item = {"thin": _tensor(arrays["thin"][k, channels])}
            item["thick"] = _tensor(arrays["thick"][k, channels])
            for key in ("thin_label", "thick_label"):
                if key in arrays:
                    item[key] = _tensor(arrays[key][k])
        elif self.kind == "volumes":
            item = self._volume(arrays, k, channels, seed)
        else:
            item = {"image": _tensor(arrays["image"][k, channels])}
            if "mask" in arrays:
                item["mask"] = _tensor(arrays["mask"][k])
        item.update(self.item_metadata(j))
        if self.modality_as == "mode":
            item["mode"] = _scalar(mode)
        return item

    def _volume(self, arrays, k: int, channels: slice, seed) -> dict[str, torch.Tensor]:
        shape = arrays["image"].shape[2:]
        size = self.crop or shape
        if seed is None or self.crop is None:
            start = [(n - c) // 2 for n, c in zip(shape, size, strict=True)]
        else:
            rng = np.random.default_rng(int(seed))
            start = [int(rng.integers(0, n - c + 1)) for n, c in zip(shape, size, strict=True)]
        window = tuple(slice(s, s + c) for s, c in zip(start, size, strict=True))
        item = {"image": _tensor(arrays["image"][(k, channels, *window)])}
        if "mask" in arrays:
            item["mask"] = _tensor(arrays["mask"][(k, slice(None), *window)])
        box = np.asarray(arrays["valid_box"][k]).reshape(3, 2)
        valid = torch.zeros((1, *size), dtype=torch.bool)
        lo = [max(0, int(b0) - s) for (b0, _), s in zip(box, start, strict=True)]
        hi = [min(c, int(b1) - s) for (_, b1), s, c in zip(box, start, size, strict=True)]
        if all(h > low for low, h in zip(lo, hi, strict=True)):
            valid[(0, *(slice(low, h) for low, h in zip(lo, hi, strict=True)))] = True
        item["valid"] = valid
        return item
