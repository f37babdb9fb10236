"""Batch sources over in-memory tensors whose data position is saved and restored exactly.

:class:`ShardedBatches` is the DistributedSampler-style source: each epoch is a permutation
drawn from ``seed + epoch``; every update takes the next ``batch_size x world_size`` indices
of it and rank r keeps its own contiguous slice, so 2 ranks x batch B see exactly the samples
that 1 rank x batch 2B sees. Its position is (epoch, offset): nothing else is needed to resume.

:class:`RandomDraws` draws indices with replacement from a generator the caller may share
(the quickstart draws indices and noise from one generator); its state is that generator's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _take(tensors: Sequence[torch.Tensor], idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return tuple(t[idx.to(t.device)] for t in tensors)


class ShardedBatches:
    def __init__(
        self,
        tensors: Sequence[torch.Tensor],
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
    ) -> None:
        self.tensors = tuple(tensors)
        self.n = int(self.tensors[0].shape[0])
        if any(int(t.shape[0]) != self.n for t in self.tensors):
            raise ValueError("all tensors must have the same first dimension")
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.global_batch = batch_size * world_size
        if self.global_batch > self.n:
            raise ValueError(
                f"batch {batch_size} x {world_size} ranks exceeds the {self.n} samples"
            )
        self.epoch, self.offset = 0, 0
        self._perm: torch.Tensor | None = None

    def _permutation(self) -> torch.Tensor:
        if self._perm is None:
            if self.shuffle:
                g = torch.Generator().manual_seed(self.seed + self.epoch)
                self._perm = torch.randperm(self.n, generator=g)
            else:
                self._perm = torch.arange(self.n)
        return self._perm

    def next_batch(self) -> tuple[torch.Tensor, ...]:
        if self.offset + self.global_batch > self.n:  # drop the ragged tail, next epoch
            self.epoch, self.offset, self._perm = self.epoch + 1, 0, None
        start = self.offset + self.rank * self.batch_size
        idx = self._permutation()[start : start + self.batch_size]
        self.offset += self.global_batch
        return _take(self.tensors, idx)

    def position(self) -> dict:
        return {"epoch": self.epoch, "offset": self.offset, "samples": self.n}

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "offset": self.offset, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])
        self.seed, self._perm = int(state["seed"]), None


class RandomDraws:
    def __init__(
        self,
        tensors: Sequence[torch.Tensor],
        batch_size: int,
        generator: torch.Generator,
    ) -> None:
        self.tensors = tuple(tensors)
        self.n = int(self.tensors[0].shape[0])
        self.batch_size, self.generator = batch_size, generator
        self.draws = 0

    def next_batch(self) -> tuple[torch.Tensor, ...]:
        idx = torch.randint(0, self.n, (self.batch_size,), generator=self.generator)
        self.draws += 1
        return _take(self.tensors, idx)

    def position(self) -> dict:
        return {"epoch": self.draws * self.batch_size // self.n, "draws": self.draws}

    def state_dict(self) -> dict:
        return {"draws": self.draws, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.draws = int(state["draws"])
        self.generator.set_state(state["generator"])
