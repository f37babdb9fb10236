"""The engine's safeguards on their failure paths, checked on behaviour (the weights and the
optimizer state the run leaves), not on the code that implements them:

* the NaN guard's rollback: a step that makes a weight (or the EMA) non-finite is undone,
  weights and optimizer state, counted, and the run stops after ``max_rollbacks`` in a row;
  a step that makes the weights explode (finite, but every loss after it non-finite) is undone
  before the guard stops, and no checkpoint of those weights survives;
* skips from non-finite gradients with finite losses, alternating with good updates;
* clipping measured on the update itself, and accumulation equal to one large batch.
"""

import csv
import math
import sys

import pytest
import torch
from safetensors.torch import load_file

from medgen.train.engine import EMA, ShardedBatches, TrainingSetup, fit
from medgen.train.engine.nan_guard import NonFiniteError
from medgen.train.engine.settings import EngineSettings


def make_model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))


def make_data(n=40, seed=123):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    return x, torch.stack([x[:, :3].sum(1), x[:, 3:].prod(1)], 1)


class Task:
    """MSE regression. ``grad_nan_at``: updates whose loss is finite but whose gradient is
    NaN (a hook on the output); ``loss_nan_at``: a NaN loss. Records every parameter at the
    start of every update (``seen[k]``: the weights update k starts from)."""

    def __init__(self, grad_nan_at=(), loss_nan_at=()):
        self.grad_nan_at, self.loss_nan_at = set(grad_nan_at), set(loss_nan_at)
        self.seen: dict[int, list[torch.Tensor]] = {}
        self.losses: dict[int, float] = {}

    def loss(self, model, batch, step):
        self.seen.setdefault(step, [p.detach().clone() for p in model.parameters()])
        x, y = batch
        out = model(x).float()
        if step in self.grad_nan_at:  # forward finite, backward NaN
            out.register_hook(lambda g: torch.full_like(g, float("nan")))
        loss = ((out - y) ** 2).mean()
        if step in self.loss_nan_at:
            loss = loss * float("nan")
        self.losses[step] = float(loss.detach())
        return loss, {}


def settings(**kw):
    base = dict(steps=8, batch_size=4, lr=1e-2, log_every=1, tensorboard=False, keep_last=0)
    return EngineSettings(**{**base, **kw})


def train(task, s, run_dir=None, net=None, seed=0):
    net = net if net is not None else make_model()
    setup = TrainingSetup.single(net, task.loss)
    return fit(setup, ShardedBatches(make_data(), s.batch_size, seed=seed), s, run_dir, quiet=True)


def equal(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def params(module):
    return [p.detach().clone() for p in module.parameters()]


def poison_steps(monkeypatch, task, at, cls=torch.optim.AdamW):
    """``cls.step`` leaves an infinite weight on the updates ``at`` (what ``lr=inf`` does)."""
    original = cls.step

    def step(self, *a, **k):
        out = original(self, *a, **k)
        if max(task.seen) in at:
            with torch.no_grad():
                self.param_groups[0]["params"][0].mul_(float("inf"))
        return out

    monkeypatch.setattr(cls, "step", step)


def rows(run_dir):
    return list(csv.DictReader((run_dir / "metrics.csv").open()))


# -- rollback -------------------------------------------------------------------------------


def test_lr_inf_every_step_is_rolled_back_to_the_initial_weights(tmp_path):
    """lr=inf: every step makes the weights NaN; each is rolled back and counted, and with
    room for them the run ends with exactly the initial weights and EMA, saved finite."""
    initial = params(make_model())
    s = settings(steps=5, lr=math.inf, max_rollbacks=10, lr_schedule="constant")
    r = train(Task(), s, tmp_path)
    assert r.step == 5 and r.rollbacks == 5 and r.skipped_updates == 0
    assert equal(params(r.model), initial)
    assert equal(params(r.ema.modules["model"]), initial)
    assert r.ema.num_updates == 0  # the EMA's count is rolled back too
    assert [int(row["rollbacks"]) for row in rows(tmp_path)] == [1, 2, 3, 4, 5]
    saved = load_file(r.checkpoint / "model.safetensors")
    names = [f"model.{n}" for n, _ in make_model().named_parameters()]
    assert equal([saved[n] for n in names], initial)


def test_consecutive_rollbacks_stop_the_run_naming_lr(tmp_path):
    initial = params(make_model())
    net = make_model()
    s = settings(steps=50, lr=math.inf, max_rollbacks=3, checkpoint_every=1)
    with pytest.raises(NonFiniteError) as info:
        train(Task(), s, tmp_path, net=net)
    message = str(info.value)
    assert "3 consecutive updates" in message and "training.lr (now inf)" in message
    assert "\n" not in message
    assert equal(params(net), initial)  # the in-memory weights are the verified ones
    for ckpt in (tmp_path / "checkpoints").glob("step_*"):  # what was saved is finite
        for w in load_file(ckpt / "model.safetensors").values():
            assert torch.isfinite(w).all()
    assert int(rows(tmp_path)[-1]["rollbacks"]) == 2  # the third raised before its log row


def test_intermittent_bad_steps_equal_skipping_them_weights_and_optimizer_state(monkeypatch):
    """A rolled-back step must leave no trace: with a snapshot every update, rolling back
    updates 1, 3, 5 and 6 gives bitwise the run that skipped them (the same Adam moments and
    step count; a rollback that restored the weights only would differ afterwards). Good
    steps between them end the streak: 4 rollbacks, never 3 in a row."""
    bad = {1, 3, 5, 6}
    skipped = train(Task(loss_nan_at=bad), settings(max_consecutive_skips=3))
    task = Task()
    poison_steps(monkeypatch, task, bad)
    rolled = train(task, settings())
    assert rolled.rollbacks == 4 and rolled.skipped_updates == 0
    assert skipped.rollbacks == 0 and skipped.skipped_updates == 4
    assert equal(task.seen[2], task.seen[1]) and not equal(task.seen[3], task.seen[2])
    assert equal(params(rolled.model), params(skipped.model))
    assert equal(params(rolled.ema.modules["model"]), params(skipped.ema.modules["model"]))


def test_snapshot_every_n_rolls_back_to_the_last_snapshot(monkeypatch):
    """Snapshots at updates 0, 3, 6: a bad step at update 4 goes back to the weights update
    3 started from (the good update 3 is lost: the price of a sparser snapshot)."""
    task = Task()
    poison_steps(monkeypatch, task, {4})
    r = train(task, settings(snapshot_every=3))
    assert r.rollbacks == 1
    assert equal(task.seen[5], task.seen[3])
    assert all(torch.isfinite(p).all() for p in r.model.parameters())


def test_a_non_finite_ema_is_rolled_back_with_the_weights(monkeypatch):
    task = Task()
    original = EMA.update

    def update(self, modules):
        original(self, modules)
        if max(task.seen) == 3:
            with torch.no_grad():
                next(iter(self.modules["model"].parameters())).fill_(float("nan"))

    monkeypatch.setattr(EMA, "update", update)
    r = train(task, settings())
    assert r.rollbacks == 1
    assert equal(task.seen[4], task.seen[3])  # the weights of update 3 undone as well
    assert all(torch.isfinite(p).all() for p in r.ema.modules["model"].parameters())


def test_exploded_weights_are_rolled_back_and_their_checkpoint_rejected(tmp_path):
    """The lr=1e30 pattern: a step leaves finite weights (SGD at lr=1e12 on a linear network:
    ~1e11, below where their float32 norm overflows and the weight check rolls back) from
    which every loss is inf. The guard stops after the skip limit, back at the verified
    weights, naming lr; the checkpoint written from the exploded weights is moved aside, so
    a resume never sees it, and none of them is called "last good"."""

    def linear():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Linear(16, 2))

    initial, net = params(linear()), linear()
    s = settings(steps=50, lr=1e12, checkpoint_every=1, max_consecutive_skips=3,
                 optimizer="sgd", momentum=0.0)  # fmt: skip
    task = Task()
    with pytest.raises(NonFiniteError, match="training.lr too large") as info:
        train(task, s, tmp_path, net=net)
    assert "last good checkpoint: none verified yet" in str(info.value)
    assert max(float(p.abs().max()) for p in task.seen[1]) > 1e10  # it did explode
    assert not math.isfinite(task.losses[1])
    assert equal(params(net), initial)
    root = tmp_path / "checkpoints"
    assert not list(root.glob("step_*"))  # step 1 rejected; steps 2-3 never written
    assert [p.name.split("-")[0] for p in (root / "rejected").iterdir()] == ["step_00000001"]
    assert not (root / "latest").exists()


def test_cli_fit_with_an_exploding_lr_exits_2_in_one_line_with_no_nan_checkpoint(tmp_path):
    """Through the CLI: lr=inf is refused before anything is written; lr=1e30 trains, each
    step rolled back, and stops after max_rollbacks with one line; nothing non-finite on
    disk."""
    import subprocess

    tiny = ["model.channels=16,32", "model.attention_levels=false,false", "training.steps=6",
            "training.batch_size=4", "training.warmup_steps=1", "training.log_every=1",
            "task.eval_samples=4", "data.eval_split=train", "data.recipe.size=16",
            "data.recipe.n_bins=4", "training.checkpoint_every=1"]  # fmt: skip
    env = {"MEDGEN_CACHE_DIR": str(tmp_path / "caches"), "OMP_NUM_THREADS": "1",
           "MEDGEN_QUIET": "1", "PATH": "/usr/bin:/bin"}  # fmt: skip

    def fit_cli(lr, out):
        cmd = [sys.executable, "-m", "medgen.train", "fit", "quickstart", *tiny,
               f"training.lr={lr}", "--out", str(out)]  # fmt: skip
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)

    inf = fit_cli("inf", tmp_path / "inf")
    assert inf.returncode == 2 and len(inf.stderr.strip().splitlines()) == 1, inf.stderr
    assert "training.lr: expected a finite number" in inf.stderr
    assert not (tmp_path / "inf" / "checkpoints").exists()
    huge = fit_cli("1e30", tmp_path / "huge")
    err = huge.stderr.strip()
    assert huge.returncode == 2 and len(err.splitlines()) == 1, err
    assert "3 consecutive updates" in err and "training.lr (now 1e+30)" in err, err
    assert "Traceback" not in err
    for ckpt in (tmp_path / "huge" / "checkpoints").glob("step_*"):
        for name in ("model.safetensors", "ema.safetensors"):
            for w in load_file(ckpt / name).values():
                assert torch.isfinite(w).all() and float(w.abs().max()) < 1e6


# -- skips, clipping, accumulation ------------------------------------------------------------


class NanGrad(torch.autograd.Function):
    """Identity forward; the backward returns NaN for the first layer's input gradient only
    (a finite loss, one non-finite gradient tensor, as an fp16 overflow in one layer gives)."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return torch.full_like(g, float("nan"))


class PartlyNan(Task):
    def loss(self, model, batch, step):
        self.seen.setdefault(step, [p.detach().clone() for p in model.parameters()])
        x, y = batch
        h = model[0](x)
        if step in self.grad_nan_at:
            h = NanGrad.apply(h)  # the gradient of layer 0 only is NaN
        out = model[2](model[1](h))
        loss = ((out - y) ** 2).mean()
        self.losses[step] = float(loss.detach())
        return loss, {}


def test_a_finite_loss_with_a_nan_gradient_in_one_layer_skips_the_whole_update(tmp_path):
    """Bad and good updates alternate (what fp16 produces): each bad one leaves every weight
    (also the layers whose gradients were finite) and the EMA as they were, each good one
    trains, the count is exact and never reaches the limit of 2 in a row."""
    task = PartlyNan(grad_nan_at={1, 3, 5, 7})
    r = train(task, settings(steps=9, max_consecutive_skips=2), tmp_path)
    assert r.step == 9 and r.skipped_updates == 4 and r.rollbacks == 0
    assert all(math.isfinite(v) for v in task.losses.values())
    for k in range(8):
        same = equal(task.seen[k], task.seen[k + 1])
        assert same == (k in {1, 3, 5, 7}), k
    assert r.ema.num_updates == 5
    assert [int(row["skipped_updates"]) for row in rows(tmp_path)] == [0, 1, 1, 2, 2, 3, 3, 4, 4]


def batch_gradient(net, x, y):
    net.zero_grad()
    loss = ((net(x) - y) ** 2).mean()
    loss.backward()
    return [p.grad.detach().clone() for p in net.parameters()]


SGD = dict(optimizer="sgd", momentum=0.0, lr=1.0, lr_schedule="constant", ema_decay=0.0)


@pytest.mark.parametrize("clip", [0.05, 0.5, 1e6])
def test_the_clipped_update_is_the_gradient_scaled_to_the_clip_norm(clip):
    """Plain SGD at lr=1: the update is exactly minus the gradient times min(1, clip/|g|),
    where |g| is the norm over all parameters together; per-tensor clipping, clipping after
    the step or a wrong norm changes some element."""
    x, y = make_data()
    first = ShardedBatches((x, y), 8, seed=0).next_batch()
    g = batch_gradient(make_model(), *first)
    norm = float(torch.linalg.vector_norm(torch.stack([t.norm() for t in g])))
    r = train(Task(), settings(steps=1, batch_size=8, grad_clip=clip, **SGD))
    scale = min(1.0, clip / (norm + 1e-6))  # clip_grad_norm_'s own epsilon
    for p, p0, gi in zip(r.model.parameters(), make_model().parameters(), g, strict=True):
        torch.testing.assert_close(p.detach() - p0.detach(), -scale * gi, rtol=1e-5, atol=1e-7)
    assert r.rows[0]["grad_norm"] == pytest.approx(norm, rel=1e-5)  # logged before clipping
    if clip < norm:
        assert norm > 2 * clip  # the clip really bit


@pytest.mark.parametrize("k", [2, 4])
def test_accumulating_k_micro_batches_equals_the_batch_of_k_times_the_size(k):
    """Plain SGD without clipping is linear in the gradient, so the accumulated update must be
    the large batch's to float rounding, over several updates (a sum instead of a mean is k
    times the step; a gradient kept across updates differs from the second on)."""
    kw = dict(SGD, lr=0.05, grad_clip=0.0, steps=3)
    big = train(Task(), settings(batch_size=8, **kw))
    acc = train(Task(), settings(batch_size=8 // k, grad_accum=k, **kw))
    for p, q in zip(big.model.parameters(), acc.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    start = params(make_model())
    assert any(not torch.allclose(p, s) for p, s in zip(params(big.model), start, strict=True))
