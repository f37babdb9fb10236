"""Exponential moving average of named modules' weights, with decay warm-up."""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn


class EMA:
    """EMA copies of the parameters and buffers of the named ``modules``.

    The decay at update n is ``min(decay, (1 + n) / (10 + n))``: without the warm-up, decay
    0.999 still carries ~15% of the random initial weights after ~1,900 updates. Only the
    modules given are copied (the trained ones); frozen modules are never duplicated.
    ``dtype``: the copies' floating dtype (None: the modules'); float32 copies of bfloat16
    modules keep the average exact (in bfloat16 a step of 1 - 0.999 of the difference is below
    half an ulp and the average would never move).
    """

    def __init__(
        self,
        modules: Mapping[str, nn.Module],
        decay: float = 0.999,
        warmup: bool = True,
        dtype: torch.dtype | None = None,
    ) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        if not modules:
            raise ValueError("EMA needs at least one module")
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0
        self.modules = {
            name: copy.deepcopy(m).eval().requires_grad_(False) for name, m in modules.items()
        }
        if dtype is not None:
            for m in self.modules.values():
                m.to(dtype)

    def current_decay(self) -> float:
        """The decay the next update uses."""
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, modules: Mapping[str, nn.Module]) -> None:
        """Move every EMA copy towards the module of the same name."""
        d = self.current_decay()
        for name, ema_module in self.modules.items():
            live = modules[name]
            ema_p = list(ema_module.parameters())
            if ema_p:
                live_p = [
                    p.detach().to(e.dtype) for e, p in zip(ema_p, live.parameters(), strict=True)
                ]
                torch._foreach_lerp_(ema_p, live_p, 1.0 - d)
            for ema_b, b in zip(ema_module.buffers(), live.buffers(), strict=True):
                ema_b.copy_(b)
        self.num_updates += 1

    def state_dict(self) -> dict:
        """Counters only; the weights are saved as safetensors by the checkpoint."""
        return {"decay": self.decay, "warmup": self.warmup, "num_updates": self.num_updates}

    def load_state_dict(self, state: dict) -> None:
        """Restore the update count; decay and warm-up stay this object's (the settings of
        the resumed run)."""
        self.num_updates = int(state["num_updates"])
