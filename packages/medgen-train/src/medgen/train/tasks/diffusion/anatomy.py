"""``task.anatomical_prior``: a per-z-bin map of where anatomy is, given to the network as one
more prior channel (JS-DDPM's anatomical conditioning, seed 001).

The map of z-bin ``b`` holds, per pixel, the fraction of the training split's slices of bin
``b`` whose voxel is foreground in the cache's own sense (any image channel above the recipe's
``foreground_threshold``, the rule ``z_from: foreground`` selects slices by), scaled to
[-1, 1]. It is computed once, when a run is built, from the training split's shards
(:func:`anatomical_maps`), and kept as a non-trainable buffer of an :class:`AnatomicalPrior`
attached to the network (:func:`attach`): checkpoints hold it with the network's weights, so
``sample`` looks up exactly the training maps (by the plan's z-bin), and a resumed run gets the
same ones back. Until filled or loaded the buffer holds NaN, which the network's prior check
refuses, so unfilled maps cannot be used by accident.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from medgen.data import open_shard, read_manifest
from medgen.train.errors import ConfigError
from medgen.train.latents.dataset import is_latent_cache
from medgen.train.progress import bars_disabled

MODULE = "anatomical_prior"  # the submodule of the network that holds the maps
KEY = "task.anatomical_prior"


class AnatomicalPrior(nn.Module):
    """Per-z-bin prior maps (``n_bins``, 1, *shape) in [-1, 1]; calling it with z-bins (B,)
    gives the (B, 1, *shape) maps of those bins."""

    def __init__(self, n_bins: int, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.register_buffer("maps", torch.full((n_bins, 1, *shape), float("nan")))

    def forward(self, z_bin: torch.Tensor) -> torch.Tensor:
        """The maps of the z-bins ``z_bin`` (B,)."""
        return self.maps[z_bin.to(self.maps.device).long()]

    @torch.no_grad()
    def fill(self, maps: torch.Tensor) -> None:
        """Set the maps (a (n_bins, 1, *shape) tensor)."""
        if tuple(maps.shape) != tuple(self.maps.shape):
            raise ValueError(
                f"maps of shape {tuple(maps.shape)}, expected {tuple(self.maps.shape)}"
            )
        self.maps.copy_(maps)


def check_kind(description) -> None:
    """The prior is per z-bin of 2D slices: any other cache is a ConfigError naming the key."""
    if description.kind != "slices":
        raise ConfigError(
            f"{KEY}: is a per-z-bin map of 2D slices; the cache {description.cache} holds "
            f"{description.kind} (set {KEY}=false)"
        )


def prior_spec(spec: dict) -> dict:
    """A network's ``prior_channels`` / ``prior_modes`` with the anatomical channel appended
    (resized linearly where the network's grid differs, e.g. a latent space)."""
    return {
        "prior_channels": spec["prior_channels"] + 1,
        "prior_modes": (*spec["prior_modes"], "linear"),
    }


def attach(network: nn.Module, description) -> AnatomicalPrior:
    """A NaN-filled :class:`AnatomicalPrior` for ``description``'s bins and item shape, added to
    ``network`` as submodule :data:`MODULE` (so it is checkpointed, averaged and moved with it)."""
    check_kind(description)
    like = next(iter(network.parameters()))
    prior = AnatomicalPrior(description.n_bins, tuple(description.shape)).to(like.device)
    network.add_module(MODULE, prior)
    return prior


def anatomical_maps(
    cache: str | Path, split: str, n_bins: int, quiet: bool = False
) -> torch.Tensor:
    """(n_bins, 1, H, W) float32: per z-bin, the fraction of ``split``'s slices of that bin
    whose pixel is foreground (any image channel > the recipe's ``foreground_threshold``),
    scaled to [-1, 1]; accumulated in float64 over the split's shards."""
    cache = Path(cache)
    manifest = read_manifest(cache)
    if is_latent_cache(manifest):
        raise ConfigError(
            f"{KEY}: {cache} is a latent cache; the anatomical prior is computed from a pixel "
            "slices cache's intensities (train on the pixel cache with task.space.kind=latent)"
        )
    threshold = manifest.get("recipe", {}).get("foreground_threshold")
    if threshold is None:
        raise ConfigError(f"{KEY}: {cache}/manifest.json has no recipe.foreground_threshold")
    entries = [e for e in manifest["shards"] if e["split"] == split]
    fg_sum: np.ndarray | None = None
    count = np.zeros(n_bins, np.int64)
    bar = tqdm(entries, desc="anatomical prior", unit="shard", disable=bars_disabled())
    for entry in bar:
        arrays = open_shard(cache, entry)
        image, z_bin = np.asarray(arrays["image"]), np.asarray(arrays["z_bin"], np.int64)
        fg = (image > threshold).any(axis=1).astype(np.float64)  # (n, H, W)
        if fg_sum is None:
            fg_sum = np.zeros((n_bins, *fg.shape[1:]), np.float64)
        np.add.at(fg_sum, z_bin, fg)
        count += np.bincount(z_bin, minlength=n_bins)
    empty = np.flatnonzero(count == 0).tolist()
    if fg_sum is None or empty:
        raise ConfigError(
            f"{KEY}: z-bin(s) {empty or list(range(n_bins))} have no slice in split {split!r} "
            f"of {cache}; there is nothing to average"
        )
    fraction = fg_sum / count.reshape(-1, *([1] * (fg_sum.ndim - 1)))
    return torch.from_numpy(2.0 * fraction - 1.0).to(torch.float32).unsqueeze(1)
