"""A run of the engine under torchrun for the DDP tests (a file, so torchrun can start it).

    python -m torch.distributed.run --standalone --nproc_per_node=2 ddp_worker.py RUN BATCH
        [--steps 12] [--checkpoint-every 0] [--stall-at -1] [--plain 0]

An MLP with dropout on a regression set streamed by a DataLoader over a ResumableBatchSampler
(each rank its slice of every global batch); items carry noise from their item seeds, and
the task adds noise from its own generator (one per rank), so exact resume needs every state
restored. ``--plain 1`` drops the dropout and the per-rank noise (they differ by rank by
design), leaving a run whose 2-rank and 1-rank versions see exactly the same numbers.
"""

import sys
import time

import numpy as np
import torch

from medgen.data import ResumableBatchSampler
from medgen.train.engine import EngineSettings, LoaderBatches, TrainingSetup, distributed, fit
from medgen.train.engine.preemption import Preempted


class Items(torch.utils.data.Dataset):
    def __init__(self):
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(64, 6, generator=g)
        self.y = torch.stack([self.x[:, :3].sum(1), self.x[:, 3:].prod(1)], 1)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, key):
        i, seed = key
        noise = np.random.default_rng(seed).normal(size=6).astype(np.float32)
        return self.x[i] + 0.05 * torch.from_numpy(noise), self.y[i]


class Task:
    def __init__(self, rank, stall_at, plain):
        self.generator = torch.Generator().manual_seed(11 + rank)
        self.stall_at, self.noise = stall_at, 0.0 if plain else 0.01

    def loss(self, model, batch, step):
        if step == self.stall_at:
            time.sleep(600)  # the checkpoint before this step is complete: kill me now
        x, y = batch
        x = x + self.noise * torch.randn(x.shape, generator=self.generator)
        loss = ((model(x) - y) ** 2).mean()
        return loss, {"mse": float(loss.detach())}

    def state_dict(self):
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state):
        self.generator.set_state(state["generator"])


def main():
    run_dir, batch = sys.argv[1], int(sys.argv[2])
    opts = dict(zip(sys.argv[3::2], sys.argv[4::2], strict=True))
    torch.set_num_threads(1)
    ctx = distributed.setup()
    torch.manual_seed(0)
    plain = opts.get("--plain", "0") == "1"
    net = torch.nn.Sequential(
        torch.nn.Linear(6, 32), torch.nn.Tanh(), torch.nn.Dropout(0.0 if plain else 0.1),
        torch.nn.Linear(32, 2),
    )  # fmt: skip
    task = Task(ctx.rank, int(opts.get("--stall-at", -1)), plain)
    sampler = ResumableBatchSampler(64, batch, seed=5, rank=ctx.rank, world_size=ctx.world_size)
    settings = EngineSettings(
        steps=int(opts.get("--steps", 12)), batch_size=batch, lr=1e-2, warmup_steps=2,
        log_every=4, ema_decay=0.9, tensorboard=False, keep_last=0, deterministic=True,
        checkpoint_every=int(opts.get("--checkpoint-every", 0)),
    )  # fmt: skip
    setup = TrainingSetup.single(net, task.loss, state=task)
    try:
        result = fit(setup, LoaderBatches(Items(), sampler), settings, run_dir, dist_ctx=ctx,
                     quiet=True)  # fmt: skip
        print(f"rank {ctx.rank}: step {result.step}", flush=True)
    except Preempted as exc:
        print(exc, file=sys.stderr)
        return exc.exit_code
    finally:
        distributed.teardown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
