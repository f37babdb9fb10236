"""Samplers as small functions with one signature (k-diffusion style); see :mod:`.loop`.

DDPM strategies: :func:`ddim` (+ :func:`ddim_invert`), :func:`ddpm`. Rectified flow:
:func:`euler`, :func:`heun`. Guidance: :class:`ClassifierFreeGuidance`; adaptive stopping:
:class:`EarlyStop`. Every update goes through :mod:`medgen.cuda`'s step ops.
"""

from medgen.models.samplers.ddim import ddim, ddim_invert
from medgen.models.samplers.ddpm import ddpm
from medgen.models.samplers.early_stop import EarlyStop
from medgen.models.samplers.flow import euler, heun
from medgen.models.samplers.guidance import ClassifierFreeGuidance

SAMPLERS = {"ddim": ddim, "ddpm": ddpm, "euler": euler, "heun": heun}

__all__ = [
    "SAMPLERS",
    "ClassifierFreeGuidance",
    "EarlyStop",
    "ddim",
    "ddim_invert",
    "ddpm",
    "euler",
    "heun",
]
