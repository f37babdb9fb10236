"""Joint image + mask diffusion (JS-DDPM style) on token-conditioned slices, as an engine task.

The model sees a 2-channel tensor ``[image, mask]`` in [-1, 1] and one token per sample
(``z_bin + n_bins * class``). Image and mask losses are computed and logged separately, and
so is the loss per timestep bucket (10 bins of [0, T)); ``evaluate`` records the EMA model's
x0-prediction PSNR per bucket.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from medgen.models import DDPM, min_snr_weight
from medgen.train.batches import RandomDraws
from medgen.train.engine import FitResult, fit
from medgen.train.evaluation import x0_psnr_by_bucket
from medgen.train.optim import warmup_cosine
from medgen.train.settings import EngineSettings

N_BUCKETS = 10

__all__ = ["JointDiffusionTask", "per_sample_channel_loss", "train_joint", "warmup_cosine"]


def per_sample_channel_loss(
    strategy: DDPM,
    model: nn.Module,
    x0: torch.Tensor,
    token: torch.Tensor,
    generator: torch.Generator,
    min_snr_gamma: float | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted MSE per sample and channel (B, C), and the timesteps drawn (B,)."""
    b = x0.shape[0]
    t = strategy.sample_timesteps(b, generator).to(x0.device)
    noise = torch.randn(x0.shape, generator=generator).to(x0)
    x_t = strategy.add_noise(x0, noise, t)
    out = model(x_t, t, token)
    target = strategy.training_target(x0, noise, t)
    err = (out.float() - target.float()) ** 2  # (B, C, H, W)
    per_sample_channel = err.flatten(2).mean(-1)  # (B, C)
    if min_snr_gamma is not None:
        w = min_snr_weight(strategy.snr(t, x0).reshape(b), strategy.prediction, min_snr_gamma)
        per_sample_channel = per_sample_channel * w[:, None].float()
    return per_sample_channel, t


class JointDiffusionTask:
    """Engine task: batches are ``(x0, tokens)``; noise and timesteps come from
    ``generator`` (saved in checkpoints, so resume draws the same noise)."""

    def __init__(
        self,
        strategy: DDPM,
        generator: torch.Generator,
        min_snr_gamma: float | None = None,
        channel_names: tuple[str, ...] = ("image", "mask"),
        eval_data: tuple[torch.Tensor, torch.Tensor] | None = None,
        eval_seed: int = 0,
    ) -> None:
        self.strategy, self.generator = strategy, generator
        self.min_snr_gamma, self.channel_names = min_snr_gamma, channel_names
        self.eval_data, self.eval_seed = eval_data, eval_seed
        self.diagnostics: list[tuple[int, list[float]]] = []  # (step, x0 PSNR per bucket)

    def loss(self, model: nn.Module, batch, step: int) -> tuple[torch.Tensor, dict]:
        x0, tokens = batch
        per, t = per_sample_channel_loss(
            self.strategy, model, x0, tokens, self.generator, self.min_snr_gamma
        )
        losses = per.mean(0)
        logs = {
            f"loss_{n}": float(v) for n, v in zip(self.channel_names, losses.detach(), strict=True)
        }
        per_sample = per.detach().mean(1).cpu()
        bucket = (t.cpu() * N_BUCKETS // self.strategy.num_train_timesteps).clamp(max=N_BUCKETS - 1)
        for k in range(N_BUCKETS):
            sel = bucket == k
            logs[f"loss_t{k}"] = (float(per_sample[sel].sum()), float(sel.sum()))
        return losses.mean(), logs

    def evaluate(self, model: nn.Module, ema_model: nn.Module | None, step: int) -> dict:
        if self.eval_data is None:
            return {}
        x0, tokens = self.eval_data
        values = x0_psnr_by_bucket(
            ema_model if ema_model is not None else model,
            self.strategy,
            x0,
            tokens,
            N_BUCKETS,
            seed=self.eval_seed,
        )
        self.diagnostics.append((step, values))
        return {f"x0_psnr_t{k}": v for k, v in enumerate(values)}

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


@dataclass
class TrainSettings:
    steps: int
    batch_size: int
    lr: float
    warmup_steps: int
    weight_decay: float
    grad_clip: float
    min_snr_gamma: float | None
    ema_decay: float
    log_every: int

    def engine(self, **changes) -> EngineSettings:
        return EngineSettings(
            steps=self.steps,
            batch_size=self.batch_size,
            lr=self.lr,
            warmup_steps=self.warmup_steps,
            weight_decay=self.weight_decay,
            grad_clip=self.grad_clip,
            ema_decay=self.ema_decay,
            log_every=self.log_every,
            **changes,
        )


def train_joint(
    model: nn.Module,
    strategy: DDPM,
    data: torch.Tensor,
    tokens: torch.Tensor,
    settings: TrainSettings | EngineSettings,
    run_dir,
    generator: torch.Generator,
    *,
    min_snr_gamma: float | None = None,
    channel_names: tuple[str, ...] = ("image", "mask"),
    eval_data: tuple[torch.Tensor, torch.Tensor] | None = None,
    config: dict | None = None,
    quiet: bool = False,
) -> tuple[FitResult, JointDiffusionTask]:
    """Train ``model`` on ``data`` (N, C, H, W) with ``tokens`` (N,) through the engine.

    Each update draws its batch indices and then its timesteps and noise from ``generator``,
    in that order (the quickstart's order of random draws).
    """
    if isinstance(settings, TrainSettings):
        min_snr_gamma = settings.min_snr_gamma
        settings = settings.engine()
    task = JointDiffusionTask(strategy, generator, min_snr_gamma, channel_names, eval_data)
    batches = RandomDraws((data, tokens), settings.batch_size, generator)
    result = fit(task, model, batches, settings, run_dir, config=config, quiet=quiet)
    return result, task
