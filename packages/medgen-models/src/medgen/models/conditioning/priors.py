"""Channel-concatenated priors: masks, anatomical priors, upsampled thick-slice latents.

A prior is any (B, C_p, *spatial_p) tensor that is resized to the sample's spatial size and
concatenated after its channels, so the network input is (B, C + sum C_p, *spatial). Masks
keep their labels with ``"nearest"``; continuous priors (probability maps, thick-slice
latents upsampled along z) use ``"linear"`` (bilinear in 2D, trilinear in 3D) or ``"area"``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

MODES = ("nearest", "linear", "area")


def resize_prior(prior: torch.Tensor, size: Sequence[int], mode: str = "nearest") -> torch.Tensor:
    """``prior`` (B, C, *s) resized to ``size`` (len(size) == len(s)); unchanged if equal."""
    if mode not in MODES:
        raise ValueError(f"prior resize mode must be one of {MODES}, got {mode!r}")
    size = tuple(int(s) for s in size)
    if len(size) != prior.ndim - 2:
        raise ValueError(
            f"prior with {prior.ndim - 2} spatial axes cannot be resized to size {size}"
        )
    if tuple(prior.shape[2:]) == size:
        return prior
    if mode == "linear":
        mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(size)]
        return F.interpolate(prior, size=size, mode=mode, align_corners=False)
    if mode == "nearest":
        mode = "nearest-exact"  # the half-pixel-centred nearest neighbour, unlike "nearest"
    return F.interpolate(prior, size=size, mode=mode)


def concat_priors(
    x: torch.Tensor,
    priors: Sequence[torch.Tensor] | Mapping[str, torch.Tensor],
    modes: str | Sequence[str] = "nearest",
    expected_channels: int | None = None,
) -> torch.Tensor:
    """``torch.cat([x, *resized priors], dim=1)``.

    Each prior must have x's batch size and number of spatial axes and be finite; bool/integer
    masks are cast to x's dtype. ``modes`` is one mode for all priors or one per prior.
    ``expected_channels`` (the network's prior channel count) is checked against the total.
    Errors name the prior (its key, or its index) and the shapes involved.
    """
    items = list(priors.items()) if isinstance(priors, Mapping) else list(enumerate(priors))
    if isinstance(modes, str):
        modes = [modes] * len(items)
    if len(modes) != len(items):
        raise ValueError(f"got {len(items)} priors but {len(modes)} resize modes")
    out = [x]
    for (name, prior), mode in zip(items, modes, strict=True):
        if not isinstance(prior, torch.Tensor):
            raise TypeError(f"prior {name!r}: expected a tensor, got {type(prior).__name__}")
        if prior.ndim != x.ndim:
            raise ValueError(
                f"prior {name!r}: shape {tuple(prior.shape)} has {prior.ndim} dims, the sample "
                f"{tuple(x.shape)} has {x.ndim}; priors are (B, C, *spatial)"
            )
        if prior.shape[0] != x.shape[0]:
            raise ValueError(f"prior {name!r}: batch {prior.shape[0]} != sample batch {x.shape[0]}")
        if not prior.is_floating_point():
            prior = prior.to(x.dtype)
        if not torch.isfinite(prior).all():
            raise ValueError(f"prior {name!r} has non-finite values")
        out.append(resize_prior(prior, x.shape[2:], mode).to(device=x.device, dtype=x.dtype))
    total = sum(p.shape[1] for p in out[1:])
    if expected_channels is not None and total != expected_channels:
        counts = ", ".join(f"{n!r}: {p.shape[1]}" for (n, _), p in zip(items, out[1:], strict=True))
        raise ValueError(
            f"priors: expected {expected_channels} prior channels in total, got {total} ({counts})"
        )
    return torch.cat(out, dim=1)
