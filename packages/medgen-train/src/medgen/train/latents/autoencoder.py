"""A trained autoencoder run as latent diffusion uses it: frozen, rebuilt from its run directory,
identified by the sha256 of its weights, decoding in chunks when asked.

:class:`AutoencoderRun` wraps what ``medgen.train.tasks.autoencoder.load.load_autoencoder``
returns (the module and what the run recorded about it) and checks it against the data it
will encode: its ``in_channels`` must be the number of channels encoded, every spatial size
must divide by its ``downsample``. :class:`ChunkedDecoding` is the autoencoder with its
``decode`` split into overlapping pieces along the last spatial axis
(:func:`medgen.models.autoencoders.chunked.chunked_decode`), so a large 3D latent decodes in
less memory; ``encode`` is the autoencoder's own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from medgen.train.errors import CheckpointError, ConfigError


def load_autoencoder(run_dir: str | Path, checkpoint: str, device: torch.device):
    """``(module, info)`` of an autoencoder run (the ``autoencoder`` task's loader)."""
    from medgen.train.tasks.autoencoder.load import load_autoencoder as load

    return load(run_dir, checkpoint=checkpoint, device=device)


@dataclass
class AutoencoderRun:
    """A frozen autoencoder and where its weights come from."""

    module: nn.Module
    run_dir: str  # absolute path of the autoencoder's fit run
    checkpoint: str  # the checkpoint directory's name (step_N)
    step: int
    sha256: str  # of the weights file the module was loaded from
    spatial_dims: int
    in_channels: int
    latent_channels: int
    downsample: int
    channels: tuple[str, ...]  # the data channels it was trained to encode (names)
    factors: tuple[int, ...] = ()  # spatial reduction per axis (D first in 3D)

    def __post_init__(self) -> None:
        if not self.factors:
            self.factors = (self.downsample,) * self.spatial_dims

    @classmethod
    def open(
        cls, run_dir: str | Path, checkpoint: str = "best", device="cpu", key: str = "autoencoder"
    ) -> AutoencoderRun:
        """The run's checkpoint ``checkpoint`` loaded, frozen and in eval mode; any problem is
        a ConfigError naming ``key`` and the run."""
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise ConfigError(f"{key}: {run_dir} is not a directory (an autoencoder fit run)")
        try:
            module, info = load_autoencoder(run_dir, checkpoint, torch.device(device))
        except (CheckpointError, ConfigError) as exc:
            raise ConfigError(f"{key}: {' '.join(str(exc).split())}") from None
        module.requires_grad_(False).eval()
        info = info.to_dict() if hasattr(info, "to_dict") else dict(info)
        channels = info.get("channels") or ()
        dims, down = int(info["spatial_dims"]), int(info["downsample"])
        return cls(
            module=module,
            run_dir=str(Path(info.get("run_dir") or run_dir).absolute()),
            checkpoint=str(Path(str(info.get("checkpoint", checkpoint))).name),
            step=int(info["step"]),
            sha256=str(info["sha256"]),
            spatial_dims=dims,
            in_channels=int(info["in_channels"]),
            latent_channels=int(info["latent_channels"]),
            downsample=down,
            channels=tuple(str(c) for c in channels),
            factors=tuple(int(f) for f in info.get("factors") or (down,) * dims),
        )

    def provenance(self) -> dict:
        """What identifies these latents: run, checkpoint, weights sha256, geometry."""
        return {
            "run": self.run_dir,
            "checkpoint": self.checkpoint,
            "step": self.step,
            "sha256": self.sha256,
            "spatial_dims": self.spatial_dims,
            "in_channels": self.in_channels,
            "latent_channels": self.latent_channels,
            "downsample": self.downsample,
            "factors": list(self.factors),
            "channels": list(self.channels),
        }

    def check_channels(self, names: Sequence[str], what: str) -> None:
        """The autoencoder must encode exactly ``len(names)`` channels."""
        if len(names) != self.in_channels:
            raise ConfigError(
                f"{what}: {len(names)} channel(s) {list(names)}, but the autoencoder of "
                f"{self.run_dir} takes in_channels={self.in_channels}"
                + (f" ({', '.join(self.channels)})" if self.channels else "")
            )

    def check_shape(self, spatial: Sequence[int], what: str) -> None:
        """Every spatial size must divide by ``downsample`` (and the dimensionality match)."""
        if len(spatial) != self.spatial_dims:
            raise ConfigError(
                f"{what}: {len(spatial)}D items {list(spatial)}, but the autoencoder of "
                f"{self.run_dir} is {self.spatial_dims}D"
            )
        if any(int(s) % f for s, f in zip(spatial, self.factors, strict=True)):
            factor = self.downsample if len(set(self.factors)) == 1 else list(self.factors)
            raise ConfigError(
                f"{what}: item size {list(spatial)} does not divide by the autoencoder's "
                f"downsample factor {factor} ({self.run_dir})"
            )

    def latent_shape(self, spatial: Sequence[int]) -> list[int]:
        """(C, *spatial) of the latent of one item of spatial size ``spatial``."""
        sizes = (int(s) // f for s, f in zip(spatial, self.factors, strict=True))
        return [self.latent_channels, *sizes]


class ChunkedDecoding(nn.Module):
    """``autoencoder`` with ``decode`` run in ``chunks`` pieces along the first spatial axis
    (depth of a volume), each with ``overlap`` latent voxels of context on both sides
    (:func:`medgen.models.autoencoders.chunked_decode`: the unsplit result up to float
    rounding when the decoder is purely convolutional with a receptive-field radius <=
    ``overlap``; not exact with GroupNorm or attention). ``chunks`` 1: the plain decode;
    ``encode`` is the autoencoder's own."""

    def __init__(self, autoencoder: nn.Module, downsample: int, chunks: int = 1, overlap: int = 2):
        super().__init__()
        if chunks < 1 or overlap < 0:
            raise ValueError(f"ChunkedDecoding: need chunks >= 1, overlap >= 0; got {chunks}, "
                             f"{overlap}")  # fmt: skip
        self.autoencoder, self.downsample = autoencoder, int(downsample)
        self.chunks, self.overlap = int(chunks), int(overlap)

    def encode(self, x: torch.Tensor):
        """The autoencoder's encoding."""
        return self.autoencoder.encode(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The autoencoder's decoding, in ``chunks`` pieces when ``chunks`` > 1."""
        if self.chunks == 1:
            return self.autoencoder.decode(z)
        from medgen.models.autoencoders.chunked import chunked_decode

        return chunked_decode(self.autoencoder.decode, z, axis=0, num_splits=self.chunks,
                              overlap=self.overlap, downsample=self.downsample)  # fmt: skip
