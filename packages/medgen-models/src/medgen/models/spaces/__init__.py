"""Spaces where diffusion runs: pixel, latent (any autoencoder), Haar wavelet, space-to-depth."""

from medgen.models.spaces.factory import SPACES, space_from_config
from medgen.models.spaces.latent import LatentSpace, measure_scale_factor, raw_encode
from medgen.models.spaces.pixel import PixelSpace
from medgen.models.spaces.protocol import Space
from medgen.models.spaces.space_to_depth import SpaceToDepth, depth_to_space, space_to_depth
from medgen.models.spaces.wavelet import WaveletSpace

__all__ = [
    "SPACES",
    "LatentSpace",
    "PixelSpace",
    "Space",
    "SpaceToDepth",
    "WaveletSpace",
    "depth_to_space",
    "measure_scale_factor",
    "raw_encode",
    "space_from_config",
    "space_to_depth",
]
