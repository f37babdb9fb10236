"""Rebuild a space from its ``config()`` dict (e.g. read back from YAML)."""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from medgen.models.spaces.latent import LatentSpace
from medgen.models.spaces.pixel import PixelSpace
from medgen.models.spaces.space_to_depth import SpaceToDepth
from medgen.models.spaces.wavelet import WaveletSpace

SPACES = {
    PixelSpace.kind: PixelSpace,
    WaveletSpace.kind: WaveletSpace,
    SpaceToDepth.kind: SpaceToDepth,
    LatentSpace.kind: LatentSpace,
}


def space_from_config(config: Mapping, autoencoder: nn.Module | None = None) -> nn.Module:
    """The space ``config`` describes. A latent space needs its ``autoencoder`` passed in
    (weights are not part of a config); unknown kinds or keys raise ValueError naming them."""
    cfg = dict(config)
    kind = cfg.pop("kind", None)
    if kind not in SPACES:
        raise ValueError(f"space config: unknown kind {kind!r}; known: {sorted(SPACES)}")
    cls = SPACES[kind]
    allowed = {
        PixelSpace: {"spatial_dims"},
        WaveletSpace: {"spatial_dims", "low_scale"},
        SpaceToDepth: {"spatial_dims", "factor"},
        LatentSpace: {"spatial_dims", "scale_factor", "latent_channels", "downsample"},
    }[cls]
    unknown = sorted(set(cfg) - allowed)
    if unknown:
        raise ValueError(
            f"space config ({kind}): unknown key(s) {unknown}; allowed: {sorted(allowed)}"
        )
    if cls is LatentSpace:
        if autoencoder is None:
            raise ValueError("space config (latent): pass the autoencoder to rebuild the space")
        return LatentSpace(autoencoder, **cfg)
    if autoencoder is not None:
        raise ValueError(f"space config ({kind}): this space takes no autoencoder")
    return cls(**cfg)
