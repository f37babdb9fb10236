"""Data-parallel training under ``torchrun``: process group setup and gradient averaging.

``torchrun`` sets RANK, WORLD_SIZE and LOCAL_RANK; :func:`setup` then joins the group with
gloo on CPU or NCCL on CUDA. The engine averages gradients itself (one flat all-reduce per
update, after accumulation), so tasks call their plain module and accumulation needs no
``no_sync``. Only rank 0 writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
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
    if dist.is_initialized():
        dist.destroy_process_group()


def broadcast_parameters(model: nn.Module) -> None:
    """Start every rank from rank 0's weights and buffers."""
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(t.data, src=0)


def average_gradients(model: nn.Module, world_size: int) -> None:
    """Average gradients over ranks in one flat all-reduce of the same layout on every rank:
    a parameter that has no gradient on some ranks (unused by their batch) counts as zero
    there, and one that has none on any rank keeps none."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    has = torch.tensor([p.grad is not None for p in params], dtype=grads[0].dtype)
    flat = torch.cat([g.reshape(-1) for g in grads] + [has.to(grads[0].device)])
    dist.all_reduce(flat)
    flat /= world_size
    used = (flat[-len(params) :] > 0).tolist()
    offset = 0
    for p, g, on_some_rank in zip(params, grads, used, strict=True):
        n = g.numel()
        if on_some_rank:
            g.copy_(flat[offset : offset + n].view_as(g))
            p.grad = g
        offset += n


def _device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_mean(value: float, ctx: DistContext) -> float:
    if not ctx.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_device())
    dist.all_reduce(t)
    return float(t) / ctx.world_size


def any_rank(flag: bool, ctx: DistContext) -> bool:
    """True on every rank when it is true on at least one (e.g. a stop signal)."""
    if not ctx.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def sum_over_ranks(values: dict[str, float], ctx: DistContext) -> dict[str, float]:
    """Each key's value summed over ranks (every rank must pass the same keys)."""
    if not ctx.enabled or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=_device())
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist(), strict=True))
