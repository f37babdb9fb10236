"""MAISI's 3D autoencoder (Guo et al. 2024, NVIDIA): MONAI's ``AutoencoderKlMaisi``, 3D only.

:data:`MAISI_PRESET` is the published architecture (MONAI's MAISI tutorial config
``config_maisi.json``, ``autoencoder_def``): 1 -> 4 latent channels, widths 64/128/256 with 2
residual blocks each, no attention, hence 4x compression per axis, about 20M parameters. Its
weights (``autoencoder_epoch273.pt``) are licensed separately and never shipped or downloaded:
:meth:`MaisiAutoencoder.load_weights` reads a local file, MAISI's layout (the state dict under
``"unet_state_dict"``) included.

``num_splits`` / ``dim_split`` are MONAI's own split convolutions (each convolution runs over
``num_splits`` pieces of the tensor along ``dim_split`` with 3 voxels of overlap: less memory
per convolution, same result); MAISI's GroupNorm is computed over the whole volume. The preset
uses MAISI's 8 splits along dim 1; the whole-volume chunked decode is
:func:`medgen.models.autoencoders.chunked.chunked_decode`.
"""

from __future__ import annotations

from monai.apps.generation.maisi.networks.autoencoderkl_maisi import (
    AutoencoderKlMaisi,
    MaisiUpsample,
)
from torch import nn

from medgen.models.autoencoders.base import modules_after_last
from medgen.models.autoencoders.kl import KLAutoencoder

MAISI_PRESET: dict = {
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 1,
    "latent_channels": 4,
    "num_channels": (64, 128, 256),
    "num_res_blocks": (2, 2, 2),
    "norm_num_groups": 32,
    "norm_eps": 1e-6,
    "attention_levels": (False, False, False),
    "with_encoder_nonlocal_attn": False,
    "with_decoder_nonlocal_attn": False,
    "use_checkpointing": False,
    "use_convtranspose": False,
    "norm_float16": False,  # MAISI's GPU inference config sets True; float32 here
    "num_splits": 8,
    "dim_split": 1,
}

MAISI_WEIGHTS_HINT = (
    "MAISI's autoencoder weights are licensed separately (NVIDIA's licence forbids shipping "
    "them): download autoencoder_epoch273.pt from NVIDIA's MAISI model card (MONAI model zoo "
    "bundle maisi_ct_generative) yourself and pass its local path"
)


class MaisiAutoencoder(KLAutoencoder):
    """``AutoencoderKlMaisi`` with :data:`MAISI_PRESET`; keywords override preset entries.

    Only ``spatial_dims=3`` (MAISI's GroupNorm is 3D only). ``forward``, ``encode`` and the
    KL term are :class:`.KLAutoencoder`'s.
    """

    weights_hint = MAISI_WEIGHTS_HINT

    def __init__(self, **overrides) -> None:
        nn.Module.__init__(self)
        unknown = sorted(set(overrides) - set(MAISI_PRESET))
        if unknown:
            raise ValueError(
                f"MaisiAutoencoder: unknown argument(s) {unknown}; known: {sorted(MAISI_PRESET)}"
            )
        cfg = {**MAISI_PRESET, **overrides}
        if cfg["spatial_dims"] != 3:
            raise ValueError(
                f"MaisiAutoencoder: spatial_dims must be 3 (MAISI's GroupNorm is 3D only), "
                f"got {cfg['spatial_dims']}; use KLAutoencoder for 2D"
            )
        cfg["num_channels"] = tuple(cfg["num_channels"])
        self.config = dict(cfg)
        self.net = AutoencoderKlMaisi(**cfg, print_info=False, save_mem=False)
        self._set_attributes(
            3, cfg["in_channels"], cfg["latent_channels"], len(cfg["num_channels"])
        )

    def _head_modules(self) -> list[nn.Module]:
        return modules_after_last(self.net.decoder.blocks, MaisiUpsample)
