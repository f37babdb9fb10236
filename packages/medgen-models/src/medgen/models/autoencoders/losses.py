"""Autoencoder losses: L1 / L2 reconstruction and the closed-form KL of a diagonal Gaussian.

The adversarial loss and adaptive GAN weight are in :mod:`.discriminator`, the perceptual
loss in :mod:`.perceptual`, the mask losses in :mod:`.segmentation_losses`; the VQ terms are
MONAI's (:class:`medgen.models.autoencoders.vq.VQAutoencoder`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

RECONSTRUCTION_KINDS = ("l1", "l2")


def reconstruction_loss(x_hat: torch.Tensor, x: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """Mean absolute (``"l1"``) or squared (``"l2"``) error over every element."""
    if x_hat.shape != x.shape:
        raise ValueError(
            f"reconstruction_loss: shapes differ, {tuple(x_hat.shape)} vs {tuple(x.shape)}"
        )
    if kind == "l1":
        return F.l1_loss(x_hat, x)
    if kind == "l2":
        return F.mse_loss(x_hat, x)
    raise ValueError(
        f"reconstruction_loss: kind must be one of {RECONSTRUCTION_KINDS}, got {kind!r}"
    )


def kl_loss(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) summed over the latent's elements, averaged over the batch.

    ``0.5 * sum(mu^2 + sigma^2 - log sigma^2 - 1)`` per sample (as MONAI's tutorials compute it
    for ``AutoencoderKL``), then the batch mean. ``sigma`` is the standard deviation (> 0).
    """
    if mu.shape != sigma.shape:
        raise ValueError(f"kl_loss: mu {tuple(mu.shape)} and sigma {tuple(sigma.shape)} differ")
    var = sigma.pow(2)
    per_sample = 0.5 * (mu.pow(2) + var - torch.log(var) - 1).flatten(1).sum(1)
    return per_sample.mean()
