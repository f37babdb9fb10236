"""A tiny training run through the engine, for tests that need a real process to kill.

    python engine_worker.py RUN_DIR --steps 16 [--checkpoint-every 8] [--stall-at 8]
        [--slow 0.05] [--started FILE] [--nan-from K] [--max-skips 3] [--loader N]

An MLP with dropout (global torch RNG) on a fixed regression set; the task adds noise from
its own generator (saved in checkpoints), so exact resume needs every RNG and the data
position restored. ``--loader N`` streams batches from a DataLoader with N workers over a
dataset that adds per-item noise from the sampler's item seeds (as random crops do).
Exits with the Preempted exit code when stopped by a signal.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medgen.data import ResumableBatchSampler
from medgen.train.engine import LoaderBatches, ShardedBatches, TrainingSetup, fit
from medgen.train.engine.preemption import Preempted
from medgen.train.engine.settings import EngineSettings


class NoisyRegression:
    def __init__(self, seed: int, stall_at: int, slow: float, started: str, nan_from: int):
        self.generator = torch.Generator().manual_seed(seed + 1)
        self.stall_at, self.slow, self.started, self.nan_from = stall_at, slow, started, nan_from

    def loss(self, model, batch, step):
        if self.started and step >= 2:
            Path(self.started).touch()
        if step == self.stall_at:
            time.sleep(600)  # the checkpoint of step `stall_at` is complete: kill me now
        if self.slow:
            time.sleep(self.slow)
        x, y = batch
        x = x + 0.1 * torch.randn(x.shape, generator=self.generator)
        loss = ((model(x) - y) ** 2).mean()
        if 0 <= self.nan_from <= step:
            loss = loss * float("nan")
        return loss, {"mse": float(loss.detach())}

    def state_dict(self):
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state):
        self.generator.set_state(state["generator"])


class ItemNoise(torch.utils.data.Dataset):
    """(x + noise from the item seed, y): a random augmentation that must resume exactly."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, key):
        i, seed = key
        noise = np.random.default_rng(seed).normal(size=self.x.shape[1]).astype(np.float32)
        return self.x[i] + 0.05 * torch.from_numpy(noise), self.y[i]


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Dropout(0.2), nn.Linear(32, 2))


def make_data(n: int = 40, seed: int = 123) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    return x, torch.stack([x[:, :3].sum(1), x[:, 3:].prod(1)], 1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--checkpoint-every", type=int, default=0)
    ap.add_argument("--stall-at", type=int, default=-1)
    ap.add_argument("--slow", type=float, default=0.0)
    ap.add_argument("--started", default="")
    ap.add_argument("--nan-from", type=int, default=-1)
    ap.add_argument("--max-skips", type=int, default=3)
    ap.add_argument("--loader", type=int, default=-1, help="DataLoader workers (-1: in memory)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    settings = EngineSettings(
        steps=args.steps,
        batch_size=4,
        grad_accum=2,
        lr=1e-2,
        warmup_steps=3,
        ema_decay=0.99,
        log_every=2,
        checkpoint_every=args.checkpoint_every,
        keep_last=0,
        max_consecutive_skips=args.max_skips,
        tensorboard=False,
        deterministic=True,
    )
    task = NoisyRegression(0, args.stall_at, args.slow, args.started, args.nan_from)
    if args.loader >= 0:
        sampler = ResumableBatchSampler(40, settings.batch_size, seed=7)
        batches = LoaderBatches(ItemNoise(*make_data()), sampler, num_workers=args.loader)
    else:
        batches = ShardedBatches(make_data(), settings.batch_size, seed=7)
    setup = TrainingSetup.single(make_model(), task.loss, state=task)
    try:
        fit(setup, batches, settings, args.run_dir, quiet=True)
    except Preempted as exc:
        print(exc, file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
