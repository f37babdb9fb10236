"""DC-AE: the deep-compression autoencoder (Chen et al. 2024, arXiv 2410.10733), 2D and 3D.

:class:`DCAutoencoder` is diffusers' ``AutoencoderDC`` written once for ``spatial_dims`` 2 or
3, with the same sub-module names: in 2D a diffusers state dict loads with ``strict=True`` and
the outputs are equal (tested). Stages ``0..n-1`` of ``ResBlock`` / ``EfficientViTBlock`` are
joined by ``n - 1`` resampling steps, each 2x per axis with DC-AE's residual space-to-channel
shortcut, so the in-plane factor is ``2 ** (n - 1)``. A stage-0 layer count of 0 (the published
f32c32/f64c128/f128c512 layouts) folds the first step into the input / output convolution.

3D: pixel (un)shuffle works on (D, H, W). ``downsample_depth`` (a power of two, at most the
in-plane factor) gives depth its own factor: depth is halved in the *last* (deepest)
``log2(downsample_depth)`` encoder steps and doubled in the mirrored *first* decoder steps;
the earlier steps are (1, 2, 2). That compresses in-plane first, as nnU-Net does for
anisotropic volumes whose slices are thicker than their pixels.

DC-AE 1.5 structured latent: with ``structured_latent=(min_channels, step)`` the training pass
keeps, per sample, the first ``c`` latent channels, ``c`` drawn uniformly from
``{min_channels, min_channels + step, ..., latent_channels}``, and zeroes the rest before
decoding (:func:`sample_channel_counts`, :func:`structured_channel_mask`; augmented diffusion
training applies the same two functions to its targets).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medgen.models.autoencoders.dcae_coders import DCDecoder, DCEncoder
from medgen.models.autoencoders.dcae_structured import (
    check_structured,
    sample_channel_counts,
    structured_channel_mask,
)
from medgen.models.autoencoders.protocol import AutoencoderOutput, check_divisible
from medgen.models.autoencoders.weights import load_into, read_state_dict

__all__ = [
    "DCAE_VARIANTS",
    "DCAutoencoder",
    "load_diffusers_state_dict",
    "sample_channel_counts",
    "structured_channel_mask",
]

WEIGHTS_HINT = (
    "download diffusion_pytorch_model.safetensors of e.g. mit-han-lab/dc-ae-f32c32-in-1.0-"
    "diffusers from the Hugging Face hub yourself and build the matching variant"
)
_VIT3 = ("ResBlock",) * 3
_BN_RELU = {"decoder_norm_types": ("batch_norm",) * 3, "decoder_act_fns": ("relu",) * 3}


def _published(channels: tuple[int, ...], latent: int) -> dict[str, Any]:
    """The mit-han-lab dc-ae-f{32,64,128}c* "in/mix" 1.0 layout (diffusers' conversion)."""
    n = len(channels)
    vit = ("EfficientViTBlock",) * (n - 3)
    return {
        "latent_channels": latent,
        "encoder_block_out_channels": channels,
        "decoder_block_out_channels": channels,
        "encoder_layers_per_block": (0, 4, 8) + (2,) * (n - 3),
        "decoder_layers_per_block": (0, 5, 10) + (2,) * (n - 3),
        "encoder_block_types": _VIT3 + vit,
        "decoder_block_types": _VIT3 + vit,
        "decoder_norm_types": _BN_RELU["decoder_norm_types"] + ("rms_norm",) * (n - 3),
        "decoder_act_fns": _BN_RELU["decoder_act_fns"] + ("silu",) * (n - 3),
        "encoder_qkv_multiscales": ((),) * n,  # EfficientViT's "EViT_GLU": no extra scale
        "decoder_qkv_multiscales": ((),) * n,
    }


#: Named layouts for :meth:`DCAutoencoder.from_variant`. ``f32c32`` / ``f64c128`` /
#: ``f128c512`` are mit-han-lab's dc-ae-*-in/mix-1.0 configs as diffusers' conversion script
#: defines them; ``f32c32_sana`` the SANA one (multi-scale attention, strided conv down,
#: interpolation up); ``f32c32_3d`` our 3D layout (f32 in-plane, 4x depth, half the widths, no
#: published weights); ``tiny`` a 2-step toy for tests.
DCAE_VARIANTS: dict[str, dict[str, Any]] = {
    "f32c32": _published((128, 256, 512, 512, 1024, 1024), 32),
    "f64c128": _published((128, 256, 512, 512, 1024, 1024, 2048), 128),
    "f128c512": _published((128, 256, 512, 512, 1024, 1024, 2048, 2048), 512),
    "f32c32_sana": {
        "latent_channels": 32,
        "encoder_block_out_channels": (128, 256, 512, 512, 1024, 1024),
        "decoder_block_out_channels": (128, 256, 512, 512, 1024, 1024),
        "encoder_layers_per_block": (2, 2, 2, 3, 3, 3),
        "decoder_layers_per_block": (3, 3, 3, 3, 3, 3),
        "encoder_block_types": _VIT3 + ("EfficientViTBlock",) * 3,
        "decoder_block_types": _VIT3 + ("EfficientViTBlock",) * 3,
        "encoder_qkv_multiscales": ((), (), (), (5,), (5,), (5,)),
        "decoder_qkv_multiscales": ((), (), (), (5,), (5,), (5,)),
        "downsample_block_type": "conv",
        "upsample_block_type": "interpolate",
    },
    "f32c32_3d": {
        "latent_channels": 32,
        "encoder_block_out_channels": (64, 128, 256, 256, 512, 512),
        "decoder_block_out_channels": (64, 128, 256, 256, 512, 512),
        "encoder_layers_per_block": (0, 2, 2, 1, 1, 1),
        "decoder_layers_per_block": (0, 2, 3, 1, 1, 1),
        "encoder_block_types": _VIT3 + ("EfficientViTBlock",) * 3,
        "decoder_block_types": _VIT3 + ("EfficientViTBlock",) * 3,
        "decoder_norm_types": _BN_RELU["decoder_norm_types"] + ("rms_norm",) * 3,
        "decoder_act_fns": _BN_RELU["decoder_act_fns"] + ("silu",) * 3,
        "downsample_depth": 4,
    },
    "tiny": {
        "latent_channels": 4,
        "encoder_block_out_channels": (8, 16, 32),
        "decoder_block_out_channels": (8, 16, 32),
        "encoder_layers_per_block": (1, 1, 1),
        "decoder_layers_per_block": (1, 1, 1),
        "encoder_block_types": ("ResBlock", "ResBlock", "EfficientViTBlock"),
        "decoder_block_types": ("ResBlock", "ResBlock", "EfficientViTBlock"),
        "attention_head_dim": 8,
    },
}


def _per_stage(value: Any, n: int, name: str) -> tuple:
    """``value`` repeated for ``n`` stages when a single item, else checked to have length n."""
    if isinstance(value, str) or value is None or isinstance(value, int):
        return (value,) * n
    value = tuple(value)
    if len(value) != n:
        raise ValueError(f"DCAutoencoder: {name} has {len(value)} entries for {n} stages")
    return value


def _check_layers(layers: tuple[int, ...], name: str) -> None:
    if any(int(k) < 0 for k in layers) or any(int(k) == 0 for k in layers[1:]):
        raise ValueError(
            f"DCAutoencoder: {name} must be >= 1 for every stage but the first (0 there folds "
            f"the first resampling into the input/output conv), got {layers}"
        )


class DCAutoencoder(nn.Module):
    """DC-AE, 2D or 3D, implementing the :class:`~medgen.models.autoencoders.protocol.
    Autoencoder` protocol (see the module docstring for the architecture and 3D factors).

    Arguments follow diffusers' ``AutoencoderDC`` (``*_block_types``, ``*_norm_types`` and
    ``*_act_fns`` take one value or one per stage; ``*_qkv_multiscales`` default to no extra
    scale, ``()`` per stage). ``downsample_block_type`` is ``"pixel_unshuffle"`` or ``"conv"``
    (strided), ``upsample_block_type`` ``"pixel_shuffle"`` or ``"interpolate"`` (nearest).
    The encoder uses RMSNorm and SiLU throughout, as diffusers does.

    Attributes: ``downsample`` (the in-plane factor ``2 ** (n - 1)``), ``factors`` (one per
    spatial axis, D first in 3D), ``steps`` (the per-axis factor of each resampling step, from
    the input side).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        latent_channels: int,
        encoder_block_out_channels: Sequence[int],
        decoder_block_out_channels: Sequence[int],
        encoder_layers_per_block: Sequence[int],
        decoder_layers_per_block: Sequence[int],
        encoder_block_types: str | Sequence[str] = "ResBlock",
        decoder_block_types: str | Sequence[str] = "ResBlock",
        attention_head_dim: int = 32,
        encoder_qkv_multiscales: Sequence[Sequence[int]] | None = None,
        decoder_qkv_multiscales: Sequence[Sequence[int]] | None = None,
        downsample_block_type: str = "pixel_unshuffle",
        upsample_block_type: str = "pixel_shuffle",
        decoder_norm_types: str | Sequence[str] = "rms_norm",
        decoder_act_fns: str | Sequence[str] = "silu",
        encoder_out_shortcut: bool = True,
        decoder_in_shortcut: bool = True,
        decoder_conv_act_fn: str = "relu",
        downsample_depth: int | None = None,
        structured_latent: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"DCAutoencoder: spatial_dims must be 2 or 3, got {spatial_dims}")
        enc_ch = tuple(int(c) for c in encoder_block_out_channels)
        dec_ch = tuple(int(c) for c in decoder_block_out_channels)
        n = len(enc_ch)
        if n < 2 or len(dec_ch) != n:
            raise ValueError(
                f"DCAutoencoder: encoder and decoder need the same number (>= 2) of stages, got "
                f"encoder_block_out_channels {enc_ch} and decoder_block_out_channels {dec_ch}"
            )
        enc_layers = _per_stage(encoder_layers_per_block, n, "encoder_layers_per_block")
        dec_layers = _per_stage(decoder_layers_per_block, n, "decoder_layers_per_block")
        _check_layers(enc_layers, "encoder_layers_per_block")
        _check_layers(dec_layers, "decoder_layers_per_block")
        if downsample_block_type not in ("pixel_unshuffle", "conv"):
            raise ValueError(
                "DCAutoencoder: downsample_block_type must be 'pixel_unshuffle' or 'conv', got "
                f"{downsample_block_type!r}"
            )
        if upsample_block_type not in ("pixel_shuffle", "interpolate"):
            raise ValueError(
                "DCAutoencoder: upsample_block_type must be 'pixel_shuffle' or 'interpolate', "
                f"got {upsample_block_type!r}"
            )
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.latent_channels = latent_channels
        self.downsample = 2 ** (n - 1)
        self.steps = self._steps(spatial_dims, n, downsample_depth)
        self.factors = tuple(math.prod(s[a] for s in self.steps) for a in range(spatial_dims))
        no_scales = ((),) * n
        self.encoder = DCEncoder(
            spatial_dims,
            in_channels,
            latent_channels,
            enc_ch,
            enc_layers,
            _per_stage(encoder_block_types, n, "encoder_block_types"),
            tuple(tuple(s) for s in (encoder_qkv_multiscales or no_scales)),
            attention_head_dim,
            self.steps,
            downsample_block_type == "pixel_unshuffle",
            encoder_out_shortcut,
        )
        self.decoder = DCDecoder(
            spatial_dims,
            in_channels,
            latent_channels,
            dec_ch,
            dec_layers,
            _per_stage(decoder_block_types, n, "decoder_block_types"),
            tuple(tuple(s) for s in (decoder_qkv_multiscales or no_scales)),
            attention_head_dim,
            _per_stage(decoder_norm_types, n, "decoder_norm_types"),
            _per_stage(decoder_act_fns, n, "decoder_act_fns"),
            self.steps,
            upsample_block_type == "interpolate",
            decoder_in_shortcut,
            decoder_conv_act_fn,
        )
        if structured_latent is not None:
            min_channels, step = (int(v) for v in structured_latent)
            check_structured(latent_channels, min_channels, step)
            structured_latent = (min_channels, step)
        self.structured_latent = structured_latent

    @staticmethod
    def _steps(spatial_dims: int, n: int, downsample_depth: int | None) -> list[tuple[int, ...]]:
        """Per-axis factor of each of the ``n - 1`` resampling steps (input side first)."""
        if downsample_depth is None:
            return [(2,) * spatial_dims] * (n - 1)
        if spatial_dims != 3:
            raise ValueError("DCAutoencoder: downsample_depth applies to spatial_dims=3 only")
        k = int(downsample_depth).bit_length() - 1
        if downsample_depth < 1 or 2**k != downsample_depth or k > n - 1:
            raise ValueError(
                f"DCAutoencoder: downsample_depth must be a power of two <= the in-plane factor "
                f"{2 ** (n - 1)}, got {downsample_depth}"
            )
        return [(2 if s >= n - 1 - k else 1, 2, 2) for s in range(n - 1)]

    @classmethod
    def from_variant(
        cls, name: str, spatial_dims: int = 2, in_channels: int = 1, **overrides: Any
    ) -> DCAutoencoder:
        """The layout ``DCAE_VARIANTS[name]``, with any constructor argument overridden.

        ``f32c32_3d`` defaults to ``spatial_dims=3``; other variants to 2.
        """
        if name not in DCAE_VARIANTS:
            raise ValueError(
                f"DCAutoencoder: unknown variant {name!r}; known: {sorted(DCAE_VARIANTS)}"
            )
        config = dict(DCAE_VARIANTS[name])
        if name.endswith("_3d") and "spatial_dims" not in overrides:
            spatial_dims = 3
        if spatial_dims == 2:
            config.pop("downsample_depth", None)
        config.update(overrides)
        return cls(spatial_dims=spatial_dims, in_channels=in_channels, **config)

    def check_shape(self, shape: Sequence[int]) -> None:
        """ValueError naming the axis, its size and factor when a spatial size does not divide."""
        check_divisible(shape, self.spatial_dims, self.factors, "DCAutoencoder")
        if int(shape[1]) != self.in_channels:
            raise ValueError(
                f"DCAutoencoder: expected {self.in_channels} input channels, got "
                f"{int(shape[1])} (shape {tuple(shape)})"
            )

    def latent_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        """(B, latent_channels, *spatial / factors) for an input of ``shape``."""
        self.check_shape(shape)
        spatial = (int(s) // f for s, f in zip(shape[2:], self.factors, strict=True))
        return (int(shape[0]), self.latent_channels, *spatial)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The deterministic latent (the encoder has no sampling and no batch statistics)."""
        self.check_shape(x.shape)
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent (B, latent_channels, *spatial) -> data."""
        if z.ndim != self.spatial_dims + 2 or z.shape[1] != self.latent_channels:
            raise ValueError(
                f"DCAutoencoder.decode: expected a latent (B, {self.latent_channels}, "
                f"{'D, ' if self.spatial_dims == 3 else ''}H, W), got {tuple(z.shape)}"
            )
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> AutoencoderOutput:
        """Encode and decode; in training with ``structured_latent``, channels beyond a
        per-sample count are zeroed first (global RNG). No regularisation terms."""
        z = self.encode(x)
        if self.training and self.structured_latent is not None:
            counts = sample_channel_counts(
                z.shape[0], self.latent_channels, *self.structured_latent, device=z.device
            )
            z = structured_channel_mask(z, counts)
        return AutoencoderOutput(reconstruction=self.decode(z), latent=z)

    def load_weights(self, path: str | Path, expected_sha256: str | None = None) -> DCAutoencoder:
        """Load a local weights file (e.g. a diffusers ``diffusion_pytorch_model.safetensors``;
        our own state dicts too) strictly; returns self. A missing file is an error naming
        the path and where to get the weights (MedGen never downloads)."""
        state = read_state_dict(path, WEIGHTS_HINT, expected_sha256)
        load_into(self, state, path)
        return self

    def decoder_head(self) -> list[nn.Parameter]:
        """The decoder's last stage: ``decoder.norm_out`` and ``decoder.conv_out``."""
        return [*self.decoder.norm_out.parameters(), *self.decoder.conv_out.parameters()]


def load_diffusers_state_dict(
    model: DCAutoencoder, state_dict: Mapping[str, torch.Tensor], source: str = "<state dict>"
) -> DCAutoencoder:
    """Load a diffusers ``AutoencoderDC`` state dict into a 2D :class:`DCAutoencoder` (the
    parameter names are the same; strict). A mismatch is one ``WeightsError`` line naming
    ``source`` and a few missing / unexpected / mis-shaped keys; the model is then unchanged."""
    if model.spatial_dims != 2:
        raise ValueError("load_diffusers_state_dict: diffusers' AutoencoderDC is 2D only")
    load_into(model, state_dict, source)
    return model
