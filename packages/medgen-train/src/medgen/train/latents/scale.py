"""The latent scale factor of a training split: 1 / std of its raw latents.

One measurement for both ways a latent run sees its data: latents stored by ``medgen-train
encode`` (:func:`scale_of_latents`) and latents encoded on the fly by the frozen autoencoder
(:func:`scale_of_items`). Both go through :func:`medgen.models.spaces.measure_scale_factor`
(the unbiased std over every latent element pooled, float64, Chan's parallel update), so the
same split gives the same factor either way. Only the training split is measured: held-out
items must not shape the model.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from medgen.models.spaces import measure_scale_factor
from medgen.models.spaces.latent import LatentSpace
from medgen.train.errors import ConfigError
from medgen.train.progress import bars_disabled


class _Stored:
    """An 'autoencoder' whose encoding of a stored latent is the latent itself."""

    @staticmethod
    def encode(z: torch.Tensor) -> torch.Tensor:
        """``z`` unchanged."""
        return z


def scale_of_latents(latents: Iterable[torch.Tensor], where: str) -> float:
    """1 / std of the stored raw latents ``latents`` (batches of any shape)."""
    try:
        return measure_scale_factor(_Stored(), latents)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


@torch.no_grad()
def scale_of_items(space: LatentSpace, dataset, x0, batch_size: int, device, where: str) -> float:
    """1 / std of the raw latents of every item of ``dataset`` (``x0(batch)``: the channels
    the autoencoder encodes), encoded by ``space``'s autoencoder in batches."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    bar = tqdm(loader, desc="latent scale", unit="batch", disable=bars_disabled())

    def inputs():
        for batch in bar:
            yield x0({k: v.to(device) for k, v in batch.items()})

    try:
        return measure_scale_factor(space, inputs())
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
