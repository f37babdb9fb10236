"""The ``diffusion`` task: any strategy in any space, 2D slices or 3D volumes, image-only or
joint image + mask, with the conditionings of :class:`medgen.models.ConditionedUNet`.

Training draws timesteps and noise from the task's own generator (saved in checkpoints, so a
resumed run draws the same), noises x0 in the chosen space, and minimises
:func:`medgen.models.diffusion_loss` on the strategy's target, Min-SNR weighted for DDPM,
masked to the valid voxels of padded volumes, logged per generated channel and per timestep
bucket. Its evaluator scores held-out subjects at every evaluation: the validation loss (with
noise and timesteps fixed per item, so evaluations compare) and the EMA model's x0-prediction
PSNR per timestep bucket (the JS-DDPM health check: high at small t, falling smoothly).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import default_collate

from medgen.models import Conditioning, diffusion_loss, masked_mean_per_sample, min_snr_weight
from medgen.models.augmentation import latent_cutmix
from medgen.models.autoencoders.dcae_structured import (
    check_structured,
    sample_channel_counts,
    structured_channel_mask,
)
from medgen.models.losses import frequency_loss
from medgen.models.uncertainty import UncertaintyWeighting
from medgen.train.engine.evaluators import Evaluation
from medgen.train.engine.objectives import Objective, TrainingSetup
from medgen.train.errors import ConfigError
from medgen.train.evaluation.overfit import diffusion_overfit_kid
from medgen.train.latents.space import build_space, calibrate, data_x0, encode_x0, latent_modules
from medgen.train.tasks.data import DataDescription
from medgen.train.tasks.diffusion.channels import ChannelLayout
from medgen.train.tasks.diffusion.config import DiffusionConfig
from medgen.train.tasks.networks import NetworkSpec

NETWORK = "network"
LOSS_WEIGHTS = "loss_weights"  # the learned log-variances of task.uncertainty_weighting


def _to(batch: dict, device: torch.device) -> dict:
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
        for k, v in batch.items()
    }


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

    @classmethod
    def build(cls, cfg: DiffusionConfig, model_cfg, description: DataDescription, device):
        """Strategy, space and network for ``description``'s data."""
        layout = ChannelLayout.from_config(
            cfg.generate, cfg.priors, description.channels, description.has_mask
        )
        strategy = cfg.strategy.build()
        space = build_space(cfg.space, description, layout, device)
        shape = (1, len(layout.generate), *description.shape)
        try:
            latent = tuple(space.latent_shape(shape)[1:])
        except ValueError as exc:
            raise ConfigError(f"task.space: {exc} (data shape {description.shape})") from None
        num_tokens = description.n_bins * description.n_classes if cfg.tokens else None
        spec = NetworkSpec(
            spatial_dims=description.spatial_dims,
            in_channels=latent[0],
            out_channels=latent[0],
            shape=latent[1:],
            num_tokens=num_tokens,
            null_token=cfg.cond_dropout > 0,
            num_modes=description.n_modes or None,
            prior_channels=len(layout.priors),
            prior_modes=tuple(layout.prior_modes()),
        )
        network = model_cfg.build(spec).to(device)
        weighting = _loss_weighting(cfg, description, layout, space)
        if weighting is not None:
            weighting = weighting.to(device)
        return cls(
            cfg, description, layout, strategy, space, network, num_tokens, latent, weighting
        )

    @property
    def null_token(self) -> int | None:
        """The learned unconditional token (classifier-free guidance), if trained with one."""
        return self.num_tokens if self.cfg.cond_dropout > 0 and self.num_tokens else None

    def conditioning(self, batch: dict, tokens: torch.Tensor | None = None) -> Conditioning:
        """The network's conditioning for a batch (``tokens`` replaces the batch's)."""
        return Conditioning(
            token=(tokens if tokens is not None else batch["token"]) if self.num_tokens else None,
            mode=batch["mode"] if self.description.n_modes else None,
            priors=self.layout.prior_tensors(batch) if self.layout.priors else None,
            control=self.layout.control_tensor(batch) if self.layout.control else None,
        )

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
        batch = _to(batch, self.device)
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


class DiffusionEvaluator:
    """Validation loss and x0-prediction PSNR per timestep bucket on held-out items, computed
    on every rank over its share of the items, from the EMA weights when there are any."""

    def __init__(self, model: DiffusionModel, dataset, batch_size: int, device) -> None:
        self.model, self.dataset, self.device = model, dataset, device
        self.batch_size = batch_size
        n = min(model.cfg.eval_samples, len(dataset))
        self.items = np.unique(np.linspace(0, len(dataset) - 1, n).round().astype(int)).tolist()

    def metric_names(self) -> tuple[str, ...]:
        """What :meth:`summarize` reports."""
        groups = [f"val_loss_{g}" for g in self.model.layout.latent_groups(self.model.space)]
        buckets = [f"x0_psnr_t{k}" for k in range(self.model.cfg.eval_buckets)]
        return ("val_loss", *groups, *buckets)

    def _draw(self, item: int, bucket: int | None) -> tuple[torch.Generator, object]:
        code = 0 if bucket is None else bucket + 1
        seed = np.random.SeedSequence([self.model.cfg.eval_seed, item, code]).generate_state(1)
        g = torch.Generator().manual_seed(int(seed[0]))
        s = self.model.strategy
        if bucket is None:
            return g, s.sample_timesteps(1, g)
        n = self.model.cfg.eval_buckets
        if s.kind == "ddpm":  # the t with floor(t n / T) == bucket, as bucket() assigns them
            T = s.num_train_timesteps
            lo, hi = -(-bucket * T // n), -(-(bucket + 1) * T // n)
            return g, torch.randint(lo, hi, (1,), generator=g)
        u = torch.rand((1,), generator=g, dtype=torch.float64)
        return g, ((bucket + u) / n).clamp(max=1.0).float()

    def _noise(self, chunk: list[int], bucket: int | None, like: torch.Tensor):
        draws = [self._draw(i, bucket) for i in chunk]
        t = torch.cat([d[1] for d in draws]).to(self.device)
        noise = torch.cat([torch.randn((1, *like.shape[1:]), generator=g) for g, _ in draws])
        return t, noise.to(like)

    def _x0_prediction(self, net, batch, x0, cond, chunk, bucket: int) -> torch.Tensor:
        """The clipped x0 prediction of the image channels, in data space."""
        m = self.model
        t, noise = self._noise(chunk, bucket, x0)
        x_t = m.strategy.add_noise(x0, noise, t)
        out = net(x_t, m.strategy.model_time(t).to(self.device), cond)
        pred = m.space.decode(m.strategy.predict_x0(x_t, out, t))[:, m.layout.image_indices()]
        if m.cfg.clip_x0 is not None:
            pred = pred.clamp(-m.cfg.clip_x0, m.cfg.clip_x0)
        return pred

    def _batch(self, chunk: list[int]):
        batch = _to(default_collate([self.dataset[i] for i in chunk]), self.device)
        x0, valid = self.model.encode(batch)
        return batch, x0, valid, self.model.conditioning(batch)

    @torch.no_grad()
    def evaluate(self, modules, ema, step: int, ctx) -> Evaluation:
        """This rank's sums of losses and squared x0 errors; rank 0 adds an image."""
        m = self.model
        net = m.evaluated_network(modules, ema)
        sums: dict[str, tuple[float, float]] = {}

        def add(key: str, total: float, count: float) -> None:
            s, c = sums.get(key, (0.0, 0.0))
            sums[key] = (s + total, c + count)

        mine = self.items[ctx.rank :: ctx.world_size]
        for start in range(0, len(mine), self.batch_size):
            chunk = mine[start : start + self.batch_size]
            batch, x0, valid, cond = self._batch(chunk)
            t, noise = self._noise(chunk, None, x0)  # fixed per item: evaluations compare
            losses, per_sample = m.losses(net, batch, t, noise, x0, valid, cond)
            add("val_loss", float(per_sample.sum()), len(chunk))
            for name in m.layout.latent_groups(m.space):
                add(f"val_loss_{name}", float(losses[name]) * len(chunk), len(chunk))
            truth = data_x0(m.space, m.layout, batch)[:, m.layout.image_indices()].float()
            weight = batch.get("valid")
            for k in range(m.cfg.eval_buckets):
                err = (self._x0_prediction(net, batch, x0, cond, chunk, k).float() - truth) ** 2
                w = weight.expand_as(err).float() if weight is not None else torch.ones_like(err)
                add(f"x0_mse_t{k}", float((err * w).sum()), float(w.sum()))
        images = {}
        if ctx.is_main:
            images["x0_predictions"] = self._image(net)
        return Evaluation(sums, images)

    def _image(self, net) -> np.ndarray:
        """Real image channel 0 of the first held-out items, then the x0 predictions at an
        early, a middle and the last timestep bucket (one column each)."""
        m = self.model
        chunk = self.items[:4]
        batch, x0, _, cond = self._batch(chunk)
        n = m.cfg.eval_buckets
        columns = [data_x0(m.space, m.layout, batch)[:, m.layout.image_indices()[0]]]
        for k in (1, n // 2, n - 1):
            columns.append(self._x0_prediction(net, batch, x0, cond, chunk, k)[:, 0])
        return _grid([c.detach().float().cpu() for c in columns])

    def summarize(self, means: dict[str, float]) -> dict[str, float]:
        """Mean squared errors (data range [-1, 1]) as PSNR in dB."""
        out = {k: v for k, v in means.items() if not k.startswith("x0_mse_")}
        for k in range(self.model.cfg.eval_buckets):
            mse = means.get(f"x0_mse_t{k}", math.nan)
            out[f"x0_psnr_t{k}"] = 10 * math.log10(4.0 / max(mse, 1e-12)) if mse == mse else mse
        return out


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


def _grid(columns: list[torch.Tensor]) -> np.ndarray:
    """Columns of (n, *spatial) images in [-1, 1] side by side -> (H, W) in [0, 1]; volumes
    show their middle axial slice."""
    cols = []
    for c in columns:
        a = c.numpy()
        if a.ndim == 4:
            a = a[:, a.shape[1] // 2]
        cols.append(np.concatenate(list(a), axis=0))
    return (np.concatenate(cols, axis=1) + 1) / 2


def build_setup(ctx) -> TrainingSetup:
    """The training setup of a ``diffusion`` task for a build context."""
    cfg = ctx.config.task
    model = DiffusionModel.build(cfg, ctx.config.model, ctx.description, ctx.device)
    if cfg.space.kind == "latent":  # the scale factor, recorded in data.json
        calibrate(model, ctx)
    seed = ctx.config.training.seed + 1 + 1000 * ctx.dist.rank  # own noise per rank
    task = DiffusionTask(model, ctx.device, seed)
    evaluators = []
    if ctx.eval_dataset is not None:
        evaluators.append(
            DiffusionEvaluator(model, ctx.eval_dataset, ctx.config.training.batch_size, ctx.device)
        )
    overfit = diffusion_overfit_kid(ctx, model)  # task.overfit_kid_every (0: None)
    if overfit is not None:
        evaluators.append(overfit)
    setup = TrainingSetup(
        modules=model.modules(),
        objectives=[Objective("diffusion", tuple(model.checkpointed()), task.loss)],
        evaluators=evaluators,
        state=task,
    )
    return setup
