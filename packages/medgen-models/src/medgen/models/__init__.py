"""medgen.models: schedules, diffusion strategies, samplers, spaces and conditioned networks.

Layout: :mod:`.strategies` (schedules, timesteps, DDPM, rectified flow, the Strategy
protocol), :mod:`.samplers`, :mod:`.networks` (the Network protocol, ConditionedUNet, DiT, HDiT, UViT),
:mod:`.conditioning`, :mod:`.spaces`, :mod:`.losses`, :mod:`.autoencoders` (KL-VAE, VQ-VAE,
DC-AE, MAISI, their losses, chunked decoding). The names below are the public surface.
"""

from medgen.models import (
    autoencoders,
    conditioning,
    losses,
    networks,
    samplers,
    spaces,
    strategies,
)
from medgen.models.conditioning import Conditioning, FiLM, ModeEmbedding, TokenEmbedding
from medgen.models.losses import diffusion_loss, masked_mean_per_sample, min_snr_weight
from medgen.models.networks import ConditionedUNet, DiT, HDiT, Network, UViT
from medgen.models.samplers import ddim
from medgen.models.spaces import (
    LatentSpace,
    PixelSpace,
    Space,
    SpaceToDepth,
    WaveletSpace,
    space_from_config,
)
from medgen.models.strategies import (
    DDPM,
    PREDICTIONS,
    STRATEGIES,
    RectifiedFlow,
    Strategy,
    inference_timesteps,
    schedules,
    strategy_from_config,
)

__version__ = "0.2.0"

__all__ = [
    "DDPM",
    "PREDICTIONS",
    "STRATEGIES",
    "ConditionedUNet",
    "Conditioning",
    "DiT",
    "FiLM",
    "HDiT",
    "LatentSpace",
    "ModeEmbedding",
    "Network",
    "PixelSpace",
    "RectifiedFlow",
    "Space",
    "SpaceToDepth",
    "Strategy",
    "TokenEmbedding",
    "UViT",
    "WaveletSpace",
    "autoencoders",
    "conditioning",
    "ddim",
    "diffusion_loss",
    "inference_timesteps",
    "losses",
    "masked_mean_per_sample",
    "min_snr_weight",
    "networks",
    "samplers",
    "schedules",
    "space_from_config",
    "spaces",
    "strategies",
    "strategy_from_config",
]
