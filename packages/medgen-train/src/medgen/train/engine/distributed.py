"""Data-parallel training under ``torchrun`` (or ``srun``): PyTorch's process groups and
``DistributedDataParallel``.

``torchrun`` sets RANK, WORLD_SIZE and LOCAL_RANK; :func:`setup` then joins the group with
gloo on CPU or NCCL on CUDA. Every trained network is wrapped in
``torch.nn.parallel.DistributedDataParallel`` (:func:`wrap`), which averages gradients during
backward; gradient accumulation skips the all-reduce on all but the last micro-batch
(``no_sync``). Only rank 0 writes files; the helpers here reduce log values over ranks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from medgen.train.errors import MedGenError


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the job: rank, world size, local rank."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """More than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files."""
        return self.rank == 0


def setup(device: torch.device | None = None) -> DistContext:
    """Join the process group when launched by torchrun; a single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    ctx = DistContext(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        cuda = device is not None and device.type == "cuda"
        if cuda:
            torch.cuda.set_device(ctx.local_rank)
        dist.init_process_group("nccl" if cuda else "gloo")
    return ctx


def teardown() -> None:
    """Leave the process group (if any)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap(module: nn.Module, ctx: DistContext, find_unused_parameters: bool = False) -> nn.Module:
    """``module`` in ``DistributedDataParallel`` under DDP (which broadcasts rank 0's weights
    and buffers at construction), the module itself otherwise."""
    if not ctx.enabled:
        return module
    device = next(module.parameters()).device
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(
        module, device_ids=ids, find_unused_parameters=find_unused_parameters
    )


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (no-op without DDP)."""
    if ctx.enabled:
        dist.barrier()


def _device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_mean(value: float, ctx: DistContext) -> float:
    """The mean of ``value`` over ranks."""
    if not ctx.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_device())
    dist.all_reduce(t)
    return float(t) / ctx.world_size


def any_rank(*flags: bool, ctx: DistContext):
    """Each flag true on every rank when it is true on at least one (a stop signal, a failed
    write); one all-reduce for all of them. One flag gives a bool, several a tuple."""
    if ctx.enabled:
        t = torch.tensor([1.0 if f else 0.0 for f in flags], device=_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        flags = tuple(bool(v > 0) for v in t.tolist())
    return flags[0] if len(flags) == 1 else tuple(flags)


class RankFailed(MedGenError):
    """Another rank stopped with an error (its own message names the cause)."""


def raise_if_failed(error: BaseException | None, ctx: DistContext) -> None:
    """A collective every rank calls after work only some ranks do (rank 0's checks and
    writes): the failing rank re-raises its error, the others raise :class:`RankFailed`
    naming it, instead of waiting for it at the next collective until a timeout."""
    if not ctx.enabled:
        if error is not None:
            raise error
        return
    messages = gather(None if error is None else " ".join(str(error).split()), ctx)
    if error is not None:
        raise error
    failed = [(r, m) for r, m in enumerate(messages) if m is not None]
    if failed:
        rank, message = failed[0]
        raise RankFailed(f"rank {rank} failed: {message}")


def sum_over_ranks(values: dict[str, float], ctx: DistContext) -> dict[str, float]:
    """Each key's value summed over ranks (keys missing on a rank count as 0)."""
    if not ctx.enabled:
        return values
    keys = sorted(set().union(*gather(sorted(values), ctx)))
    t = torch.tensor([values.get(k, 0.0) for k in keys], dtype=torch.float64, device=_device())
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist(), strict=True))


def gather(obj, ctx: DistContext) -> list:
    """Every rank's ``obj`` (a picklable value), in rank order, on every rank."""
    if not ctx.enabled:
        return [obj]
    out: list = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out
