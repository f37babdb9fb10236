"""medgen.cuda: fused Haar-wavelet and numerically stable diffusion sampler-step kernels.

Every op has three implementations with identical semantics: CUDA kernels (for CUDA tensors, when
compiled), C++/OpenMP kernels (CPU tensors) and a pure-PyTorch reference
(:mod:`medgen.cuda.reference`), used when the compiled extension is missing (announced once with
an :class:`ExtensionMissingWarning`) or disabled with ``MEDGEN_CUDA_DISABLE_EXTENSION=1``.
:func:`last_backend` / :func:`backend_counts` say which of the three the op calls ran.
"""

from __future__ import annotations

from ._coeffs import ALPHA_BAR_FLOOR
from ._extension import ExtensionMissingWarning, backend_counts, extension_available, last_backend
from .haar import haar_dwt, haar_dwt_multilevel, haar_idwt, haar_idwt_multilevel
from .steps import ddim_step, ddpm_step, euler_step

__version__ = "0.1.0"

__all__ = [
    "ALPHA_BAR_FLOOR",
    "ExtensionMissingWarning",
    "backend_counts",
    "ddim_step",
    "ddpm_step",
    "euler_step",
    "extension_available",
    "haar_dwt",
    "haar_dwt_multilevel",
    "haar_idwt",
    "haar_idwt_multilevel",
    "last_backend",
]
