"""medgen.models: schedules, diffusion strategies, samplers, spaces and conditioned networks."""

from medgen.models import conditioning, samplers, schedules, spaces
from medgen.models.conditioning import Conditioning, FiLM, ModeEmbedding, TokenEmbedding
from medgen.models.ddpm import DDPM, PREDICTIONS
from medgen.models.flow import RectifiedFlow
from medgen.models.loss_weighting import diffusion_loss, masked_mean_per_sample, min_snr_weight
from medgen.models.samplers import ddim
from medgen.models.spaces import (
    LatentSpace,
    PixelSpace,
    Space,
    SpaceToDepth,
    WaveletSpace,
    space_from_config,
)
from medgen.models.strategy import Strategy, strategy_from_config
from medgen.models.timesteps import inference_timesteps
from medgen.models.unet import ConditionedUNet, TokenConditionedUNet

__version__ = "0.1.0"

__all__ = [
    "DDPM",
    "PREDICTIONS",
    "ConditionedUNet",
    "Conditioning",
    "FiLM",
    "LatentSpace",
    "ModeEmbedding",
    "PixelSpace",
    "RectifiedFlow",
    "Space",
    "SpaceToDepth",
    "Strategy",
    "TokenConditionedUNet",
    "TokenEmbedding",
    "WaveletSpace",
    "conditioning",
    "ddim",
    "diffusion_loss",
    "inference_timesteps",
    "masked_mean_per_sample",
    "min_snr_weight",
    "samplers",
    "schedules",
    "space_from_config",
    "spaces",
    "strategy_from_config",
]
