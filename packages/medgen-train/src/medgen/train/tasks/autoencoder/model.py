"""What an autoencoder run is made of: the network, its discriminator and perceptual network.

:func:`build_network` rebuilds the architecture alone from a run's ``task:`` section and
data description (what :func:`.load.load_autoencoder` uses; no weights read);
:meth:`AutoencoderModel.build` adds the starting weights (``task.init``: a trained run;
``network.weights``: MAISI's file), phase 3's freezing (everything but
:meth:`decoder_head`), the discriminator and the perceptual network (frozen, from a local
weights file). Every problem is a :class:`ConfigError` naming the key, raised before the run
directory is written.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from medgen.train.errors import CheckpointError, ConfigError
from medgen.train.tasks.data import DataDescription
from medgen.train.tasks.diffusion.channels import ChannelLayout

AUTOENCODER, DISCRIMINATOR, PERCEPTUAL = "autoencoder", "discriminator", "perceptual"


def channel_layout(cfg, description: DataDescription) -> ChannelLayout:
    """The channels ``task.channels`` names (``image``: every modality; ``mask``), checked
    against the data."""
    try:
        return ChannelLayout.from_config(
            cfg.channels, (), description.channels, description.has_mask
        )
    except ConfigError as exc:  # the layout names diffusion's key
        raise ConfigError(str(exc).replace("task.generate", "task.channels")) from None


def build_network(cfg, description: DataDescription) -> nn.Module:
    """The autoencoder architecture of ``cfg`` (an AutoencoderConfig) for ``description``'s
    data, with random weights; the data shape is checked against its downsampling."""
    layout = channel_layout(cfg, description)
    structured = None
    if cfg.structured_latent is not None:
        structured = (cfg.structured_latent.min_channels, cfg.structured_latent.channel_step)
    try:
        net = cfg.network.build(description.spatial_dims, len(layout.generate), structured)
    except ValueError as exc:
        raise ConfigError(f"task.network: {' '.join(str(exc).split())}") from None
    try:
        net.check_shape((1, len(layout.generate), *description.shape))
    except ValueError as exc:
        raise ConfigError(
            f"task.network: the data's items are {list(description.shape)} "
            f"({description.cache}): {exc}"
        ) from None
    return net


def initial_weights(cfg, net: nn.Module) -> dict | None:
    """Load the weights the run starts from into ``net``: ``task.init`` (an autoencoder run of
    the same network, its EMA weights) or MAISI's ``task.network.weights``; their provenance."""
    if cfg.init:
        from medgen.train.tasks.autoencoder.load import load_autoencoder

        try:
            trained, info = load_autoencoder(cfg.init, cfg.init_checkpoint)
        except CheckpointError as exc:
            raise ConfigError(f"task.init: {exc}") from None
        same_network(cfg, info.config.task, cfg.init)
        net.load_state_dict(trained.state_dict())
        return {"run": str(cfg.init), "checkpoint": info.checkpoint.name, "sha256": info.sha256}
    path = getattr(cfg.network, "weights", "")
    if path:
        from medgen.models.autoencoders import WeightsError, sha256

        try:
            net.load_weights(path)
        except WeightsError as exc:
            raise ConfigError(f"task.network.weights: {' '.join(str(exc).split())}") from None
        return {"weights": str(path), "sha256": sha256(path)}
    return None


def discriminator(cfg, description: DataDescription, in_channels: int) -> nn.Module | None:
    """MONAI's patch discriminator of ``task.discriminator`` (None for kind none); a
    multi-scale one is checked against the data's smallest axis."""
    d = cfg.discriminator
    if d.kind == "none":
        return None
    from medgen.models.autoencoders import build_discriminator

    extra = {}
    if d.kind == "multiscale":
        extra = {"num_d": d.num_scales, "minimum_size_im": min(description.shape)}
    try:
        return build_discriminator(d.kind, description.spatial_dims, in_channels,
                                   channels=d.channels, num_layers_d=d.num_layers,
                                   **extra)  # fmt: skip
    except (ValueError, AssertionError) as exc:
        raise ConfigError(f"task.discriminator: {' '.join(str(exc).split())}") from None


def perceptual_network(cfg, spatial_dims: int) -> nn.Module | None:
    """The frozen LPIPS-style network of ``task.loss.perceptual_weights`` (None when unset);
    per-sample distances (2.5D for volumes)."""
    loss = cfg.loss
    if not loss.perceptual_weights:
        return None
    from medgen.models.autoencoders import PerceptualLoss, WeightsError

    try:
        return PerceptualLoss(
            loss.perceptual_weights,
            heads=loss.perceptual_heads or None,
            spatial_dims=spatial_dims,
            slice_fraction=loss.perceptual_fraction,
            reduction="none",
        )
    except WeightsError as exc:
        heads = loss.perceptual_heads and loss.perceptual_heads in str(exc)
        key = "perceptual_heads" if heads else "perceptual_weights"
        raise ConfigError(f"task.loss.{key}: {' '.join(str(exc).split())}") from None


def freeze_all_but_head(net: nn.Module) -> list[nn.Module]:
    """Phase 3: every weight frozen but :meth:`decoder_head`'s; returns the sub-modules with
    no trainable weight (kept in eval mode during training: no batch-norm statistics or
    codebook updates)."""
    net.requires_grad_(False)
    for p in net.decoder_head():
        p.requires_grad_(True)
    return frozen_submodules(net)


def frozen_submodules(net: nn.Module) -> list[nn.Module]:
    """The outermost sub-modules of ``net`` none of whose weights is trained."""
    out: list[nn.Module] = []

    def visit(m: nn.Module) -> None:
        if not any(p.requires_grad for p in m.parameters()):
            out.append(m)
            return
        for child in m.children():
            visit(child)

    visit(net)
    return out


@dataclass
class AutoencoderModel:
    """The modules of an autoencoder run and how a batch becomes the network's input."""

    cfg: object  # AutoencoderConfig
    description: DataDescription
    layout: ChannelLayout
    autoencoder: nn.Module
    discriminator: nn.Module | None = None
    perceptual: nn.Module | None = None
    frozen_parts: tuple[nn.Module, ...] = ()  # phase 3: kept in eval mode
    init: dict | None = None  # the weights the run started from (provenance)

    @classmethod
    def build(cls, cfg, description: DataDescription, device: torch.device) -> AutoencoderModel:
        """Network (+ starting weights, phase-3 freezing), discriminator, perceptual network."""
        layout = channel_layout(cfg, description)
        net = build_network(cfg, description)
        init = initial_weights(cfg, net)
        frozen = freeze_all_but_head(net) if cfg.phase == 3 else []
        disc = discriminator(cfg, description, len(layout.generate))
        perceptual = perceptual_network(cfg, description.spatial_dims)
        return cls(
            cfg,
            description,
            layout,
            net.to(device),
            disc.to(device) if disc is not None else None,
            perceptual.to(device) if perceptual is not None else None,
            tuple(frozen),
            init,
        )

    def inputs(self, batch: dict) -> torch.Tensor:
        """The channels autoencoded, (B, C, *spatial) in [-1, 1] (a mask as -1 / 1)."""
        return self.layout.x0(batch)

    def modules(self) -> dict[str, nn.Module]:
        """Every module by name: the trained autoencoder and discriminator, the frozen
        perceptual network."""
        out = {AUTOENCODER: self.autoencoder}
        if self.discriminator is not None:
            out[DISCRIMINATOR] = self.discriminator
        if self.perceptual is not None:
            out[PERCEPTUAL] = self.perceptual
        return out

    def hold_frozen_parts(self) -> None:
        """Phase 3: the frozen sub-modules back in eval mode (the engine sets train mode)."""
        for m in self.frozen_parts:
            m.eval()


def same_network(cfg, other_cfg, where: str) -> None:
    """``task.network`` and ``task.channels`` must equal those of the run ``where``."""
    a, b = dataclasses.asdict(cfg.network), dataclasses.asdict(other_cfg.network)
    diff = [f"network.{k}: {a[k]!r} here, {b.get(k)!r} in {where}" for k in a if a[k] != b.get(k)]
    if tuple(cfg.channels) != tuple(other_cfg.channels):
        diff.append(f"channels: {list(cfg.channels)} here, {list(other_cfg.channels)} in {where}")
    if diff:
        raise ConfigError(f"task.init: {'; '.join(diff)}")
