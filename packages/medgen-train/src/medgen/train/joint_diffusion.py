"""Training of a joint image + mask diffusion model (JS-DDPM style) on token-conditioned slices.

The model sees a 2-channel tensor ``[image, mask]`` in [-1, 1] and one token per sample
(``z_bin + n_bins * class``). Image and mask losses are computed and logged separately.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from medgen.models import DDPM, min_snr_weight
from medgen.train.ema import EMA
from medgen.train.metrics_log import MetricsLog


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


@dataclass
class TrainResult:
    ema: EMA
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler


def warmup_cosine(step: int, total: int, warmup: int, floor: float = 0.1) -> float:
    """LR multiplier: linear warm-up to 1, then cosine decay to ``floor``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def per_channel_loss(
    strategy: DDPM,
    model: nn.Module,
    x0: torch.Tensor,
    token: torch.Tensor,
    generator: torch.Generator,
    min_snr_gamma: float | None,
) -> torch.Tensor:
    """Weighted MSE per channel, shape (C,): mean over batch and pixels of each channel."""
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
    return per_sample_channel.mean(0)


def train_joint(
    model: nn.Module,
    strategy: DDPM,
    data: torch.Tensor,
    tokens: torch.Tensor,
    settings: TrainSettings,
    log: MetricsLog,
    generator: torch.Generator,
    channel_names: tuple[str, ...] = ("image", "mask"),
    disable_bars: bool | None = None,
    on_step=None,
) -> TrainResult:
    """Train ``model`` on ``data`` (N, C, H, W) with ``tokens`` (N,).

    ``on_step(step, ema)`` runs after every update (1-based step), e.g. for diagnostics; its
    time is excluded from the images/s figure.
    """
    device = data.device
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: warmup_cosine(s, settings.steps, settings.warmup_steps)
    )
    ema = EMA(model, settings.ema_decay)
    model.train()
    start = window_start = time.perf_counter()
    window_images = 0
    sums = torch.zeros(len(channel_names))
    window_steps = 0
    bar = tqdm(range(settings.steps), desc="train", disable=disable_bars)
    for step in bar:
        idx = torch.randint(0, data.shape[0], (settings.batch_size,), generator=generator)
        idx = idx.to(device)
        losses = per_channel_loss(
            strategy, model, data[idx], tokens[idx], generator, settings.min_snr_gamma
        )
        loss = losses.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip))
        if math.isfinite(float(loss.detach())) and math.isfinite(grad_norm):
            opt.step()
            ema.update(model)
        sched.step()
        sums += losses.detach().cpu()
        window_steps += 1
        window_images += settings.batch_size
        if (step + 1) % settings.log_every == 0 or step + 1 == settings.steps:
            now = time.perf_counter()
            means = (sums / window_steps).tolist()
            row = {
                "step": step + 1,
                "loss": sum(means) / len(means),
                **{f"loss_{n}": v for n, v in zip(channel_names, means, strict=True)},
                "lr": sched.get_last_lr()[0],
                "grad_norm": grad_norm,
                "ema_decay": ema.current_decay(),
                "images_per_s": window_images / (now - window_start),
                "elapsed_s": now - start,
            }
            log.log(row)
            bar.set_postfix(loss=f"{row['loss']:.4f}", ips=f"{row['images_per_s']:.0f}")
            sums.zero_()
            window_steps = window_images = 0
            window_start = time.perf_counter()
        if on_step is not None:
            t_cb = time.perf_counter()
            on_step(step + 1, ema)
            window_start += time.perf_counter() - t_cb  # evaluation is not training time
    model.eval()
    return TrainResult(ema=ema, optimizer=opt, scheduler=sched)
