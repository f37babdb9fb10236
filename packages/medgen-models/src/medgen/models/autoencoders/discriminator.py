"""GAN phase of autoencoder training: MONAI's patch discriminators and adversarial loss, and
the adaptive generator weight of Esser et al. 2021 (taming-transformers, VQGAN).

- :func:`build_discriminator`: ``"patch"`` (MONAI ``PatchDiscriminator``, PatchGAN) or
  ``"multiscale"`` (MONAI ``MultiScalePatchDiscriminator``, pix2pixHD), 2D or 3D;
- :func:`adversarial_loss`: MONAI ``PatchAdversarialLoss`` with ``"hinge"`` or
  ``"least_squares"`` (MONAI applies its own output activation: tanh for hinge, leaky ReLU
  for least squares);
- :func:`adaptive_gan_weight`: ``||grad_w L_rec|| / (||grad_w L_G|| + 1e-4)`` at the decoder's
  last layer ``w``, clamped to ``[0, max_weight]`` and detached.
"""

from __future__ import annotations

import torch
from monai.losses import PatchAdversarialLoss
from monai.networks.nets import MultiScalePatchDiscriminator, PatchDiscriminator
from torch import nn

DISCRIMINATORS = ("patch", "multiscale")
CRITERIA = ("hinge", "least_squares")


def build_discriminator(
    kind: str = "patch",
    spatial_dims: int = 2,
    in_channels: int = 1,
    channels: int = 64,
    num_layers_d: int = 3,
    num_d: int = 2,
    minimum_size_im: int = 64,
    **monai_kwargs,
) -> nn.Module:
    """A MONAI patch discriminator; ``num_d``/``minimum_size_im`` only for ``"multiscale"``.

    Both return a list: ``PatchDiscriminator`` its intermediate features and, last, the logits;
    ``MultiScalePatchDiscriminator`` a pair ``(logits per scale, features per scale)``. Pass
    the logits (``out[-1]`` or ``out[0]``) to :func:`adversarial_loss`.
    """
    if spatial_dims not in (2, 3):
        raise ValueError(f"build_discriminator: spatial_dims must be 2 or 3, got {spatial_dims}")
    if kind == "patch":
        return PatchDiscriminator(
            spatial_dims=spatial_dims,
            channels=channels,
            in_channels=in_channels,
            num_layers_d=num_layers_d,
            **monai_kwargs,
        )
    if kind == "multiscale":
        return MultiScalePatchDiscriminator(
            num_d=num_d,
            num_layers_d=num_layers_d,
            spatial_dims=spatial_dims,
            channels=channels,
            in_channels=in_channels,
            minimum_size_im=minimum_size_im,
            **monai_kwargs,
        )
    raise ValueError(f"build_discriminator: kind must be one of {DISCRIMINATORS}, got {kind!r}")


def discriminator_logits(output) -> torch.Tensor | list[torch.Tensor]:
    """The logits of a discriminator's output (either kind), as the adversarial loss takes them."""
    if isinstance(output, tuple):  # multiscale: (logits per scale, features)
        return list(output[0])
    return output[-1]


def adversarial_loss(criterion: str = "hinge") -> PatchAdversarialLoss:
    """MONAI's ``PatchAdversarialLoss`` (mean reduction) with ``"hinge"`` or ``"least_squares"``.

    Call it as ``loss(logits, target_is_real=..., for_discriminator=...)``.
    """
    if criterion not in CRITERIA:
        raise ValueError(
            f"adversarial_loss: criterion must be one of {CRITERIA}, got {criterion!r}"
        )
    return PatchAdversarialLoss(criterion=criterion, reduction="mean")


def adaptive_gan_weight(
    rec_loss: torch.Tensor,
    g_loss: torch.Tensor,
    last_layer: torch.Tensor,
    max_weight: float = 1e4,
    eps: float = 1e-4,
) -> torch.Tensor:
    """Esser et al.'s adaptive weight of the generator's adversarial loss (a detached scalar).

    ``||d rec_loss / d last_layer|| / (||d g_loss / d last_layer|| + eps)``, clamped to
    ``[0, max_weight]``. ``last_layer`` is the weight of the decoder's output layer; both losses
    must depend on it. The graph is kept (``retain_graph``) for the backward pass that follows.
    """
    if not last_layer.requires_grad:
        raise ValueError("adaptive_gan_weight: last_layer does not require grad")
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    weight = rec_grad.norm() / (g_grad.norm() + eps)
    return weight.clamp(0.0, max_weight).detach()
