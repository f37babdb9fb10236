"""Evaluation of generated slices: nearest-real figures per bin and x0 diagnostics."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from medgen.models import DDPM
from medgen.train.metrics import dice, nearest_index, psnr, ssim


@dataclass
class SampleScore:
    z_bin: int
    nearest: int  # index into the real slices
    psnr: float
    ssim: float
    dice: float


def score_against_nearest_real(
    gen_images: np.ndarray,
    gen_masks: np.ndarray,
    gen_bins: np.ndarray,
    real_images: np.ndarray,
    real_masks: np.ndarray,
    real_bins: np.ndarray,
) -> list[SampleScore]:
    """For each generated (H, W) image: the real slice of its own bin nearest in MSE, and
    PSNR, SSIM (images) and Dice (masks) against it."""
    scores = []
    for img, msk, b in zip(gen_images, gen_masks, gen_bins, strict=True):
        members = np.flatnonzero(real_bins == b)
        if members.size == 0:
            raise ValueError(f"no real slice in bin {b} to compare with")
        j = int(members[nearest_index(img, real_images[members])])
        scores.append(
            SampleScore(
                int(b),
                j,
                psnr(img, real_images[j]),
                ssim(img, real_images[j]),
                dice(msk, real_masks[j]),
            )
        )
    return scores


def bin_mean_reference(real_images: np.ndarray, real_bins: np.ndarray) -> float:
    """Mean SSIM of each bin's mean image against the nearest real slice of that bin: what a
    model that only memorised per-bin averages would score."""
    values = []
    for b in np.unique(real_bins):
        members = real_images[real_bins == b]
        mean = members.mean(0)
        values.append(ssim(mean, members[nearest_index(mean, members)]))
    return float(np.mean(values))


@torch.no_grad()
def x0_psnr_by_bucket(
    model: nn.Module,
    strategy: DDPM,
    x0: torch.Tensor,
    tokens: torch.Tensor,
    n_buckets: int = 10,
    seed: int = 0,
) -> list[float]:
    """PSNR (dB, data range 2) of the model's x0 prediction per timestep bucket.

    Bucket k covers t in [k T/n, (k+1) T/n); one t per sample drawn within it. A healthy model
    is high at small t and falls smoothly; a negative PSNR at small t means the prediction or
    the schedule is inconsistent (the JS-DDPM failure). Channel 0 (the image) is scored, with
    x0 clipped to the data range [-1, 1] as the pixel-space sampler does.
    """
    T = strategy.num_train_timesteps
    g = torch.Generator().manual_seed(seed)
    out = []
    for k in range(n_buckets):
        lo, hi = k * T // n_buckets, (k + 1) * T // n_buckets
        t = torch.randint(lo, hi, (x0.shape[0],), generator=g).to(x0.device)
        noise = torch.randn(x0.shape, generator=g).to(x0)
        x_t = strategy.add_noise(x0, noise, t)
        pred, _ = strategy.predict_x0_eps(x_t, model(x_t, t, tokens), t)
        mse = ((pred[:, 0].clamp(-1, 1) - x0[:, 0]) ** 2).mean().item()
        out.append(10 * float(np.log10(4.0 / max(mse, 1e-12))))
    return out
