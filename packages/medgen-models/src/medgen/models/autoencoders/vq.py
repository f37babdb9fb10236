"""Vector-quantised autoencoder: MONAI's ``VQVAE`` (EMA codebook) behind the protocol.

``encode`` returns the quantized latent (the nearest codebook vectors; no codebook update);
``forward`` runs MONAI's quantizer (EMA update in training mode, commitment loss
``commitment_cost * ||sg[q] - z_e||^2``, straight-through estimator ``z_e + sg[q - z_e]``) and
returns ``terms={"vq": that loss}`` and codebook statistics of the batch's code indices
(:func:`codebook_stats`). Van den Oord et al. 2017; Tudosiu et al. 2022.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import prod

import torch
from monai.networks.nets import VQVAE
from torch import nn

from medgen.models.autoencoders.base import MonaiAutoencoder
from medgen.models.autoencoders.protocol import AutoencoderOutput


def codebook_stats(indices: torch.Tensor, num_embeddings: int) -> dict[str, float]:
    """Codebook usage of one batch of code indices.

    ``perplexity`` exp(H(p)) of the code frequencies p (1 = one code used, ``num_embeddings``
    = uniform; MONAI's ``VectorQuantizer.perplexity``), ``entropy`` H(p) in nats, ``usage``
    the fraction of codes used at least once, ``dead_codes`` the number never used, and
    ``perplexity_fraction`` = perplexity / num_embeddings.
    """
    counts = torch.bincount(indices.detach().flatten().long(), minlength=num_embeddings)
    p = counts.double() / max(int(counts.sum()), 1)
    nz = p[p > 0]
    entropy = float(-(nz * nz.log()).sum())
    used = int((counts > 0).sum())
    perplexity = float(torch.tensor(entropy, dtype=torch.float64).exp())
    return {
        "perplexity": perplexity,
        "perplexity_fraction": perplexity / num_embeddings,
        "entropy": entropy,
        "usage": used / num_embeddings,
        "dead_codes": float(num_embeddings - used),
    }


class VQAutoencoder(MonaiAutoencoder):
    """MONAI ``VQVAE`` (2D or 3D); ``latent_channels = embedding_dim``.

    ``downsample`` is the product of the strides in ``downsample_parameters`` (each
    ``(stride, kernel, dilation, padding)``); MONAI's default ``(2, 4, 1, 1)`` halves an even
    size exactly. Other keywords go to MONAI (``commitment_cost``, ``decay``, ...).
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int | None = None,
        channels: Sequence[int] = (32, 64),
        num_res_layers: int = 1,
        num_res_channels: Sequence[int] | int | None = None,
        num_embeddings: int = 256,
        embedding_dim: int = 3,
        downsample_parameters: Sequence[Sequence[int]] | None = None,
        upsample_parameters: Sequence[Sequence[int]] | None = None,
        commitment_cost: float = 0.25,
        **monai_kwargs,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"VQAutoencoder: spatial_dims must be 2 or 3, got {spatial_dims}")
        channels = tuple(int(c) for c in channels)
        down = tuple(tuple(p) for p in downsample_parameters or [(2, 4, 1, 1)] * len(channels))
        up = tuple(tuple(p) for p in upsample_parameters or [(2, 4, 1, 1, 0)] * len(channels))
        self.net = VQVAE(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=in_channels if out_channels is None else out_channels,
            channels=channels,
            num_res_layers=num_res_layers,
            num_res_channels=channels if num_res_channels is None else num_res_channels,
            downsample_parameters=down,
            upsample_parameters=up,
            num_embeddings=num_embeddings,
            embedding_dim=embedding_dim,
            commitment_cost=commitment_cost,
            **monai_kwargs,
        )
        self.spatial_dims = int(spatial_dims)
        self.in_channels = int(in_channels)
        self.latent_channels = int(embedding_dim)
        self.num_embeddings = int(num_embeddings)
        self.downsample = prod(int(p[0]) for p in down)

    @property
    def _ema(self):
        return self.net.quantizer.quantizer  # MONAI's EMAQuantizer

    def indices(self, x: torch.Tensor) -> torch.Tensor:
        """Code indices (B, *spatial / downsample) of ``x``; no codebook update."""
        self.check_shape(x.shape)
        return self._ema.quantize(self.net.encode(x))[2]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The quantized latent: codebook vectors nearest to the encoder's output."""
        return self._ema.embed(self.indices(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Quantized latent -> data (a latent off the codebook is decoded as it is)."""
        self._check_latent(z)
        return self.net.decode(z)

    def forward(self, x: torch.Tensor) -> AutoencoderOutput:
        """Quantize (straight-through), decode; ``terms={"vq"}``, codebook ``stats``."""
        self.check_shape(x.shape)
        z_e = self.net.encode(x)
        quantized, loss, indices = self._ema(z_e)  # EMA update when training
        return AutoencoderOutput(
            reconstruction=self.net.decode(quantized),
            latent=quantized,
            terms={"vq": loss},
            stats=codebook_stats(indices, self.num_embeddings),
        )

    def _head_modules(self) -> list[nn.Module]:
        # the last level: its residual units and the final (output) transposed convolution
        blocks = list(self.net.decoder.blocks)
        ups = [i for i, b in enumerate(blocks) if getattr(b, "is_transposed", False)]
        start = ups[-2] + 1 if len(ups) > 1 else 0
        return blocks[start:]
