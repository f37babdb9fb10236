"""Evaluation: image and mask metrics, nearest-real scoring with a speckle test, distribution
metrics with bootstrap intervals, regional metrics by lesion size, feature extractors
(``evaluation.features``), figures."""

from medgen.train.evaluation.bootstrap import bootstrap_ci
from medgen.train.evaluation.distribution import (
    SampleSizeError,
    cmmd,
    distribution_metrics,
    fid,
    kid,
    precision_recall,
)
from medgen.train.evaluation.diversity import diversity
from medgen.train.evaluation.finite import screen_samples
from medgen.train.evaluation.metrics import dice, laplacian_energy, nearest_index, psnr, ssim
from medgen.train.evaluation.msssim import MSSSIMSettings, ms_ssim, msssim_settings
from medgen.train.evaluation.nearest import (
    SPECKLE_RATIO,
    SampleScore,
    bin_mean_reference,
    score_samples,
    summarize,
)
from medgen.train.evaluation.regional import feret_diameter, lesions, regional_metrics

__all__ = [
    "SPECKLE_RATIO",
    "MSSSIMSettings",
    "SampleScore",
    "SampleSizeError",
    "bin_mean_reference",
    "bootstrap_ci",
    "cmmd",
    "dice",
    "distribution_metrics",
    "diversity",
    "feret_diameter",
    "fid",
    "kid",
    "laplacian_energy",
    "lesions",
    "ms_ssim",
    "msssim_settings",
    "nearest_index",
    "precision_recall",
    "psnr",
    "regional_metrics",
    "score_samples",
    "screen_samples",
    "ssim",
    "summarize",
]
