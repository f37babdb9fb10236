"""The engine in-process: NaN guard, accumulation, AMP, optimizers, retention, logging."""

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

from medgen.train import engine
from medgen.train.batches import RandomDraws, ShardedBatches
from medgen.train.checkpoint import load_checkpoint
from medgen.train.engine import fit
from medgen.train.errors import ConfigError
from medgen.train.nan_guard import NonFiniteError
from medgen.train.preemption import Preempted
from medgen.train.settings import EngineSettings

spec = importlib.util.spec_from_file_location(
    "engine_worker", Path(__file__).with_name("engine_worker.py")
)
W = importlib.util.module_from_spec(spec)
spec.loader.exec_module(W)


class Regression:
    """MSE of a model on (x, y) batches; NaN from update ``nan_from`` (or only at ``nan_at``);
    records the first parameter at every call."""

    def __init__(self, nan_from=-1, nan_at=-1, evaluate_value=None):
        self.nan_from, self.nan_at = nan_from, nan_at
        self.seen: dict[int, torch.Tensor] = {}
        self.evaluate_value = evaluate_value

    def loss(self, model, batch, step):
        self.seen[step] = next(model.parameters()).detach().clone()
        x, y = batch
        loss = ((model(x).float() - y) ** 2).mean()
        if step == self.nan_at or 0 <= self.nan_from <= step:
            loss = loss * float("inf") * 0  # nan
        return loss, {"mse": float(loss.detach())}


def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))


def settings(**kw):
    base = dict(steps=8, batch_size=4, lr=1e-2, log_every=1, tensorboard=False, keep_last=0)
    return EngineSettings(**{**base, **kw})


def test_nan_guard_skips_counts_and_logs(tmp_path):
    task = Regression(nan_at=3)
    result = fit(task, model(), ShardedBatches(W.make_data(), 4), settings(), tmp_path, quiet=True)
    assert result.step == 8 and result.skipped_updates == 1
    assert torch.equal(task.seen[3], task.seen[4])  # the skipped update changed nothing
    assert not torch.equal(task.seen[4], task.seen[5])
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert [int(r["skipped_updates"]) for r in rows] == [0, 0, 0, 1, 1, 1, 1, 1]
    assert math.isnan(float(rows[3]["loss"]))
    assert all(torch.isfinite(p.detach()).all() for p in result.model.parameters())


def test_nan_guard_stops_after_k_consecutive_with_last_good_checkpoint(tmp_path):
    task = Regression(nan_from=5)
    s = settings(steps=50, checkpoint_every=4, max_consecutive_skips=3)
    with pytest.raises(NonFiniteError, match="3 consecutive updates") as info:
        fit(task, model(), ShardedBatches(W.make_data(), 4), s, tmp_path, quiet=True)
    assert "step_00000004" in str(info.value)
    latest = (tmp_path / "checkpoints" / "latest").resolve()
    assert latest.name == "step_00000004"
    weights = load_file(latest / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert torch.equal(weights["0.weight"], task.seen[4])  # the weights after update 4
    assert torch.equal(task.seen[5], task.seen[7])  # skipped updates left the weights alone


def test_grad_accumulation_matches_a_larger_batch():
    data = W.make_data()
    a = fit(Regression(), model(), ShardedBatches(data, 8, seed=3), settings(), quiet=True)
    b = fit(
        Regression(),
        model(),
        ShardedBatches(data, 4, seed=3),
        settings(batch_size=4, grad_accum=2),
        quiet=True,
    )
    for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


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
    s = settings(steps=30, lr=2e-2, log_every=10, **kw)
    r = fit(Regression(), model(), ShardedBatches(W.make_data(), 8), s, quiet=True)
    assert r.step == 30 and r.skipped_updates <= (3 if kw.get("amp") == "fp16" else 0)
    assert r.rows[-1]["loss"] < r.rows[0]["loss"]
    assert (r.scaler is not None) == (kw.get("amp") == "fp16")
    assert (r.ema is None) == (kw.get("ema_decay") == 0.0)


def test_lr_schedule_warmup_cosine():
    s = settings(steps=10, warmup_steps=4, lr=1.0, lr_floor=0.1)
    r = fit(Regression(), model(), ShardedBatches(W.make_data(), 4), s, quiet=True)
    lrs = [row["lr"] for row in r.rows]  # lr after each update
    assert lrs[:3] == pytest.approx([0.5, 0.75, 1.0])
    assert lrs[-1] == pytest.approx(0.1) and all(a >= b for a, b in itertools.pairwise(lrs[2:]))


def test_keep_last_and_best_by_metric(tmp_path):
    class Scored(Regression):
        def evaluate(self, model, ema_model, step):
            return {"score": {2: 1.0, 4: 5.0, 6: 3.0, 8: 2.0, 10: 0.0}[step]}

    s = settings(steps=10, checkpoint_every=2, eval_every=2, keep_last=2, best_metric="score")
    fit(Scored(), model(), ShardedBatches(W.make_data(), 4), s, tmp_path, quiet=True)
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.glob("step_*")) == [
        "step_00000004",
        "step_00000008",
        "step_00000010",
    ]
    assert (root / "best").resolve().name == "step_00000004"
    assert (root / "latest").resolve().name == "step_00000010"
    state = json.loads((root / "best" / "state.json").read_text())
    assert state["metrics"]["score"] == 5.0
    rows = list(csv.DictReader((tmp_path / "eval.csv").open()))
    assert [int(r["step"]) for r in rows] == [2, 4, 6, 8, 10]


def test_checkpoint_contents_and_weights_only_state(tmp_path):
    s = settings(steps=4, amp="fp16")
    data = W.make_data()
    fit(Regression(), model(), RandomDraws(data, 4, torch.Generator().manual_seed(1)), s, tmp_path)
    ckpt = (tmp_path / "checkpoints" / "latest").resolve()
    names = {p.name for p in ckpt.iterdir()}
    assert {"model.safetensors", "ema.safetensors", "training_state.pt", "state.json"} <= names
    state = torch.load(ckpt / "training_state.pt", weights_only=True)
    assert {"optimizer", "scheduler", "scaler", "rng", "extra", "ema"} <= state.keys()
    assert state["scaler"]["scale"] > 0 and state["extra"]["batches"]["draws"] == 4
    assert set(state["rng"]) == {"python", "numpy", "torch", "cuda"}
    info = json.loads((ckpt / "state.json").read_text())
    assert info["step"] == 4 and info["data_position"]["draws"] == 4
    assert info["versions"]["medgen-train"] and "epoch" in info
    load_checkpoint(ckpt, model(), optimizer=torch.optim.AdamW(model().parameters()))


def test_finished_run_is_not_trained_again_and_bad_settings_are_config_errors(tmp_path):
    data = W.make_data()
    fit(Regression(), model(), ShardedBatches(data, 4), settings(steps=3), tmp_path, quiet=True)
    again = fit(Regression(), model(), ShardedBatches(data, 4), settings(steps=3), tmp_path)
    assert again.resumed_from == 3 and again.step == 3
    with pytest.raises(ConfigError, match="training.optimizer"):
        fit(Regression(), model(), ShardedBatches(data, 4), settings(optimizer="lion"))


def test_tensorboard_events_are_written(tmp_path):
    pytest.importorskip("tensorboard")
    s = settings(steps=2, tensorboard=True)
    fit(Regression(), model(), ShardedBatches(W.make_data(), 4), s, tmp_path, quiet=True)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_sharded_batches_split_the_global_batch_and_restore_their_position():
    x = torch.arange(20)
    one = ShardedBatches((x,), 6, seed=4)
    ranks = [ShardedBatches((x,), 3, seed=4, rank=r, world_size=2) for r in range(2)]
    for _ in range(7):  # 3 updates per epoch (the ragged tail of 2 is dropped): 3 epochs
        (full,) = one.next_batch()
        parts = [r.next_batch()[0] for r in ranks]
        assert torch.equal(full, torch.cat(parts))
    assert one.position() == {"epoch": 2, "offset": 6, "samples": 20}
    assert len(set(torch.cat([one.next_batch()[0] for _ in range(2)]).tolist())) == 12
    copy = ShardedBatches((x,), 6, seed=4)
    copy.load_state_dict(one.state_dict())
    for _ in range(5):
        assert torch.equal(copy.next_batch()[0], one.next_batch()[0])
    with pytest.raises(ValueError, match="exceeds"):
        ShardedBatches((x,), 11, world_size=2)


def test_signal_during_a_checkpoint_stops_on_it_and_handlers_are_restored(tmp_path, monkeypatch):
    real = engine.save_checkpoint

    def save_then_signal(run_dir, step, *args, **kw):  # the signal lands mid-checkpoint
        path = real(run_dir, step, *args, **kw)
        if step == 4:
            os.kill(os.getpid(), signal.SIGUSR1)
        return path

    monkeypatch.setattr(engine, "save_checkpoint", save_then_signal)
    sigs = (signal.SIGTERM, signal.SIGUSR1)
    before = {sig: signal.getsignal(sig) for sig in sigs}
    task, data = Regression(), W.make_data()
    s = settings(steps=50, checkpoint_every=4)
    with pytest.raises(Preempted, match="SIGUSR1") as info:
        fit(task, model(), ShardedBatches(data, 4), s, tmp_path / "a", quiet=True)
    assert info.value.step == 4 and max(task.seen) == 3  # no update after the signal
    steps = sorted(p.name for p in (tmp_path / "a" / "checkpoints").glob("step_*"))
    assert steps == ["step_00000004"]  # and no second checkpoint
    assert {sig: signal.getsignal(sig) for sig in sigs} == before
    fit(Regression(), model(), ShardedBatches(data, 4), settings(steps=2), quiet=True)
    assert {sig: signal.getsignal(sig) for sig in sigs} == before


def _grads_of_rank(rank, init_file, queue):
    import torch.distributed as dist

    from medgen.train import distributed

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        used, sometimes, never = (torch.nn.Linear(3, 2) for _ in range(3))
        x = torch.full((4, 3), float(rank + 1))
        loss = used(x).sum() + (sometimes(x).sum() if rank == 1 else 0)  # rank 0 skips one
        loss.backward()
        distributed.average_gradients(torch.nn.ModuleList([used, sometimes, never]), 2)
        queue.put(
            (
                rank,
                [
                    None if p.grad is None else p.grad.tolist()
                    for p in (used.weight, sometimes.weight, never.weight)
                ],
            )
        )
    finally:
        dist.destroy_process_group()


def test_average_gradients_when_a_parameter_is_unused_on_one_rank(tmp_path):
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=_grads_of_rank, args=(r, tmp_path / "init", queue), daemon=True)
        for r in (0, 1)
    ]
    for p in procs:
        p.start()
    try:
        results = dict(queue.get(timeout=60) for _ in procs)
        for p in procs:
            p.join(timeout=30)
            assert p.exitcode == 0
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
    assert results[0] == results[1]  # the same gradients on both ranks
    used, sometimes, never = results[0]
    assert used == [[6.0] * 3] * 2  # (4 x 1 + 4 x 2) / 2
    assert sometimes == [[4.0] * 3] * 2  # (0 + 4 x 2) / 2: rank 0's missing gradient is zero
    assert never is None
