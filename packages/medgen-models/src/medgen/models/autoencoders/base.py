"""What the MONAI-backed autoencoders (KL, VQ, MAISI) share: shape arithmetic and weights.

A wrapper holds the MONAI network as ``self.net`` (so its state dict keys are MONAI's, under
``net.``) and implements :class:`medgen.models.autoencoders.protocol.Autoencoder` around it.
:meth:`MonaiAutoencoder.load_weights` reads a local file into ``self.net``, accepting MONAI's
own keys (as a MONAI tutorial or MAISI saves them) or this wrapper's (``net.`` prefixed).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from medgen.models.autoencoders.protocol import check_divisible
from medgen.models.autoencoders.weights import load_into, read_state_dict


class MonaiAutoencoder(nn.Module):
    """Base of the wrappers: subclasses set ``net``, the four attributes and ``_head_modules``."""

    spatial_dims: int
    in_channels: int
    latent_channels: int
    downsample: int
    net: nn.Module
    #: how to obtain pretrained weights, appended to a missing-file error
    weights_hint: str = "pass the path of a local weights file (MedGen never downloads)"

    def check_shape(self, shape: Sequence[int]) -> None:
        """ValueError naming the axis, its size and ``downsample`` when a size does not divide."""
        check_divisible(shape, self.spatial_dims, self.downsample, type(self).__name__)
        if int(shape[1]) != self.in_channels:
            raise ValueError(
                f"{type(self).__name__}: expected {self.in_channels} input channels, "
                f"got {int(shape[1])} (shape {tuple(shape)})"
            )

    def latent_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        """``(B, latent_channels, *spatial / downsample)`` for an input of ``shape``."""
        self.check_shape(shape)
        b, _, *sizes = (int(s) for s in shape)
        return (b, self.latent_channels, *(s // self.downsample for s in sizes))

    def _check_latent(self, z: torch.Tensor) -> None:
        if z.ndim != self.spatial_dims + 2 or z.shape[1] != self.latent_channels:
            raise ValueError(
                f"{type(self).__name__}.decode: expected a latent (B, {self.latent_channels}, "
                f"{'D, ' if self.spatial_dims == 3 else ''}H, W), got {tuple(z.shape)}"
            )

    def _head_modules(self) -> list[nn.Module]:
        raise NotImplementedError

    def decoder_head(self) -> list[nn.Parameter]:
        """Parameters of the last decoder stage (after the last upsampling; see subclasses)."""
        params = [p for m in self._head_modules() for p in m.parameters()]
        if not params:
            raise RuntimeError(f"{type(self).__name__}: the decoder head has no parameters")
        return params

    def last_layer(self) -> nn.Parameter:
        """The weight of the decoder's output convolution (for :func:`.adaptive_gan_weight`)."""
        convs = [m for m in self.net.decoder.modules() if isinstance(m, nn.modules.conv._ConvNd)]
        return convs[-1].weight

    def load_weights(
        self, path: str | Path, expected_sha256: str | None = None
    ) -> MonaiAutoencoder:
        """Load a local safetensors / torch state dict into the MONAI network; returns self.

        Keys may be MONAI's own (``encoder.blocks.0...``) or this wrapper's (``net.encoder...``);
        nested layouts (``state_dict``, ``unet_state_dict``, ...) are unwrapped. A missing file,
        a truncated file or a state dict of another architecture or latent size is a one-line
        error naming the file; the weights are unchanged then.
        """
        state = read_state_dict(path, self.weights_hint, expected_sha256)
        load_into(self.net, state, path)
        return self


def modules_after_last(blocks: Sequence[nn.Module], kind: type | tuple[type, ...]) -> list:
    """The blocks after the last one of type ``kind`` (all blocks if there is none)."""
    idx = [i for i, b in enumerate(blocks) if isinstance(b, kind)]
    return list(blocks[idx[-1] + 1 :]) if idx else list(blocks)
