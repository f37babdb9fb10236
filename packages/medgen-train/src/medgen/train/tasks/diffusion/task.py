"""The ``diffusion`` task: any strategy in any space, 2D slices or 3D volumes, image-only or
joint image + mask, with the conditionings of :class:`medgen.models.ConditionedUNet`.

Training draws timesteps and noise from the task's own generator (saved in checkpoints, so a
resumed run draws the same), noises x0 in the chosen space, and minimises
:func:`medgen.models.diffusion_loss` on the strategy's target, Min-SNR weighted for DDPM,
masked to the valid voxels of padded volumes, logged per generated channel and per timestep
bucket. Its evaluator (:mod:`.evaluator`) scores held-out subjects at every evaluation: the
validation loss (noise and timesteps fixed per item, so evaluations compare) and the EMA
model's x0-prediction PSNR per timestep bucket.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from medgen.models import Conditioning, diffusion_loss, masked_mean_per_sample, min_snr_weight
from medgen.models.augmentation import latent_cutmix
from medgen.models.autoencoders.dcae_structured import (
    check_structured,
    sample_channel_counts,
    structured_channel_mask,
)
from medgen.models.losses import frequency_loss
from medgen.models.uncertainty import UncertaintyWeighting
from medgen.train.engine.batches import to_device
from medgen.train.errors import ConfigError
from medgen.train.latents.space import build_space, encode_x0, latent_modules
from medgen.train.tasks.data import DataDescription
from medgen.train.tasks.diffusion import anatomy
from medgen.train.tasks.diffusion.channels import ChannelLayout
from medgen.train.tasks.diffusion.config import DiffusionConfig
from medgen.train.tasks.networks import NetworkSpec

NETWORK = "network"
LOSS_WEIGHTS = "loss_weights"  # the learned log-variances of task.uncertainty_weighting


def _pool(valid: torch.Tensor, factor: int) -> torch.Tensor:
    """A validity mask on the grid of a space that divides sizes by ``factor`` (a block counts
    as valid when any voxel in it is)."""
    if factor == 1:
        return valid
    pool = F.max_pool3d if valid.ndim == 5 else F.max_pool2d
    return pool(valid.float(), factor) > 0


@dataclass
class DiffusionModel:
    """What a diffusion run is made of, rebuilt identically for training and sampling."""

    cfg: DiffusionConfig
    description: DataDescription
    layout: ChannelLayout
    strategy: object
    space: nn.Module
    network: nn.Module
    num_tokens: int | None
    latent_shape: tuple[int, ...]  # (C, *spatial) the network sees
    loss_weighting: UncertaintyWeighting | None = None  # task.uncertainty_weighting
    anatomy: anatomy.AnatomicalPrior | None = None  # task.anatomical_prior (the network's)

    @classmethod
    def build(cls, cfg: DiffusionConfig, model_cfg, description: DataDescription, device):
        """Strategy, space and network for ``description``'s data."""
        layout = ChannelLayout.from_config(
            cfg.generate, cfg.priors, description.channels, description.has_mask,
            pairs=description.kind == "pairs",
        )  # fmt: skip
        strategy = cfg.strategy.build()
        space = build_space(cfg.space, description, layout, device)
        shape = (1, len(layout.generate), *description.shape)
        try:
            latent = tuple(space.latent_shape(shape)[1:])
        except ValueError as exc:
            raise ConfigError(f"task.space: {exc} (data shape {description.shape})") from None
        num_tokens = description.n_bins * description.n_classes if cfg.tokens else None
        priors = _prior_spec(cfg, layout, space, description)
        if cfg.anatomical_prior:
            anatomy.check_kind(description)
            priors = anatomy.prior_spec(priors)
        spec = NetworkSpec(
            spatial_dims=description.spatial_dims,
            in_channels=latent[0],
            out_channels=latent[0],
            shape=latent[1:],
            num_tokens=num_tokens,
            null_token=cfg.cond_dropout > 0,
            num_modes=description.n_modes or None,
            **priors,
        )
        network = model_cfg.build(spec).to(device)
        anatomical = anatomy.attach(network, description) if cfg.anatomical_prior else None
        weighting = _loss_weighting(cfg, description, layout, space)
        if weighting is not None:
            weighting = weighting.to(device)
        return cls(
            cfg, description, layout, strategy, space, network, num_tokens, latent, weighting,
            anatomical,
        )  # fmt: skip

    @property
    def null_token(self) -> int | None:
        """The learned unconditional token (classifier-free guidance), if trained with one."""
        return self.num_tokens if self.cfg.cond_dropout > 0 and self.num_tokens else None

    def conditioning(self, batch: dict, tokens: torch.Tensor | None = None) -> Conditioning:
        """The network's conditioning for a batch (``tokens`` replaces the batch's)."""
        return Conditioning(
            token=(tokens if tokens is not None else batch["token"]) if self.num_tokens else None,
            mode=batch["mode"] if self.description.n_modes else None,
            priors=self.network_priors(
                self.layout.prior_tensors(batch) if self.layout.priors else None, batch.get("z_bin")
            ),
            control=self.layout.control_tensor(batch) if self.layout.control else None,
        )

    def prior_inputs(self, priors: list[torch.Tensor]) -> list[torch.Tensor]:
        """What the network is given for the data-space prior channels ``priors``: themselves
        (the network resizes them to its grid), or with ``task.encode_priors`` their scaled
        latents from the frozen autoencoder (one tensor of its latent channels)."""
        if not self.cfg.encode_priors:
            return priors
        with torch.no_grad():
            return [self.space.encode(torch.cat(priors, dim=1))]

    def network_priors(self, priors, z_bin: torch.Tensor) -> list[torch.Tensor] | None:
        """The network's prior inputs: the data-space prior channels ``priors`` (or None)
        through :meth:`prior_inputs`, then with ``task.anatomical_prior`` the anatomical map of
        each item's z-bin ``z_bin`` (B,); None when there are none."""
        out = self.prior_inputs(priors) if priors else []
        if self.anatomy is not None:
            out = [*out, self.anatomy(z_bin)]
        return out or None

    def checkpointed(self) -> dict[str, nn.Module]:
        """The modules a checkpoint of this run holds (the trained ones)."""
        out = {NETWORK: self.network}
        if self.loss_weighting is not None:
            out[LOSS_WEIGHTS] = self.loss_weighting
        return out

    def modules(self) -> dict[str, nn.Module]:
        """Every module of the run, trained or frozen, by name (a latent space's autoencoder:
        frozen, so the engine never trains, averages or checkpoints it)."""
        return {**self.checkpointed(), **latent_modules(self.space)}

    def trained_network(self, nets) -> object:
        """The callable network of a training step, from the engine's ``nets``."""
        return nets[NETWORK]

    def evaluated_network(self, modules, ema) -> nn.Module:
        """The network an evaluation scores: the EMA weights when there are any."""
        return ema.get(NETWORK, modules[NETWORK])

    def voxel_weights(self, batch: dict, valid, x0: torch.Tensor) -> torch.Tensor | None:
        """Per-voxel loss weights on the grid of ``x0`` (None: every voxel alike): the
        validity mask of padded volumes, times ``1 + task.lesion_weight`` on lesion voxels
        (a block of a downsampling space counts as lesion when any voxel in it is)."""
        if not self.cfg.lesion_weight:
            return valid
        factor = batch["mask"].shape[-1] // x0.shape[-1]
        lesion = _pool(batch["mask"] > 0, factor).to(x0.dtype)
        w = 1.0 + self.cfg.lesion_weight * lesion
        return w if valid is None else w * valid.to(w.dtype)

    def encode(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(x0 in the diffusion space, validity mask on its grid or None)."""
        x0 = encode_x0(self.space, self.layout, batch)
        valid = batch.get("valid")
        if valid is not None:
            valid = _pool(valid, valid.shape[-1] // x0.shape[-1])
        return x0, valid

    def bucket(self, t: torch.Tensor, n: int) -> torch.Tensor:
        """Timestep bucket (0..n-1) of each t."""
        if self.strategy.kind == "ddpm":
            return (t.long() * n // self.strategy.num_train_timesteps).clamp(max=n - 1)
        return (t.float() * n).long().clamp(0, n - 1)

    def weights(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor | None:
        """Min-SNR-gamma weights (DDPM), or None."""
        gamma = getattr(self.cfg.strategy, "min_snr_gamma", None)
        if gamma is None:
            return None
        snr = self.strategy.snr(t, like).reshape(-1)
        return min_snr_weight(snr, self.strategy.prediction, gamma)

    def extra_losses(self, net, batch: dict, x_t, out, t, cond) -> dict[str, torch.Tensor]:
        """Loss terms a variant adds to the training loss (named; none here)."""
        return {}

    def losses(
        self,
        net,
        batch: dict,
        t: torch.Tensor,
        noise: torch.Tensor,
        x0,
        valid,
        cond,
        extra=False,
        weighting=None,
    ):
        """(diffusion_loss dict, per-sample weighted loss (B,)) at timesteps ``t``; ``valid``
        may be float voxel weights (a weighted mean); ``extra``: add :meth:`extra_losses`
        to ``loss`` (training); ``weighting``: the (wrapped) :class:`UncertaintyWeighting`
        that turns the channel groups' losses into ``loss`` (training)."""
        x_t = self.strategy.add_noise(x0, noise, t)
        out = net(x_t, self.strategy.model_time(t).to(x0.device), cond)
        target = self.strategy.training_target(x0, noise, t)
        w = self.weights(t, x0)
        groups = self.layout.latent_groups(self.space)
        m = valid if valid is not None else None
        losses = diffusion_loss(out, target, weight=w, mask=m, channels=groups, kind=self.cfg.loss)
        if weighting is not None:
            losses["loss"], weights = weighting({g: losses[g] for g in groups})
            losses.update({k: torch.tensor(v) for k, v in weights.items()})
        if extra and self.cfg.freq_loss_weight:
            freq = frequency_loss(out, target, weighting=self.cfg.freq_weighting, mask=m)
            if w is not None:
                freq = freq * w
            losses["freq"] = self.cfg.freq_loss_weight * freq.mean()
            losses["loss"] = losses["loss"] + losses["freq"]
        if extra:
            for name, term in self.extra_losses(net, batch, x_t, out, t, cond).items():
                losses[name] = term
                losses["loss"] = losses["loss"] + term
        err = (out.detach().float() - target.float()) ** 2
        if self.cfg.loss == "l1":
            err = err.sqrt()
        per_sample = masked_mean_per_sample(err, m)
        if w is not None:
            per_sample = per_sample * w
        return losses, per_sample


class DiffusionTask:
    """The training side: the loss of the ``diffusion`` objective and the task's state."""

    def __init__(self, model: DiffusionModel, device: torch.device, seed: int) -> None:
        self.model, self.device = model, device
        self.generator = torch.Generator().manual_seed(seed)

    def loss(self, nets, batch: dict, step: int) -> tuple[torch.Tensor, dict]:
        """The weighted diffusion loss of one batch, and its logs."""
        m = self.model
        batch = to_device(batch, self.device)
        x0, valid = m.encode(batch)
        b = x0.shape[0]
        t = m.strategy.sample_timesteps(b, self.generator).to(self.device)
        noise = torch.randn(x0.shape, generator=self.generator).to(x0)
        tokens = None
        if m.null_token is not None:
            drop = torch.rand((b,), generator=self.generator) < m.cfg.cond_dropout
            tokens = torch.where(drop.to(self.device), m.null_token, batch["token"])
        cond = m.conditioning(batch, tokens)
        net = m.trained_network(nets)
        weights = m.voxel_weights(batch, valid, x0)
        if m.cfg.cutmix_prob:
            x0, weights, _ = latent_cutmix(x0, weights, m.cfg.cutmix_prob, self.generator)
        if m.cfg.augmented_channels:
            x0, noise, weights = self._augment_channels(x0, noise, weights)
        weighting = nets[LOSS_WEIGHTS] if m.loss_weighting is not None else None
        losses, per_sample = m.losses(
            net, batch, t, noise, x0, weights, cond, extra=True, weighting=weighting
        )
        logs = {f"loss_{k}": float(v.detach()) for k, v in losses.items() if k != "loss"}
        n = m.cfg.eval_buckets
        bucket = m.bucket(t, n).cpu()
        per_sample = per_sample.cpu()
        for k in range(n):
            sel = bucket == k
            logs[f"loss_bucket{k}"] = (float(per_sample[sel].sum()), float(sel.sum()))
        return losses["loss"], logs

    def _augment_channels(self, x0, noise, weights):
        """DC-AE 1.5 augmented diffusion training: per sample, channels beyond a drawn count
        zeroed in x0 and noise and weighted 0 in the loss (per-channel voxel weights)."""
        lo, step = self.model.cfg.augmented_channels
        counts = sample_channel_counts(x0.shape[0], x0.shape[1], lo, step, self.generator)
        keep = structured_channel_mask(torch.ones_like(x0), counts.to(x0.device))
        w = keep if weights is None else keep * weights.to(keep.dtype)
        return structured_channel_mask(x0, counts), structured_channel_mask(noise, counts), w

    def state_dict(self) -> dict:
        """The noise generator."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        """Restore the noise generator."""
        self.generator.set_state(state["generator"])


def _prior_spec(cfg, layout, space, description) -> dict:
    """The network's prior channels and resize modes: one per prior channel, or with
    ``task.encode_priors`` the latent channels the autoencoder makes of them."""
    if not cfg.encode_priors:
        return {"prior_channels": len(layout.priors), "prior_modes": tuple(layout.prior_modes())}
    if "mask" in layout.priors or len(layout.priors) != len(layout.generate):
        raise ConfigError(
            f"task.encode_priors: the autoencoder encodes {len(layout.generate)} image "
            f"channel(s) {list(layout.generate)}; the priors {list(layout.priors)} are not "
            "image channels of that count"
        )
    latent = space.latent_shape((1, len(layout.priors), *description.shape))
    return {"prior_channels": int(latent[1]), "prior_modes": ("linear",)}


def _loss_weighting(cfg, description, layout, space) -> UncertaintyWeighting | None:
    """The learned loss weighting of ``task.uncertainty_weighting`` (None when off); also
    checks ``task.lesion_weight`` has masks to weigh by and ``task.augmented_channels`` fits
    the space's latent channels."""
    if cfg.lesion_weight and not description.has_mask:
        raise ConfigError(
            f"task.lesion_weight: {cfg.lesion_weight} weighs lesion voxels, but the cache has no "
            "masks (set task.lesion_weight=0)"
        )
    if cfg.augmented_channels:
        try:
            check_structured(space.latent_shape((1, len(layout.generate), *description.shape))[1],
                             *cfg.augmented_channels)  # fmt: skip
        except ValueError as exc:
            raise ConfigError(f"task.augmented_channels: {exc}") from None
    if not cfg.uncertainty_weighting:
        return None
    groups = layout.latent_groups(space)
    if len(groups) < 2:
        raise ConfigError(
            "task.uncertainty_weighting: needs two or more generated channel groups kept apart "
            f"by the space; the {space.kind!r} space gives {sorted(groups) or 'one mixed group'}"
        )
    return UncertaintyWeighting(tuple(groups), cfg.uncertainty_clamp)
