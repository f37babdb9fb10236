"""MONAI's ``DiffusionModelUNet`` wired to MedGen's token conditioning."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import DiffusionModelUNet
from torch import nn


class TokenConditionedUNet(nn.Module):
    """A ``spatial_dims``-generic UNet conditioned on one integer token per sample.

    The token (e.g. ``z_bin + n_bins * class``) indexes MONAI's class embedding, which is added
    to the timestep embedding. Timesteps are passed to the network as float32, never rounded
    through a low-precision dtype.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        num_tokens: int,
        channels: Sequence[int] = (32, 64, 64),
        attention_levels: Sequence[bool] = (False, False, True),
        num_res_blocks: int | Sequence[int] = 1,
        num_head_channels: int = 32,
        norm_num_groups: int = 16,
    ) -> None:
        super().__init__()
        if num_tokens < 1:
            raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
        self.num_tokens = int(num_tokens)
        self.net = DiffusionModelUNet(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=out_channels,
            channels=tuple(channels),
            attention_levels=tuple(attention_levels),
            num_res_blocks=num_res_blocks,
            num_head_channels=num_head_channels,
            norm_num_groups=norm_num_groups,
            num_class_embeds=self.num_tokens,
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
        if token is None:
            raise ValueError("TokenConditionedUNet needs a token per sample")
        if token.min() < 0 or token.max() >= self.num_tokens:
            raise ValueError(
                f"token out of range [0, {self.num_tokens}): got {int(token.min())}.."
                f"{int(token.max())}; the model was built for fewer bins/classes than the data"
            )
        return self.net(x, t.to(torch.float32), class_labels=token.long())
