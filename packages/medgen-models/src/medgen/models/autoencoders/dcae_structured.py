"""DC-AE 1.5 structured latent space (Chen et al. 2025, ICCV): channel-count masking.

While the autoencoder trains, each sample keeps only its first ``c`` latent channels, ``c``
drawn uniformly from ``{min_channels, min_channels + step, ..., latent_channels}``, and the
rest are zeroed before decoding, so early channels learn the structure and later ones the
detail. "Augmented diffusion training" applies the same draw and mask to its targets: both
sides use :func:`sample_channel_counts` and :func:`structured_channel_mask`.
"""

from __future__ import annotations

import torch


def sample_channel_counts(
    batch: int,
    latent_channels: int,
    min_channels: int,
    step: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """DC-AE 1.5: per-sample channel counts, uniform on ``{min, min + step, ..., latent}``.

    Returns a (batch,) int64 tensor; ``generator`` makes the draw reproducible (its device is
    used when ``device`` is not given). ValueError when the grid does not end at
    ``latent_channels`` or ``min_channels`` is not in ``[1, latent_channels]``.
    """
    check_structured(latent_channels, min_channels, step)
    n = (latent_channels - min_channels) // step + 1
    if device is None:
        device = generator.device if generator is not None else "cpu"
    idx = torch.randint(0, n, (batch,), generator=generator, device=device)
    return min_channels + step * idx


def check_structured(latent_channels: int, min_channels: int, step: int) -> None:
    """ValueError unless ``1 <= min_channels <= latent_channels``, ``step >= 1`` and ``step``
    divides ``latent_channels - min_channels``."""
    who = "structured latent (min_channels, channel_step)"
    if not 1 <= min_channels <= latent_channels:
        raise ValueError(
            f"{who}: min_channels must be in [1, latent_channels={latent_channels}], "
            f"got {min_channels}"
        )
    if step < 1 or (latent_channels - min_channels) % step:
        raise ValueError(
            f"{who}: channel_step must be >= 1 and divide latent_channels - min_channels = "
            f"{latent_channels - min_channels}, got {step}"
        )


def structured_channel_mask(z: torch.Tensor, n_keep: int | torch.Tensor) -> torch.Tensor:
    """``z`` with channels ``>= n_keep`` (per sample when a (B,) tensor) set to exactly zero."""
    keep = torch.as_tensor(n_keep, device=z.device).reshape(-1, 1)
    if keep.shape[0] not in (1, z.shape[0]):
        raise ValueError(f"structured_channel_mask: {keep.shape[0]} counts for batch {z.shape[0]}")
    mask = torch.arange(z.shape[1], device=z.device).reshape(1, -1) < keep
    mask = mask.reshape(*mask.shape, *(1,) * (z.ndim - 2))
    return torch.where(mask, z, torch.zeros((), dtype=z.dtype, device=z.device))
