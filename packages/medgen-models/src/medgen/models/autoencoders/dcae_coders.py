"""The encoder and decoder stacks of DC-AE (:mod:`.dcae`), 2D or 3D: ``conv_in``, stages of
``ResBlock`` / ``EfficientViTBlock`` joined by the resampling steps of :mod:`.dcae_blocks`, and
``conv_out`` with DC-AE's channel-averaging (encoder) / channel-repeating (decoder) shortcut;
sub-module names are diffusers' ``Encoder`` / ``Decoder`` ones, so their state dicts load."""

from __future__ import annotations

import torch
from torch import nn

from medgen.models.autoencoders.dcae_blocks import (
    ChannelRMSNorm,
    DownBlock,
    UpBlock,
    activation,
    conv_nd,
    make_block,
)


class DCEncoder(nn.Module):
    """conv_in, stages with their downsampling steps, conv_out (+ channel-averaging shortcut)."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        latent_channels: int,
        channels: tuple[int, ...],
        layers: tuple[int, ...],
        block_types: tuple[str, ...],
        scales: tuple[tuple[int, ...], ...],
        head_dim: int,
        steps: list[tuple[int, ...]],
        unshuffle: bool,
        out_shortcut: bool,
    ) -> None:
        super().__init__()
        n = len(channels)
        if layers[0] > 0:
            self.conv_in = conv_nd(spatial_dims, in_channels, channels[0], 3, 1, 1)
        else:
            self.conv_in = DownBlock(
                spatial_dims, in_channels, channels[1], steps[0], unshuffle, shortcut=False
            )
        stages = []
        for i in range(n):
            blocks = [
                make_block(
                    block_types[i],
                    spatial_dims,
                    channels[i],
                    head_dim,
                    "rms_norm",
                    "silu",
                    scales[i],
                )
                for _ in range(layers[i])
            ]
            if i < n - 1 and layers[i] > 0:
                blocks.append(
                    DownBlock(spatial_dims, channels[i], channels[i + 1], steps[i], unshuffle, True)
                )
            stages.append(nn.Sequential(*blocks))
        self.down_blocks = nn.ModuleList(stages)
        self.conv_out = conv_nd(spatial_dims, channels[-1], latent_channels, 3, 1, 1)
        self.out_shortcut = out_shortcut
        if out_shortcut and channels[-1] % latent_channels:
            raise ValueError(
                f"DCAutoencoder: encoder_out_shortcut needs the last encoder width "
                f"{channels[-1]} divisible by latent_channels {latent_channels}"
            )
        self.group_size = channels[-1] // latent_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Data -> latent."""
        h = self.conv_in(x)
        for stage in self.down_blocks:
            h = stage(h)
        z = self.conv_out(h)
        if self.out_shortcut:
            z = z + h.unflatten(1, (-1, self.group_size)).mean(dim=2)
        return z


class DCDecoder(nn.Module):
    """conv_in (+ channel-repeating shortcut), stages with upsampling steps, norm_out, act,
    conv_out."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        latent_channels: int,
        channels: tuple[int, ...],
        layers: tuple[int, ...],
        block_types: tuple[str, ...],
        scales: tuple[tuple[int, ...], ...],
        head_dim: int,
        norms: tuple[str, ...],
        acts: tuple[str, ...],
        steps: list[tuple[int, ...]],
        interpolate: bool,
        in_shortcut: bool,
        conv_act: str,
    ) -> None:
        super().__init__()
        n = len(channels)
        self.conv_in = conv_nd(spatial_dims, latent_channels, channels[-1], 3, 1, 1)
        self.in_shortcut = in_shortcut
        if in_shortcut and channels[-1] % latent_channels:
            raise ValueError(
                f"DCAutoencoder: decoder_in_shortcut needs the last decoder width "
                f"{channels[-1]} divisible by latent_channels {latent_channels}"
            )
        self.repeats = channels[-1] // latent_channels
        stages = []
        for i in range(n):
            blocks: list[nn.Module] = []
            if i < n - 1 and layers[i] > 0:
                blocks.append(
                    UpBlock(spatial_dims, channels[i + 1], channels[i], steps[i], interpolate, True)
                )
            blocks += [
                make_block(
                    block_types[i],
                    spatial_dims,
                    channels[i],
                    head_dim,
                    norms[i],
                    acts[i],
                    scales[i],
                )
                for _ in range(layers[i])
            ]
            stages.append(nn.Sequential(*blocks))
        self.up_blocks = nn.ModuleList(stages)  # index = stage; run from the deepest
        width = channels[0] if layers[0] > 0 else channels[1]
        self.norm_out = ChannelRMSNorm(width)
        self.conv_act = activation(conv_act)
        if layers[0] > 0:
            self.conv_out = conv_nd(spatial_dims, width, in_channels, 3, 1, 1)
        else:
            self.conv_out = UpBlock(
                spatial_dims, width, in_channels, steps[0], interpolate, shortcut=False
            )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Latent -> data."""
        h = self.conv_in(z)
        if self.in_shortcut:
            h = h + z.repeat_interleave(self.repeats, dim=1, output_size=z.shape[1] * self.repeats)
        for stage in reversed(self.up_blocks):
            h = stage(h)
        return self.conv_out(self.conv_act(self.norm_out(h)))
