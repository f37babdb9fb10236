"""KL-regularised autoencoder: MONAI's ``AutoencoderKL`` behind the Autoencoder protocol.

``encode`` returns the posterior mean (deterministic); ``forward`` samples
``z = mu + sigma * eps`` and returns the closed-form KL term (:func:`.losses.kl_loss`).
Pinaya et al. 2022 ("Brain imaging generation with latent diffusion models"); Rombach et al.
2022.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import Upsample
from monai.networks.nets import AutoencoderKL
from torch import nn

from medgen.models.autoencoders.base import MonaiAutoencoder, modules_after_last
from medgen.models.autoencoders.losses import kl_loss
from medgen.models.autoencoders.protocol import AutoencoderOutput


class KLAutoencoder(MonaiAutoencoder):
    """MONAI ``AutoencoderKL`` (2D or 3D); ``downsample = 2 ** (len(channels) - 1)``.

    The defaults are a small no-attention network (attention over a whole 3D volume does not
    fit memory; it also prevents exact chunked decoding). Other keywords go to MONAI.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int | None = None,
        latent_channels: int = 3,
        channels: Sequence[int] = (32, 64, 64),
        num_res_blocks: int | Sequence[int] = 1,
        attention_levels: Sequence[bool] | None = None,
        norm_num_groups: int = 32,
        with_nonlocal_attn: bool = False,
        **monai_kwargs,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"KLAutoencoder: spatial_dims must be 2 or 3, got {spatial_dims}")
        channels = tuple(int(c) for c in channels)
        self.net = AutoencoderKL(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=in_channels if out_channels is None else out_channels,
            num_res_blocks=num_res_blocks,
            channels=channels,
            attention_levels=attention_levels or (False,) * len(channels),
            latent_channels=latent_channels,
            norm_num_groups=norm_num_groups,
            with_encoder_nonlocal_attn=with_nonlocal_attn,
            with_decoder_nonlocal_attn=with_nonlocal_attn,
            **monai_kwargs,
        )
        self._set_attributes(spatial_dims, in_channels, latent_channels, len(channels))

    def _set_attributes(self, spatial_dims, in_channels, latent_channels, levels) -> None:
        self.spatial_dims = int(spatial_dims)
        self.in_channels = int(in_channels)
        self.latent_channels = int(latent_channels)
        self.downsample = 2 ** (int(levels) - 1)

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, sigma)`` of the diagonal Gaussian posterior q(z | x)."""
        self.check_shape(x.shape)
        return self.net.encode(x)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The posterior mean (deterministic)."""
        return self.posterior(x)[0]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent -> data."""
        self._check_latent(z)
        return self.net.decode(z)

    def forward(self, x: torch.Tensor) -> AutoencoderOutput:
        """Sample z = mu + sigma * eps, decode; terms ``{"kl": batch-mean KL}``."""
        mu, sigma = self.posterior(x)
        z = self.net.sampling(mu, sigma)
        return AutoencoderOutput(
            reconstruction=self.net.decode(z),
            latent=z,
            terms={"kl": kl_loss(mu, sigma)},
            stats={"latent_std": float(mu.detach().std()) if mu.numel() > 1 else 0.0},
        )

    def _head_modules(self) -> list[nn.Module]:
        # the last resolution level: the blocks after the last upsampling layer
        return modules_after_last(self.net.decoder.blocks, Upsample)
