"""Latent CutMix (SBLDM): a box of one sample's diffusion-space tensor pasted into another's.

Applied to the clean ``x0`` (and its per-voxel loss weights) before noising, so the noised
input, the training target and the loss mask are all built from the mixed sample and agree.
Each sample is mixed with probability ``prob`` with a partner drawn from the batch (never
itself when the batch has two or more samples); the box covers a fraction 1 - lambda of the
volume (CutMix's lambda ~ U(0, 1): side ``size * (1 - lambda) ** (1 / d)`` on each of the d
spatial axes, 2D or 3D) at a random position. Conditioning stays the receiving sample's.
"""

from __future__ import annotations

import torch


def latent_cutmix(
    x0: torch.Tensor,
    weights: torch.Tensor | None,
    prob: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(mixed x0, mixed weights, (B,) bool: which samples were mixed); see the module doc.

    Every random number comes from ``generator`` (CPU), in a fixed order, so a resumed run
    draws the same boxes. ``prob`` 0 returns the inputs unchanged (and draws nothing).
    """
    if not 0 <= prob <= 1:
        raise ValueError(f"latent_cutmix: prob must be in [0, 1], got {prob}")
    b = x0.shape[0]
    mixed = torch.zeros(b, dtype=torch.bool)
    if prob == 0 or b < 2:
        return x0, weights, mixed
    mixed = torch.rand((b,), generator=generator) < prob
    shift = torch.randint(1, b, (b,), generator=generator)
    partner = (torch.arange(b) + shift) % b
    sizes = x0.shape[2:]
    lam = torch.rand((b,), generator=generator)
    starts = torch.rand((b, len(sizes)), generator=generator)
    box = torch.zeros((b, 1, *sizes), dtype=torch.bool)
    for i in torch.nonzero(mixed).flatten().tolist():
        index = []
        for axis, size in enumerate(sizes):
            side = max(1, round(size * float(1 - lam[i]) ** (1 / len(sizes))))
            lo = int(float(starts[i, axis]) * (size - side + 1))
            index.append(slice(lo, lo + side))
        box[(i, slice(None), *index)] = True
    box = box.to(x0.device)
    out = torch.where(box, x0[partner.to(x0.device)], x0)
    if weights is not None:
        w = weights.expand(b, *weights.shape[1:])
        weights = torch.where(box, w[partner.to(w.device)], w)
    return out, weights, mixed
