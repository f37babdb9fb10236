"""What a conditioned network receives besides (x_t, t): one frozen record per batch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Conditioning:
    """Per-batch conditioning for :class:`medgen.models.networks.unet.ConditionedUNet`.

    token: (B,) int z-bin x class tokens; mode: (B,) int mode ids; size_bins: (B, K) float
    vector for FiLM; priors: tensors concatenated as channels (a sequence, or a mapping
    name -> tensor); context: (B, N, D) cross-attention context (MONAI ``with_conditioning``).
    Every field is optional; the network rejects fields it was not built for and requires
    the ones it was. A Conditioning is what samplers pass as ``cond``.
    """

    token: torch.Tensor | None = None
    mode: torch.Tensor | None = None
    size_bins: torch.Tensor | None = None
    priors: Sequence[torch.Tensor] | Mapping[str, torch.Tensor] | None = None
    context: torch.Tensor | None = None
