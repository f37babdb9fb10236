"""A trained autoencoder, rebuilt from its run directory: what latent caches, latent diffusion
and feature extractors use.

``load_autoencoder(run_dir, checkpoint="best", device="cpu") -> (module, info)``: the run's
checkpoint (``best``, ``latest`` or ``step_N``) is verified against its ``state.json``
hashes, the network rebuilt from the checkpoint's own ``config.yaml`` and ``data.json``, and
its EMA weights (the raw weights when the run kept no EMA) loaded strictly. The module is
returned in eval mode with every weight frozen.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from medgen.train.checkpoint import read_state
from medgen.train.checkpoint.store import EMA_FILE, MODEL_FILE, load_weights
from medgen.train.errors import CheckpointError, ConfigError
from medgen.train.tasks.autoencoder.model import AUTOENCODER, build_network, channel_layout


@dataclass(frozen=True)
class AutoencoderInfo:
    """Where a loaded autoencoder comes from and what it maps between."""

    run_dir: Path
    checkpoint: Path  # the verified checkpoint directory
    step: int
    weights: str  # "ema" or "model"
    sha256: str  # of the weights file loaded
    kind: str  # network kind: kl | vq | dcae | maisi
    spatial_dims: int
    in_channels: int
    latent_channels: int
    downsample: int  # in-plane factor (``factors`` per axis)
    factors: tuple[int, ...]  # per spatial axis (D first in 3D)
    input_shape: tuple[int, ...]  # (C, *spatial) of the items it was trained on
    latent_shape: tuple[int, ...]  # (latent_channels, *spatial / factors)
    channels: tuple[str, ...]  # the data channels it encodes, in order ("mask": -1 / 1)
    seg_mode: bool
    config: object  # the run's FitConfig

    def to_dict(self) -> dict:
        """JSON-safe fields (no config)."""
        d = {k: v for k, v in asdict(self).items() if k != "config"}
        d.update(run_dir=str(self.run_dir), checkpoint=str(self.checkpoint))
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def load_autoencoder(
    run_dir: str | Path, checkpoint: str = "best", device: str | torch.device = "cpu"
) -> tuple[nn.Module, AutoencoderInfo]:
    """The autoencoder of ``run_dir``'s checkpoint ``checkpoint`` on ``device`` (frozen, eval
    mode) and its :class:`AutoencoderInfo`. One-line :class:`CheckpointError` for a path that
    is not a fit run, a run of another task, a missing or damaged checkpoint, weights that do
    not fit the configured network."""
    from medgen.train.runs import TrainedRun

    run = TrainedRun.open(run_dir, checkpoint)
    cfg = run.config
    if cfg.task.kind != "autoencoder":
        raise CheckpointError(
            f"{run_dir}: a task.kind {cfg.task.kind!r} run, not an autoencoder run "
            "(train one with task.kind: autoencoder, e.g. medgen-train fit vae_mni152)"
        )
    description = run.description
    try:
        net = build_network(cfg.task, description)
    except ConfigError as exc:
        raise CheckpointError(f"{run.checkpoint / 'config.yaml'}: {exc}") from None
    weights = EMA_FILE if (run.checkpoint / EMA_FILE).is_file() else MODEL_FILE
    load_weights(run.checkpoint, {AUTOENCODER: net}, weights)
    net.requires_grad_(False).eval().to(device)
    layout = channel_layout(cfg.task, description)
    shape = (len(layout.generate), *description.shape)
    latent = tuple(net.latent_shape((1, *shape))[1:])
    info = AutoencoderInfo(
        run_dir=Path(run_dir),
        checkpoint=run.checkpoint,
        step=run.step,
        weights="ema" if weights == EMA_FILE else "model",
        sha256=read_state(run.checkpoint)["files"][weights],
        kind=cfg.task.network.kind,
        spatial_dims=int(net.spatial_dims),
        in_channels=int(net.in_channels),
        latent_channels=int(net.latent_channels),
        downsample=int(net.downsample),
        factors=tuple(int(s) // int(z) for s, z in zip(shape[1:], latent[1:], strict=True)),
        input_shape=tuple(int(s) for s in shape),
        latent_shape=latent,
        channels=tuple(layout.generate),
        seg_mode=bool(cfg.task.seg_mode),
        config=cfg,
    )
    return net, info
