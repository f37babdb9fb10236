"""Batch sources: what the engine draws batches from, each able to save and restore exactly
where it is in the data.

:class:`LoaderBatches` is the training path: a ``torch.utils.data.DataLoader`` (workers,
pinned memory, prefetching, persistent workers) over a dataset, driven by a resumable batch
sampler (:class:`medgen.data.ResumableBatchSampler`: the same seeded epoch order on every
rank, each global batch split into per-rank shards, with per-item seeds for random crops).
The position is (epoch, batches delivered in that epoch): a DataLoader prefetches, so the
sampler's own progress is not the training's; on resume the loader restarts at the saved
position and delivers, bitwise, what the interrupted run would have.

:class:`ShardedBatches` serves in-memory tensors the same way (tests, small experiments).
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
from torch.utils.data import DataLoader, Dataset


class BatchSource(Protocol):
    """Yields batches and can say and restore exactly where it is in the data."""

    batch_size: int  # samples per batch on this rank (for images/s)

    def next_batch(self) -> Any:
        """The next batch (a new epoch starts by itself)."""
        ...

    def position(self) -> dict:
        """JSON-able data position for ``state.json`` (epoch and batch)."""
        ...

    def state_dict(self) -> dict:
        """What :meth:`load_state_dict` needs to continue exactly here."""
        ...

    def load_state_dict(self, state: dict) -> None:
        """Continue from a saved :meth:`state_dict`."""
        ...


def _ignore_stop_signals(worker_id: int) -> None:
    """DataLoader workers leave SIGINT / SIGTERM / SIGUSR1 to the training process (SLURM and
    a terminal's Ctrl-C signal every process of the job): the trainer checkpoints and stops,
    and the workers end with it."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)


class LoaderBatches:
    """Batches from a DataLoader over ``dataset`` with the resumable ``sampler``.

    ``sampler`` yields per-rank batches of dataset keys from its ``epoch`` / ``start``
    attributes (it does not advance them itself); this class counts what it delivers.
    Randomness in items must come from the keys' item seeds (as random crops do), not from
    worker RNG state, for a resumed run to see the same items.
    """

    def __init__(
        self,
        dataset: Dataset,
        sampler,
        *,
        num_workers: int = 0,
        pin_memory: bool = False,
        prefetch_factor: int | None = 2,
        persistent_workers: bool = True,
        collate_fn: Callable | None = None,
    ) -> None:
        self.sampler = sampler
        self.batch_size = int(sampler.batch_size)
        workers = num_workers > 0
        # the loader's own generator: creating an iterator (at resume, at each epoch) draws
        # a worker base seed from it, which must not advance the global torch RNG
        self.loader = DataLoader(
            dataset,
            batch_sampler=sampler,
            generator=torch.Generator().manual_seed(int(sampler.seed)),
            num_workers=num_workers,
            pin_memory=pin_memory,
            prefetch_factor=prefetch_factor if workers else None,
            persistent_workers=persistent_workers and workers,
            collate_fn=collate_fn,
            worker_init_fn=_ignore_stop_signals if workers else None,
        )
        self.epoch, self.batch = 0, 0
        self._iterator = None

    def _restart(self) -> None:
        self.sampler.epoch, self.sampler.start = self.epoch, self.batch
        self._iterator = iter(self.loader)

    def next_batch(self) -> Any:
        """The next batch; at the end of an epoch the next one begins."""
        if self._iterator is None:
            self._restart()
        try:
            batch = next(self._iterator)
        except StopIteration:
            self.epoch, self.batch = self.epoch + 1, 0
            self._restart()
            batch = next(self._iterator)  # the sampler guarantees >= 1 batch per epoch
        self.batch += 1
        return batch

    def position(self) -> dict:
        """Epoch and batches delivered within it; also the batches per epoch."""
        per_epoch = self.sampler.batches_per_epoch()
        return {"epoch": self.epoch, "batch": self.batch, "batches_per_epoch": per_epoch}

    def state_dict(self) -> dict:
        """The position and the sampler's seed."""
        return {"epoch": self.epoch, "batch": self.batch, "seed": int(self.sampler.seed)}

    def load_state_dict(self, state: dict) -> None:
        """Continue at a saved position (the loader restarts there on the next batch)."""
        if int(state["seed"]) != int(self.sampler.seed):
            raise ValueError(
                f"the checkpoint's data order has seed {state['seed']}, this run "
                f"{self.sampler.seed}"
            )
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
        self._iterator = None


def _take(tensors: Sequence[torch.Tensor], idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return tuple(t[idx.to(t.device)] for t in tensors)


class ShardedBatches:
    """In-memory tensors served like :class:`LoaderBatches`: each epoch is a permutation
    drawn from ``seed + epoch``; every update takes the next ``batch_size x world_size``
    indices and rank r keeps its contiguous slice, so 2 ranks x batch B see exactly the
    samples 1 rank x batch 2B sees. Position: (epoch, offset)."""

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
        """This rank's slice of the next global batch (the ragged tail of an epoch dropped)."""
        if self.offset + self.global_batch > self.n:
            self.epoch, self.offset, self._perm = self.epoch + 1, 0, None
        start = self.offset + self.rank * self.batch_size
        idx = self._permutation()[start : start + self.batch_size]
        self.offset += self.global_batch
        return _take(self.tensors, idx)

    def position(self) -> dict:
        """Epoch, offset into its permutation, and the sample count."""
        return {"epoch": self.epoch, "offset": self.offset, "samples": self.n}

    def state_dict(self) -> dict:
        """The position and the seed."""
        return {"epoch": self.epoch, "offset": self.offset, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        """Continue at a saved position."""
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])
        self.seed, self._perm = int(state["seed"]), None


def to_device(batch: dict, device: torch.device) -> dict:
    """The batch's tensors on ``device`` (other values as they are)."""
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
        for k, v in batch.items()
    }
