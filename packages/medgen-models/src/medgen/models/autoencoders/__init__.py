"""Autoencoders behind one protocol: KL-VAE, VQ-VAE and MAISI (MONAI's networks), DC-AE.

Also their losses (reconstruction, KL, perceptual, adversarial with the adaptive weight, mask
losses and metrics), local weights loading, and chunked encode / decode of large volumes.
:data:`AUTOENCODERS` maps a kind to its builder (the class: ``AUTOENCODERS["kl"](**kwargs)``).
"""

from __future__ import annotations

from medgen.models.autoencoders.chunked import (
    chunk_bounds,
    chunked_decode,
    chunked_encode,
    required_overlap,
    sliding_window_decode,
)
from medgen.models.autoencoders.dcae import DCAE_VARIANTS, DCAutoencoder
from medgen.models.autoencoders.discriminator import (
    adaptive_gan_weight,
    adversarial_loss,
    build_discriminator,
    discriminator_logits,
)
from medgen.models.autoencoders.kl import KLAutoencoder
from medgen.models.autoencoders.losses import kl_loss, reconstruction_loss
from medgen.models.autoencoders.maisi import MAISI_PRESET, MaisiAutoencoder
from medgen.models.autoencoders.perceptual import PerceptualLoss
from medgen.models.autoencoders.protocol import Autoencoder, AutoencoderOutput, check_divisible
from medgen.models.autoencoders.segmentation_losses import (
    SegmentationLoss,
    boundary_loss,
    dice_score,
    iou_score,
    signed_distance_map,
)
from medgen.models.autoencoders.vq import VQAutoencoder, codebook_stats
from medgen.models.autoencoders.weights import (
    MissingWeightsError,
    WeightsError,
    read_state_dict,
    sha256,
)

AUTOENCODERS = {
    "kl": KLAutoencoder,
    "vq": VQAutoencoder,
    "dcae": DCAutoencoder,
    "maisi": MaisiAutoencoder,
}

__all__ = [
    "AUTOENCODERS",
    "DCAE_VARIANTS",
    "MAISI_PRESET",
    "Autoencoder",
    "AutoencoderOutput",
    "DCAutoencoder",
    "KLAutoencoder",
    "MaisiAutoencoder",
    "MissingWeightsError",
    "PerceptualLoss",
    "SegmentationLoss",
    "VQAutoencoder",
    "WeightsError",
    "adaptive_gan_weight",
    "adversarial_loss",
    "boundary_loss",
    "build_discriminator",
    "check_divisible",
    "chunk_bounds",
    "chunked_decode",
    "chunked_encode",
    "codebook_stats",
    "dice_score",
    "discriminator_logits",
    "iou_score",
    "kl_loss",
    "read_state_dict",
    "reconstruction_loss",
    "required_overlap",
    "sha256",
    "signed_distance_map",
    "sliding_window_decode",
]
