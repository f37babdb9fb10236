"""Denoising networks behind one :class:`Network` protocol: ``forward(x, t, conditioning)``:
MONAI's UNet (:class:`ConditionedUNet`) and the transformers :class:`DiT`, :class:`HDiT`,
:class:`UViT` (building blocks in :mod:`.transformer`)."""

from medgen.models.networks.dit import DIT_VARIANTS, DiT
from medgen.models.networks.hdit import HDiT
from medgen.models.networks.protocol import Network
from medgen.models.networks.unet import ConditionedUNet
from medgen.models.networks.uvit import UVIT_VARIANTS, UViT

__all__ = ["DIT_VARIANTS", "UVIT_VARIANTS", "ConditionedUNet", "DiT", "HDiT", "Network", "UViT"]
