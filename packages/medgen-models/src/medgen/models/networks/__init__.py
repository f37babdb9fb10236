"""Denoising networks behind one :class:`Network` protocol: ``forward(x, t, conditioning)``."""

from medgen.models.networks.protocol import Network
from medgen.models.networks.unet import ConditionedUNet

__all__ = ["ConditionedUNet", "Network"]
