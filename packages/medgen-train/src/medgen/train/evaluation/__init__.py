"""Evaluation: image and mask metrics, nearest-real scoring with a speckle test, figures."""

from medgen.train.evaluation.metrics import dice, laplacian_energy, nearest_index, psnr, ssim
from medgen.train.evaluation.nearest import (
    SPECKLE_RATIO,
    SampleScore,
    bin_mean_reference,
    score_samples,
    summarize,
)

__all__ = [
    "SPECKLE_RATIO",
    "SampleScore",
    "bin_mean_reference",
    "dice",
    "laplacian_energy",
    "nearest_index",
    "psnr",
    "score_samples",
    "ssim",
    "summarize",
]
