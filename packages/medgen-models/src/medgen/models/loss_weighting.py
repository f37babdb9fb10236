"""Per-sample loss weights over timesteps."""

from __future__ import annotations

import torch


def min_snr_weight(snr: torch.Tensor, prediction: str, gamma: float = 5.0) -> torch.Tensor:
    """Min-SNR-gamma weights (Hang et al. 2023), expressed for the loss on each target.

    The x0-space weight min(SNR, gamma) becomes, on the network's own target,
    ``epsilon``: min(SNR, gamma) / SNR; ``v``: min(SNR, gamma) / (SNR + 1);
    ``sample``: min(SNR, gamma).
    """
    clipped = snr.clamp(max=gamma)
    if prediction == "epsilon":
        return clipped / snr
    if prediction == "v":
        return clipped / (snr + 1)
    if prediction == "sample":
        return clipped
    raise ValueError(f"unknown prediction {prediction!r}")
