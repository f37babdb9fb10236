"""The engine in-process: NaN guard, accumulation, clipping, AMP, schedules, retention, logs,
signals. Each safeguard is exercised on its failure path, not only the happy one."""

import csv
import importlib.util
import itertools
import json
import math
import os
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from medgen.train import checkpoint as ckpt_api
from medgen.train.engine import Evaluation, ShardedBatches, TrainingSetup, fit
from medgen.train.engine import snapshot as engine_snapshot
from medgen.train.engine.nan_guard import NonFiniteError
from medgen.train.engine.preemption import Preempted
from medgen.train.engine.settings import EngineSettings
from medgen.train.errors import EXIT_INTERRUPTED, EXIT_REQUEUE, ConfigError

spec = importlib.util.spec_from_file_location(
    "engine_worker", Path(__file__).with_name("engine_worker.py")
)
W = importlib.util.module_from_spec(spec)
spec.loader.exec_module(W)


class Regression:
    """MSE of a model on (x, y) batches. NaN loss from update ``nan_from`` (or only at
    ``nan_at``); ``grad_nan_at``: a finite loss whose gradient is non-finite. Records the first
    parameter at every call."""

    def __init__(self, nan_from=-1, nan_at=(), grad_nan_at=()):
        self.nan_from, self.nan_at, self.grad_nan_at = nan_from, set(nan_at), set(grad_nan_at)
        self.seen: dict[int, torch.Tensor] = {}

    def loss(self, model, batch, step):
        self.seen[step] = next(model.parameters()).detach().clone()
        x, y = batch
        out = model(x).float()
        if step in self.grad_nan_at:  # forward finite, backward NaN
            out.register_hook(lambda g: g * float("nan"))
        loss = ((out - y) ** 2).mean()
        if step in self.nan_at or 0 <= self.nan_from <= step:
            loss = loss * float("nan")
        return loss, {"mse": float(loss.detach())}


def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))


def settings(**kw):
    base = dict(steps=8, batch_size=4, lr=1e-2, log_every=1, tensorboard=False, keep_last=0)
    return EngineSettings(**{**base, **kw})


def run(task, s, run_dir=None, net=None, data=None, evaluators=(), batch=None, **kw):
    setup = TrainingSetup.single(net or model(), task.loss, evaluators=evaluators)
    batches = ShardedBatches(data or W.make_data(), batch or s.batch_size, **kw)
    return fit(setup, batches, s, run_dir, quiet=True)


def test_nan_guard_skips_non_finite_losses_and_gradients_alternating(tmp_path):
    """Bad updates alternating with good ones (what fp16 produces) never reach the limit of 2
    in a row; each bad one changes nothing, each good one trains."""
    task = Regression(nan_at={2, 4}, grad_nan_at={6, 8})
    result = run(task, settings(steps=11, max_consecutive_skips=2), tmp_path)
    assert result.step == 11 and result.skipped_updates == 4
    for k in (2, 4, 6, 8):
        assert torch.equal(task.seen[k], task.seen[k + 1])  # the skipped update: no change
        assert not torch.equal(task.seen[k + 1], task.seen[k + 2])  # the next one trains
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert [int(r["skipped_updates"]) for r in rows] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 4]
    assert math.isnan(float(rows[2]["loss"])) and math.isfinite(float(rows[6]["loss"]))
    assert not math.isfinite(float(rows[6]["grad_norm"]))  # a finite loss, a NaN gradient
    assert all(torch.isfinite(p).all() for p in result.model.parameters())


def test_nan_guard_stops_after_k_consecutive_with_last_good_checkpoint(tmp_path):
    task = Regression(nan_from=5)
    s = settings(steps=50, checkpoint_every=4, max_consecutive_skips=3)
    with pytest.raises(NonFiniteError, match="3 consecutive updates") as info:
        run(task, s, tmp_path)
    assert "step_00000004" in str(info.value)
    latest = (tmp_path / "checkpoints" / "latest").resolve()
    assert latest.name == "step_00000004"
    weights = load_file(latest / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert torch.equal(weights["model.0.weight"], task.seen[4])  # the weights after update 4
    assert torch.equal(task.seen[5], task.seen[7])


def test_gradient_accumulation_is_a_mean_under_plain_sgd():
    """Plain SGD without momentum or clipping is linear in the gradient, so a sum instead of a
    mean over micro-batches (twice the step) cannot hide."""
    kw = dict(optimizer="sgd", momentum=0.0, grad_clip=0.0, lr=0.1, lr_schedule="constant")
    big = run(Regression(), settings(batch_size=8, **kw), seed=3)
    acc = run(Regression(), settings(batch_size=4, grad_accum=2, **kw), seed=3)
    for p, q in zip(big.model.parameters(), acc.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_clipping_bounds_the_update_to_lr_times_clip():
    """SGD: the update is lr * clipped gradient, whose global norm is at most grad_clip."""
    kw = dict(optimizer="sgd", momentum=0.0, lr=1.0, lr_schedule="constant", steps=1)
    start = [p.detach().clone() for p in model().parameters()]
    for clip in (0.0, 0.05):
        r = run(Regression(), settings(grad_clip=clip, **kw))
        step = torch.cat(
            [(p.detach() - s).flatten() for p, s in zip(r.model.parameters(), start, strict=True)]
        )
        grad_norm = r.rows[0]["grad_norm"]  # the norm before clipping
        expected = min(grad_norm, clip) if clip else grad_norm
        assert float(step.norm()) == pytest.approx(expected, rel=1e-5)
    assert grad_norm > 0.05  # so the clip really changed the update


@pytest.mark.parametrize(
    "kw",
    [
        dict(amp="bf16"),
        dict(amp="fp16"),
        dict(optimizer="sgd", lr_schedule="constant", warmup_steps=2),
        dict(optimizer="adam", grad_clip=0.0, ema_decay=0.0),
    ],
)
def test_variants_train_and_reduce_the_loss(kw):
    r = run(Regression(), settings(steps=30, lr=2e-2, log_every=10, **kw), batch=8)
    assert r.step == 30 and r.skipped_updates <= (3 if kw.get("amp") == "fp16" else 0)
    assert r.rows[-1]["loss"] < r.rows[0]["loss"]
    assert (r.ema is None) == (kw.get("ema_decay") == 0.0)


def test_lr_schedule_warmup_cosine():
    r = run(Regression(), settings(steps=10, warmup_steps=4, lr=1.0, lr_floor=0.1))
    lrs = [row["lr"] for row in r.rows]  # lr after each update
    assert lrs[:3] == pytest.approx([0.5, 0.75, 1.0])
    assert lrs[-1] == pytest.approx(0.1) and all(a >= b for a, b in itertools.pairwise(lrs[2:]))


class Scores:
    """An evaluator reporting a fixed score per step, as (sum, count) from this rank."""

    def __init__(self, table):
        self.table = table

    def metric_names(self):
        return ("score",)

    def evaluate(self, modules, ema, step, ctx):
        assert not modules["model"].training  # evaluated in eval mode
        return Evaluation({"score": (self.table[step] * 2, 2)})


def test_keep_last_and_best_by_metric(tmp_path):
    table = {2: 1.0, 4: 5.0, 6: 3.0, 8: 2.0, 10: 0.0}
    s = settings(steps=10, checkpoint_every=2, eval_every=2, keep_last=2, best_metric="score")
    run(Regression(), s, tmp_path, evaluators=[Scores(table)])
    root = tmp_path / "checkpoints"
    names = sorted(p.name for p in root.glob("step_*"))
    assert names == ["step_00000004", "step_00000008", "step_00000010"]
    assert (root / "best").resolve().name == "step_00000004"
    assert (root / "latest").resolve().name == "step_00000010"
    assert json.loads((root / "best" / "state.json").read_text())["metrics"]["score"] == 5.0
    rows = list(csv.DictReader((tmp_path / "eval.csv").open()))
    assert [int(r["step"]) for r in rows] == [2, 4, 6, 8, 10]


def test_unknown_best_metric_is_refused_before_training(tmp_path):
    s = settings(best_metric="ssim", eval_every=2)
    with pytest.raises(ConfigError, match="training.best_metric: 'ssim' is not a metric"):
        run(Regression(), s, tmp_path, evaluators=[Scores({})])
    assert not (tmp_path / "checkpoints").exists()


def test_checkpoint_contents_hashes_and_weights_only_state(tmp_path):
    run(Regression(), settings(steps=4, amp="fp16"), tmp_path)
    ckpt = (tmp_path / "checkpoints" / "latest").resolve()
    names = {p.name for p in ckpt.iterdir()}
    assert {"model.safetensors", "ema.safetensors", "training_state.pt", "state.json"} <= names
    state = torch.load(ckpt / "training_state.pt", weights_only=True)
    assert {"objectives", "ema", "batches", "guard", "ranks"} <= state.keys()
    main = state["objectives"]["main"]
    assert main["scaler"]["scale"] > 0 and {"optimizer", "scheduler"} <= main.keys()
    assert set(state["ranks"][0]["rng"]) == {"python", "numpy", "torch", "cuda"}
    info = json.loads((ckpt / "state.json").read_text())
    assert info["step"] == 4 and info["data_position"]["offset"] == 16
    assert set(info["files"]) == names - {"state.json"}
    assert ckpt_api.verify_checkpoint(ckpt) is None


def test_finished_run_is_not_trained_again(tmp_path):
    run(Regression(), settings(steps=3), tmp_path)
    again = run(Regression(), settings(steps=3), tmp_path)
    assert again.resumed_from == 3 and again.step == 3


def test_tensorboard_events_are_written(tmp_path):
    pytest.importorskip("tensorboard")
    run(Regression(), settings(steps=2, tensorboard=True), tmp_path)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_deterministic_mode_is_reset_after_fit():
    run(Regression(), settings(steps=1, deterministic=True))
    assert not torch.are_deterministic_algorithms_enabled()


def test_sharded_batches_split_the_global_batch_and_restore_their_position():
    x = torch.arange(20)
    one = ShardedBatches((x,), 6, seed=4)
    ranks = [ShardedBatches((x,), 3, seed=4, rank=r, world_size=2) for r in range(2)]
    for _ in range(7):  # 3 updates per epoch (the ragged tail of 2 is dropped): 3 epochs
        (full,) = one.next_batch()
        parts = [r.next_batch()[0] for r in ranks]
        assert torch.equal(full, torch.cat(parts))
    assert one.position() == {"epoch": 2, "offset": 6, "samples": 20}
    copy = ShardedBatches((x,), 6, seed=4)
    copy.load_state_dict(one.state_dict())
    for _ in range(5):
        assert torch.equal(copy.next_batch()[0], one.next_batch()[0])
    with pytest.raises(ValueError, match="exceeds"):
        ShardedBatches((x,), 11, world_size=2)


@pytest.mark.parametrize(
    ("sig", "code"), [(signal.SIGUSR1, EXIT_REQUEUE), (signal.SIGINT, EXIT_INTERRUPTED)]
)
def test_signal_during_a_checkpoint_stops_on_it_and_handlers_are_restored(
    tmp_path, monkeypatch, sig, code
):
    real = ckpt_api.save_checkpoint

    def save_then_signal(run_dir, step, *args, **kw):  # the signal lands mid-checkpoint
        path = real(run_dir, step, *args, **kw)
        if step == 4:
            os.kill(os.getpid(), sig)
        return path

    monkeypatch.setattr(engine_snapshot.checkpoint, "save_checkpoint", save_then_signal)
    sigs = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
    before = {s: signal.getsignal(s) for s in sigs}
    task = Regression()
    with pytest.raises(Preempted, match=sig.name if code == EXIT_REQUEUE else "Ctrl-C") as info:
        run(task, settings(steps=50, checkpoint_every=4), tmp_path / "a")
    assert info.value.step == 4 and max(task.seen) == 3  # no update after the signal
    assert info.value.exit_code == code
    steps = sorted(p.name for p in (tmp_path / "a" / "checkpoints").glob("step_*"))
    assert steps == ["step_00000004"]  # and no second checkpoint
    assert {s: signal.getsignal(s) for s in sigs} == before


def test_a_signal_before_training_starts_is_kept(tmp_path):
    """A signal that arrives while data load (before the first update) stops the run there."""
    from medgen.train.engine.preemption import StopFlag

    with StopFlag() as flag:
        os.kill(os.getpid(), signal.SIGTERM)
        setup = TrainingSetup.single(model(), Regression().loss)
        with pytest.raises(Preempted, match="SIGTERM") as info:
            fit(setup, ShardedBatches(W.make_data(), 4), settings(), tmp_path, stop=flag)
    assert info.value.step == 0 and not (tmp_path / "checkpoints").exists()
