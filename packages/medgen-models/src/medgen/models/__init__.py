"""medgen.models: schedules, diffusion strategies, samplers and conditioned networks."""

from medgen.models import schedules
from medgen.models.ddpm import DDPM, PREDICTIONS
from medgen.models.loss_weighting import min_snr_weight
from medgen.models.samplers import ddim
from medgen.models.timesteps import inference_timesteps
from medgen.models.unet import TokenConditionedUNet

__version__ = "0.1.0"

__all__ = [
    "DDPM",
    "PREDICTIONS",
    "TokenConditionedUNet",
    "ddim",
    "inference_timesteps",
    "min_snr_weight",
    "schedules",
]
