"""Several objectives (a generator and a critic), EMA of named modules only, and frozen
modules that are neither copied into the EMA nor written to checkpoints."""

import pytest
import torch
from safetensors.torch import load_file

from medgen.train.checkpoint import load_training_state
from medgen.train.engine import (
    EngineSettings,
    Objective,
    OptimizerSettings,
    ShardedBatches,
    TrainingSetup,
    fit,
)


def data(n=32):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    return x, x.sum(1, keepdim=True)


class Pair:
    """A generator trained through a frozen encoder and a critic trained from ``start``."""

    def __init__(self, start=3):
        torch.manual_seed(0)
        self.encoder = torch.nn.Linear(4, 4).requires_grad_(False)
        self.generator = torch.nn.Linear(4, 1)
        self.critic = torch.nn.Linear(1, 1)
        self.calls = {"generator": [], "critic": []}
        self.start = start

    def gen_loss(self, nets, batch, step):
        self.calls["generator"].append(step)
        x, y = batch
        out = nets["generator"](nets["encoder"](x))
        critic = nets.unwrapped("critic")  # called without the critic's DDP hooks
        return ((out - y) ** 2).mean() + 0.0 * critic(out).mean(), {}

    def critic_loss(self, nets, batch, step):
        self.calls["critic"].append(step)
        x, y = batch
        with torch.no_grad():
            fake = nets["generator"](nets["encoder"](x))
        return (nets["critic"](fake) - nets["critic"](y)).mean() ** 2, {"critic_gap": 0.0}

    def setup(self, **kw):
        return TrainingSetup(
            modules={"encoder": self.encoder, "generator": self.generator, "critic": self.critic},
            objectives=[
                Objective("generator", ("generator",), self.gen_loss),
                Objective(
                    "critic",
                    ("critic",),
                    self.critic_loss,
                    optim=OptimizerSettings(optimizer="sgd", lr=0.5, lr_schedule="constant"),
                    start_step=self.start,
                ),
            ],
            **kw,
        )


def settings(**kw):
    base = dict(steps=6, batch_size=8, lr=1e-2, log_every=1, tensorboard=False, keep_last=0)
    return EngineSettings(**{**base, **kw})


def test_objectives_start_on_time_with_their_own_optimizers(tmp_path):
    pair = Pair(start=3)
    encoder_before = pair.encoder.weight.detach().clone()
    critic_before = pair.critic.weight.detach().clone()
    result = fit(pair.setup(ema_modules=("generator",)), ShardedBatches(data(), 8),
                 settings(), tmp_path, quiet=True)  # fmt: skip
    assert pair.calls["generator"] == [0, 1, 2, 3, 4, 5]
    assert pair.calls["critic"] == [3, 4, 5]  # the critic's phase starts at update 3
    assert torch.equal(pair.encoder.weight, encoder_before)  # frozen really frozen
    assert not torch.equal(pair.critic.weight, critic_before)
    row = result.rows[-1]
    assert {"loss_generator", "loss_critic", "lr_generator", "lr_critic"} <= row.keys()
    assert row["lr_critic"] == 0.5  # its own optimizer settings
    assert set(result.ema.modules) == {"generator"}  # EMA of the named module only
    ckpt = tmp_path / "checkpoints" / "latest"
    weights = load_file(ckpt / "model.safetensors")
    assert {k.split(".")[0] for k in weights} == {"generator", "critic"}  # no frozen encoder
    assert {k.split(".")[0] for k in load_file(ckpt / "ema.safetensors")} == {"generator"}
    state = load_training_state(ckpt.resolve())
    assert set(state["objectives"]) == {"generator", "critic"}
    sgd = state["objectives"]["critic"]["optimizer"]["param_groups"][0]
    assert "momentum" in sgd and sgd["lr"] == 0.5


def test_critic_lr_schedule_counts_from_its_start():
    pair = Pair(start=2)
    setup = pair.setup()
    setup.objectives[1].optim = OptimizerSettings(lr=1.0, lr_schedule="constant", warmup_steps=2)
    result = fit(setup, ShardedBatches(data(), 8), settings(steps=5), quiet=True)
    lrs = [r["lr_critic"] for r in result.rows]  # the lr of the next update, after 1..5
    assert lrs == pytest.approx([0.5, 0.5, 1.0, 1.0, 1.0])  # warm-up from the critic's start


def test_bad_setups_are_refused_by_name():
    pair = Pair()
    loose = pair.setup()
    pair.encoder.requires_grad_(True)
    with pytest.raises(ValueError, match="'encoder' is trained by no objective"):
        loose.check()
    pair.encoder.requires_grad_(False)
    with pytest.raises(ValueError, match="ema_modules names 'encoder'"):
        pair.setup(ema_modules=("encoder",)).check()
    bad = pair.setup()
    bad.objectives[0].modules = ("decoder",)
    with pytest.raises(ValueError, match="unknown module 'decoder'"):
        bad.check()
