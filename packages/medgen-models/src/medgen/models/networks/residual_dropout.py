"""Dropout inside the residual blocks of MONAI's ``DiffusionModelUNet``, which has none.

DDPM (Ho et al. 2020), ADM (Dhariwal & Nichol 2021) and diffusers' ``ResnetBlock2D`` drop the
hidden activation right before each residual block's second convolution:
``norm1 -> act -> conv1 -> + temb -> norm2 -> act -> dropout -> conv2``, then ``+ skip``.
MONAI's ``DiffusionUNetResnetBlock`` is that block without the dropout. Here the dropout is a
forward pre-hook on every block's ``conv2``, so MONAI's forward runs unchanged and the state
dict keeps exactly its keys: a checkpoint trained without dropout loads into a network with
it, and the other way round. The hook is a plain object holding ``p``; it reads the training
flag from the convolution it is called on, so a ``copy.deepcopy`` (an EMA copy in eval mode)
drops only when that copy is in training mode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.nets.diffusion_model_unet import DiffusionUNetResnetBlock
from torch import nn


class ResidualDropout:
    """Forward pre-hook: ``F.dropout(input, p, training=conv.training)`` on a block's conv2."""

    def __init__(self, p: float) -> None:
        if not 0.0 <= float(p) < 1.0:
            raise ValueError(f"dropout: expected a probability in [0, 1), got {p}")
        self.p = float(p)

    def __call__(self, conv: nn.Module, args: tuple) -> tuple:
        """The hook: the first positional input dropped out while ``conv`` is training."""
        x: torch.Tensor = args[0]
        return (F.dropout(x, self.p, training=conv.training), *args[1:])

    def __repr__(self) -> str:
        return f"ResidualDropout(p={self.p})"


def residual_blocks(net: nn.Module) -> list[DiffusionUNetResnetBlock]:
    """Every MONAI residual block of ``net`` (down, middle and up blocks, and their resampling
    blocks when ``resblock_updown``), in module order."""
    return [m for m in net.modules() if isinstance(m, DiffusionUNetResnetBlock)]


def add_residual_dropout(net: nn.Module, p: float) -> int:
    """Drop the input of every residual block's ``conv2`` with probability ``p`` while
    training; returns the number of blocks given the dropout (0 when ``p`` is 0: nothing is
    registered). A ValueError unless ``0 <= p < 1``; registering twice is refused."""
    hook = ResidualDropout(p)
    if hook.p == 0.0:
        return 0
    blocks = residual_blocks(net)
    if any(dropout_hooks(b.conv2) for b in blocks):
        raise ValueError("this network already has residual dropout")
    for block in blocks:
        block.conv2.register_forward_pre_hook(hook)
    return len(blocks)


def dropout_hooks(module: nn.Module) -> list[ResidualDropout]:
    """The :class:`ResidualDropout` hooks registered on ``module`` and its submodules."""
    return [
        h
        for m in module.modules()
        for h in m._forward_pre_hooks.values()
        if isinstance(h, ResidualDropout)
    ]
