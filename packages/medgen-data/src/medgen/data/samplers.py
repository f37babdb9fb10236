"""Samplers: class-balanced oversampling and one-group-per-batch batching, both DDP-shardable.

Sharding follows ``torch.utils.data.DistributedSampler``: every rank builds the *same* epoch
order (a permutation seeded by ``seed + epoch``; call ``set_epoch`` each epoch), the order is
padded by repeating its head (or, with ``drop_last``, cut) to a multiple of ``world_size``,
and rank ``r`` takes positions ``r, r + world_size, ...``. So the ranks' shards are disjoint
slices of one epoch order, cover all of it, and have the same length (no rank waits at a
collective for a batch that never comes). ``rank``/``world_size`` default to the initialised
``torch.distributed`` process group, else 0 / 1.

Oversampling by ``factor`` lists each positive item ``factor`` times per epoch, so a positive
share ``p`` becomes ``p f / (p f + 1 - p)`` (:func:`oversampled_share`): JS-DDPM's 12.2 %
lesion slices become 40.9 % at ``f = 5`` (the seed measured 41.3 % on sampled batches).
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
