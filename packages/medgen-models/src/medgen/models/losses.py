"""Diffusion loss weighting: Min-SNR-gamma, validity-masked per-sample means, per-channel losses.

Per-sample normalisation: each sample's loss is the mean of its error over its *valid* voxels
only (padding, stored as -1 with an explicit validity mask, is excluded), so a volume padded
to the batch's largest depth weighs the same as an unpadded one. The timestep weight multiplies
that per-sample mean, and the batch loss is the mean over samples.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from medgen.models.strategies.ddpm import PREDICTIONS


def min_snr_weight(snr: torch.Tensor, prediction: str, gamma: float = 5.0) -> torch.Tensor:
    """Min-SNR-gamma weights (Hang et al. 2023), expressed for the loss on each target.

    The x0-space weight min(SNR, gamma) becomes, on the network's own target,
    ``epsilon``: min(SNR, gamma) / SNR; ``v``: min(SNR, gamma) / (SNR + 1);
    ``sample``: min(SNR, gamma). gamma = 5 is the paper's default. The epsilon weight is
    evaluated as gamma / max(SNR, gamma), which is the same value and stays finite at SNR = 0
    (its limit there is 1: zero-terminal-SNR schedules reach it) and at SNR = inf (0).
    """
    if not gamma > 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; known: {PREDICTIONS}")
    snr = torch.as_tensor(snr)
    if not snr.is_floating_point():
        snr = snr.to(torch.float32)
    if (snr < 0).any():
        raise ValueError("snr must be >= 0")
    clipped = snr.clamp(max=gamma)
    if prediction == "epsilon":
        return gamma / snr.clamp(min=gamma)
    if prediction == "v":
        return clipped / (snr + 1)
    return clipped


def masked_mean_per_sample(values: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) mean of ``values`` (B, ...) over each sample's valid elements.

    ``mask`` has ``values.ndim`` dims and broadcasts against ``values`` (e.g. (B, 1, D, H, W)
    for every channel, or (B, C, ...) per channel); nonzero / True = valid. A float mask acts as
    weights: sum(values * mask) / sum(mask), with the mask's sum taken over its broadcast to
    ``values``' shape. A sample with no valid element gets 0, not NaN.
    """
    b = values.shape[0]
    if mask is None:
        return values.reshape(b, -1).mean(dim=1)
    if mask.ndim != values.ndim:
        raise ValueError(
            f"mask must have the same number of dims as the values ({values.ndim}, e.g. "
            f"(B, 1, *spatial)), got shape {tuple(mask.shape)}"
        )
    try:
        m = mask.to(values.dtype).expand(values.shape)
    except RuntimeError:
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not broadcast to values of shape "
            f"{tuple(values.shape)}"
        ) from None
    total = (values * m).reshape(b, -1).sum(dim=1)
    count = m.reshape(b, -1).sum(dim=1)
    return torch.where(count > 0, total / count.clamp(min=torch.finfo(count.dtype).tiny), 0.0)


def _channel_index(spec: int | slice | Sequence[int], n: int, name: str) -> list[int]:
    if isinstance(spec, int):
        idx = [spec]
    elif isinstance(spec, slice):
        idx = list(range(n))[spec]
    else:
        idx = [int(i) for i in spec]
    if not idx or any(not 0 <= i < n for i in idx):
        raise ValueError(f"channel group {name!r}: channels {idx} not within [0, {n})")
    return idx


def diffusion_loss(
    output: torch.Tensor,
    target: torch.Tensor,
    *,
    weight: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    channels: Mapping[str, int | slice | Sequence[int]] | None = None,
    kind: str = "mse",
) -> dict[str, torch.Tensor]:
    """Weighted, validity-masked diffusion loss, also per channel group.

    Per sample, the squared (``kind="mse"``) or absolute (``"l1"``) error is averaged over the
    valid voxels (:func:`masked_mean_per_sample`), multiplied by ``weight`` (B,) (e.g.
    :func:`min_snr_weight`) and averaged over the batch. Returns ``{"loss": ...}`` over all
    channels plus, for each entry of ``channels`` (e.g. ``{"image": 0, "mask": 1}``), the same
    loss over that group's channels alone. ``"loss"`` is the error averaged over every channel,
    so with a channel-uniform mask it is the channel-count-weighted mean of the groups.
    """
    if output.shape != target.shape:
        raise ValueError(
            f"output {tuple(output.shape)} and target {tuple(target.shape)} differ in shape"
        )
    if kind == "mse":
        err = (output.float() - target.float()) ** 2
    elif kind == "l1":
        err = (output.float() - target.float()).abs()
    else:
        raise ValueError(f"unknown loss kind {kind!r}; known: ('mse', 'l1')")
    b = err.shape[0]
    if weight is not None:
        weight = torch.as_tensor(weight, device=err.device).to(err.dtype).reshape(-1)
        if weight.numel() != b:
            raise ValueError(f"weight must have one value per sample ({b}), got {weight.numel()}")

    def reduce(e: torch.Tensor, m: torch.Tensor | None) -> torch.Tensor:
        per_sample = masked_mean_per_sample(e, m)
        if weight is not None:
            per_sample = per_sample * weight
        return per_sample.mean()

    out = {"loss": reduce(err, mask)}
    for name, spec in (channels or {}).items():
        if name == "loss":
            raise ValueError("channel group name 'loss' is reserved for the total")
        idx = _channel_index(spec, err.shape[1], name)
        m = None
        if mask is not None:
            m = mask if mask.shape[1] == 1 else mask[:, idx]
        out[name] = reduce(err[:, idx], m)
    return out


FREQUENCY_WEIGHTINGS = ("none", "radial")


def frequency_loss(
    output: torch.Tensor,
    target: torch.Tensor,
    *,
    weighting: str = "none",
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B,) mean squared difference of the orthonormal FFTs of ``output`` and ``target`` over
    the spatial axes (2D or 3D), per sample: SBLDM's frequency-aware term.

    With ``weighting="none"`` and the orthonormal transform this equals the plain MSE
    (Parseval); it differs once the spectrum is weighted: ``"radial"`` weights each frequency
    by its radius |k| (cycles per sample, in [0, sqrt(d)/2]) divided by the mean radius, so the
    weights average 1 and high frequencies (edges) count more than low ones. ``mask`` (B, 1 or
    C, *spatial), nonzero = valid, zeroes the difference outside the valid voxels first (padding
    contributes nothing).
    """
    if output.shape != target.shape:
        raise ValueError(
            f"output {tuple(output.shape)} and target {tuple(target.shape)} differ in shape"
        )
    if weighting not in FREQUENCY_WEIGHTINGS:
        raise ValueError(
            f"unknown frequency weighting {weighting!r}; known: {FREQUENCY_WEIGHTINGS}"
        )
    diff = output.float() - target.float()
    if mask is not None:
        diff = diff * (mask != 0).to(diff.dtype)
    dims = tuple(range(2, diff.ndim))
    power = torch.fft.fftn(diff, dim=dims, norm="ortho").abs() ** 2
    if weighting == "radial":
        grids = torch.meshgrid(
            *[torch.fft.fftfreq(diff.shape[d], device=diff.device) for d in dims], indexing="ij"
        )
        radius = torch.sqrt(sum(g**2 for g in grids))
        power = power * (radius / radius.mean())
    return power.reshape(power.shape[0], -1).mean(dim=1)
