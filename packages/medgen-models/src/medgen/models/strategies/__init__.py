"""Diffusion strategies: noise schedules, inference timesteps, DDPM, rectified flow, and the
:class:`Strategy` protocol both satisfy."""

from medgen.models.strategies import schedules
from medgen.models.strategies.ddpm import DDPM, PREDICTIONS
from medgen.models.strategies.flow import RectifiedFlow, resolution_shift, shift_time
from medgen.models.strategies.protocol import STRATEGIES, Strategy, strategy_from_config
from medgen.models.strategies.timesteps import SPACINGS, inference_timesteps

__all__ = [
    "DDPM",
    "PREDICTIONS",
    "SPACINGS",
    "STRATEGIES",
    "RectifiedFlow",
    "Strategy",
    "inference_timesteps",
    "resolution_shift",
    "schedules",
    "shift_time",
    "strategy_from_config",
]
