"""Samplers: class-balanced oversampling, one-group-per-batch batching, and the resumable
batch sampler the training loader uses (:class:`ResumableBatchSampler`); all DDP-shardable.

``ClassBalancedSampler`` and ``GroupedBatchSampler`` shard like
``torch.utils.data.DistributedSampler``: every rank builds the *same* epoch
order (a permutation seeded by ``seed + epoch``; call ``set_epoch`` each epoch), the order is
padded by repeating its head (or, with ``drop_last``, cut) to a multiple of ``world_size``,
and rank ``r`` takes positions ``r, r + world_size, ...``. So the ranks' shards are disjoint
slices of one epoch order, cover all of it, and have the same length (no rank waits at a
collective for a batch that never comes). ``rank``/``world_size`` default to the initialised
``torch.distributed`` process group, else 0 / 1.

Oversampling by ``factor`` lists each positive item ``factor`` times per epoch, so a positive
share ``p`` becomes ``p f / (p f + 1 - p)`` (:func:`oversampled_share`): JS-DDPM's 12.2 %
lesion slices become 40.9 % at ``f = 5`` (the seed measured 41.3 % on sampled batches).

``ResumableBatchSampler`` shards *global batches* instead (rank ``r`` takes a contiguous
``batch_size`` block of each ``batch_size * world_size`` batch), drops the ragged tail, yields
``(item, seed)`` pairs, and starts from a checkpointed ``(epoch, start)`` position.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from medgen.data.errors import DataError


def oversampled_share(n_positive: int, n_negative: int, factor: int) -> float:
    """Share of positive items in an epoch where each positive is listed ``factor`` times."""
    return n_positive * factor / (n_positive * factor + n_negative)


def oversampled_indices(labels: Sequence[int], factor: int, positive: Sequence[int] = (1,)):
    """Item indices with each item whose label is in ``positive`` repeated ``factor`` times."""
    if int(factor) != factor or factor < 1:
        raise DataError(f"oversampling factor must be a positive integer, got {factor!r}")
    labels = np.asarray(labels)
    repeats = np.where(np.isin(labels, np.asarray(positive)), int(factor), 1)
    return np.repeat(np.arange(labels.size, dtype=np.int64), repeats)


def _dist_defaults(rank: int | None, world_size: int | None) -> tuple[int, int]:
    dist = torch.distributed
    ready = dist.is_available() and dist.is_initialized()
    if world_size is None:
        world_size = dist.get_world_size() if ready else 1
    if rank is None:
        rank = dist.get_rank() if ready else 0
    if world_size < 1 or not 0 <= rank < world_size:
        raise DataError(f"rank {rank} is not in [0, world_size={world_size})")
    return int(rank), int(world_size)


def _shard(order: list, rank: int, world_size: int, drop_last: bool) -> list:
    """Pad (repeating the head) or cut ``order`` to a multiple of ``world_size``; take a shard."""
    n = len(order)
    total = (n // world_size if drop_last else math.ceil(n / world_size)) * world_size
    if total > n:
        order = order + (order * math.ceil(total / max(n, 1)))[: total - n]
    return order[:total][rank:total:world_size]


class _EpochSeeded:
    epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Reseed the next epoch's order; call with the same value on every rank."""
        self.epoch = int(epoch)

    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(int(self.seed) + self.epoch)


class ClassBalancedSampler(_EpochSeeded, Sampler[int]):
    """Indices with positive-class items oversampled ``factor`` x, shuffled and sharded."""

    def __init__(
        self,
        labels: Sequence[int],
        factor: int,
        positive: Sequence[int] = (1,),
        shuffle: bool = True,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        drop_last: bool = False,
    ) -> None:
        self.items = oversampled_indices(labels, factor, positive)
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.rank, self.world_size = _dist_defaults(rank, world_size)

    def epoch_order(self) -> list[int]:
        """The whole epoch, identical on every rank, before sharding."""
        items = self.items
        if self.shuffle:
            items = items[torch.randperm(len(items), generator=self._generator()).numpy()]
        return items.tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(_shard(self.epoch_order(), self.rank, self.world_size, self.drop_last))

    def __len__(self) -> int:
        n, w = len(self.items), self.world_size
        return n // w if self.drop_last else math.ceil(n / w)


class GroupedBatchSampler(_EpochSeeded, Sampler[list[int]]):
    """Batches whose items all share one group (e.g. the MR mode a mode embedding expects).

    Each epoch: the items of every group are shuffled and cut into batches of ``batch_size``
    (a group's last, smaller batch is kept unless ``drop_last``), then the batches of all
    groups are shuffled together and sharded across ranks. ``items`` (default: every index
    once) may list indices several times, e.g. :func:`oversampled_indices`, to combine class
    balancing with grouping.
    """

    def __init__(
        self,
        groups: Sequence,
        batch_size: int,
        items: Sequence[int] | None = None,
        shuffle: bool = True,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        drop_last: bool = False,
    ) -> None:
        if int(batch_size) != batch_size or batch_size < 1:
            raise DataError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.groups = np.asarray(groups)
        self.items = np.arange(len(self.groups)) if items is None else np.asarray(items)
        if self.items.size and (self.items.min() < 0 or self.items.max() >= len(self.groups)):
            raise DataError(f"items must index the {len(self.groups)} groups given")
        self.batch_size, self.shuffle, self.seed = int(batch_size), shuffle, seed
        self.drop_last = drop_last
        self.rank, self.world_size = _dist_defaults(rank, world_size)

    def epoch_batches(self) -> list[list[int]]:
        """All batches of the epoch, identical on every rank, before sharding."""
        g = self._generator()
        item_groups = self.groups[self.items]
        batches: list[list[int]] = []
        for value in np.unique(item_groups):
            members = self.items[item_groups == value]
            if self.shuffle:
                members = members[torch.randperm(len(members), generator=g).numpy()]
            for start in range(0, len(members), self.batch_size):
                batch = members[start : start + self.batch_size].tolist()
                if len(batch) == self.batch_size or not self.drop_last:
                    batches.append(batch)
        if self.shuffle:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(_shard(self.epoch_batches(), self.rank, self.world_size, self.drop_last))

    def __len__(self) -> int:
        item_groups = self.groups[self.items]
        counts = np.unique(item_groups, return_counts=True)[1]
        rounding = np.floor if self.drop_last else np.ceil
        n = int(rounding(counts / self.batch_size).sum())
        w = self.world_size
        return n // w if self.drop_last else math.ceil(n / w)


def epoch_order(
    entries: np.ndarray,
    global_batch: int,
    seed: int,
    epoch: int,
    shuffle: bool = True,
    groups: np.ndarray | None = None,
) -> np.ndarray:
    """The epoch's entries as ``(n_batches, global_batch)`` item indices, identical on every
    rank: a permutation of ``entries`` seeded by ``(seed, epoch)``, cut into global batches
    (ragged tail dropped); with ``groups``, batches are cut within each group (sorted by group
    value) and the batches of all groups are then shuffled together."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch)]))
    order = entries[rng.permutation(entries.size)] if shuffle else entries
    if groups is None:
        n = order.size // global_batch
        return order[: n * global_batch].reshape(n, global_batch)
    parts = []
    item_groups = groups[order]
    for value in np.unique(item_groups):
        members = order[item_groups == value]
        n = members.size // global_batch
        parts.append(members[: n * global_batch].reshape(n, global_batch))
    batches = np.concatenate(parts) if parts else np.zeros((0, global_batch), np.int64)
    return batches[rng.permutation(len(batches))] if shuffle else batches


def item_seed(seed: int, epoch: int, position: int) -> int:
    """The seed of the item at ``position`` in the epoch order (for random crops)."""
    return int(np.random.SeedSequence([int(seed), int(epoch), int(position)]).generate_state(1)[0])


class ResumableBatchSampler(Sampler[list[tuple[int, int]]]):
    """The training loader's batch sampler: DDP-sharded, class-balanced, resumable mid-epoch.

    Every rank builds the same epoch order (:func:`epoch_order` over
    ``oversampled_indices(labels, oversample, positive)``, or over ``range(n_items)``), cut into
    global batches of ``batch_size * world_size``; rank ``r`` takes entries
    ``[r * batch_size, (r + 1) * batch_size)`` of each, so 2 ranks x B see exactly what 1 rank
    x 2B sees. Batches are lists of ``(item_index, item_seed)`` (:func:`item_seed` of the
    entry's position in the epoch order). Iteration starts at batch ``start`` of ``epoch`` and
    never moves them: whoever counts the delivered batches sets them (a DataLoader prefetches).
    """

    def __init__(
        self,
        n_items: int,
        batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        labels: Sequence[int] | None = None,
        oversample: int = 1,
        positive: Sequence[int] = (1,),
        groups: Sequence | None = None,
    ) -> None:
        for name, value in (("n_items", n_items), ("batch_size", batch_size)):
            if int(value) != value or value < 1:
                raise DataError(f"{name}: expected a positive integer, got {value!r}")
        if int(world_size) != world_size or world_size < 1 or not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is not in [0, world_size={world_size})")
        self.n_items, self.batch_size = int(n_items), int(batch_size)
        self.rank, self.world_size, self.shuffle = int(rank), int(world_size), bool(shuffle)
        self.seed, self.epoch, self.start = int(seed), 0, 0
        if labels is not None and len(labels) != self.n_items:
            raise DataError(f"labels: {len(labels)} labels for {self.n_items} items")
        if groups is not None and len(groups) != self.n_items:
            raise DataError(f"groups: {len(groups)} groups for {self.n_items} items")
        if labels is None and oversample != 1:
            raise DataError(f"oversample: {oversample!r} needs labels (the class of each item)")
        self.entries = (
            oversampled_indices(labels, oversample, positive)
            if labels is not None
            else np.arange(self.n_items, dtype=np.int64)
        )
        self.groups = None if groups is None else np.asarray(groups)
        if self.batches_per_epoch() == 0:
            raise DataError(
                f"batch_size: an epoch of {self.entries.size} entries holds no full global "
                f"batch of {self.batch_size} x {self.world_size} ranks = {self.global_batch}"
                + (" within one group" if self.groups is not None else "")
            )

    @property
    def global_batch(self) -> int:
        """Entries per step over all ranks: ``batch_size * world_size``."""
        return self.batch_size * self.world_size

    def epoch_batches(self, epoch: int) -> np.ndarray:
        """All global batches of ``epoch``: ``(batches_per_epoch, global_batch)`` indices."""
        return epoch_order(
            self.entries, self.global_batch, self.seed, epoch, self.shuffle, self.groups
        )

    def batches_per_epoch(self) -> int:
        """Batches each rank yields in a whole epoch (the same in every epoch)."""
        if self.groups is None:
            return self.entries.size // self.global_batch
        counts = np.unique(self.groups[self.entries], return_counts=True)[1]
        return int((counts // self.global_batch).sum())

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, seed, b = self.epoch, self.seed, self.batch_size
        batches = self.epoch_batches(epoch)
        for k in range(self.start, len(batches)):
            first = k * self.global_batch + self.rank * b
            chosen = batches[k, self.rank * b : (self.rank + 1) * b]
            yield [
                (int(i), item_seed(seed, epoch, first + p)) for p, i in enumerate(chosen.tolist())
            ]

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch() - self.start)

    def state_dict(self) -> dict:
        """``{"epoch", "start", "seed"}``: where the next ``__iter__`` begins."""
        return {"epoch": self.epoch, "start": self.start, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        """Resume at ``state`` (from :meth:`state_dict`); a bad value is a DataError naming it."""
        for key in ("epoch", "start", "seed"):
            value = state.get(key) if isinstance(state, dict) else None
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise DataError(f"sampler state {key}: expected an integer >= 0, got {value!r}")
        if state["start"] > self.batches_per_epoch():
            raise DataError(
                f"sampler state start: {state['start']} is past the {self.batches_per_epoch()} "
                "batches of an epoch"
            )
        self.epoch, self.start, self.seed = state["epoch"], state["start"], state["seed"]
