"""NanGuard, all_finite, Snapshot and EMA as units: exact limits, counters, the one-line
messages (what the user reads when a run stops), checkpoint state round trips. Written for
the survivors of mutation testing (benchmarks/run_mutants.py, train/nan_guard, train/ema)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from medgen.train.engine.ema import EMA
from medgen.train.engine.nan_guard import NanGuard, NonFiniteError, Snapshot, all_finite


def test_nan_guard_raises_exactly_at_the_limit_and_a_good_update_resets_the_streak():
    g = NanGuard(limit=3)
    g.record(False, 0, None)
    g.record(False, 1, None)
    g.record(True, 2, None)  # streak broken
    assert (g.skipped, g.consecutive) == (2, 0)
    g.record(False, 3, None)
    g.record(False, 4, None)
    assert (g.skipped, g.consecutive) == (4, 2)
    with pytest.raises(NonFiniteError) as info:
        g.record(False, 5, "step_00000002")
    assert (g.skipped, g.consecutive) == (5, 3)
    assert str(info.value) == (
        "3 consecutive updates with a non-finite loss or gradient (up to step 6); stopped. "
        "the weights were not updated by them; last good checkpoint: step_00000002. "
        "Lower training.lr, enable training.grad_clip, check the data, or raise "
        "training.max_consecutive_skips."
    )
    assert isinstance(info.value, FloatingPointError)


def test_nan_guard_message_names_the_update_that_changed_the_weights():
    g = NanGuard(limit=1)
    with pytest.raises(NonFiniteError) as info:
        g.record(False, 9, None, unverified_since=6)
    msg = str(info.value)
    assert msg.startswith(
        "1 consecutive updates with a non-finite loss or gradient (up to step 10)"
    )
    assert (
        "no finite loss since update 7 changed the weights, so the weights are rolled back to "
        "the last verified state and not saved (training.lr too large?); "
        "last good checkpoint: none verified yet." in msg
    )


def test_nan_guard_rollbacks_raise_at_max_and_stepped_resets():
    g = NanGuard(limit=5, max_rollbacks=2)
    g.rolled_back(3, "diffusion", "the weights", 1e-3, 1, None)
    g.stepped()
    assert (g.rollbacks, g.consecutive_rollbacks) == (1, 0)
    g.rolled_back(4, "diffusion", "the weights", 1e-3, 1, None)
    with pytest.raises(NonFiniteError) as info:
        g.rolled_back(5, "diffusion", "the EMA", 2.5e30, 4, "step_00000004")
    assert (g.rollbacks, g.consecutive_rollbacks) == (3, 2)
    assert str(info.value) == (
        "2 consecutive updates (up to step 6, diffusion) made the EMA non-finite although loss "
        "and gradient were finite, each rolled back to the verified state of update 5; stopped "
        "without saving them. Lower training.lr (now 2.5e+30) or enable training.grad_clip. "
        "Last good checkpoint: step_00000004."
    )
    g2 = NanGuard(limit=5, max_rollbacks=1)
    with pytest.raises(NonFiniteError, match="Last good checkpoint: none verified yet."):
        g2.rolled_back(0, "x", "the weights", 1.0, -1, None)


def test_nan_guard_state_round_trip_and_defaults():
    g = NanGuard(limit=10, max_rollbacks=10)
    for ok in (False, False, True, False):
        g.record(ok, 0, None)
    g.rolled_back(0, "x", "w", 1.0, 0, None)
    state = g.state_dict()
    assert state == {"skipped": 3, "consecutive": 1, "rollbacks": 1, "consecutive_rollbacks": 1}
    h = NanGuard(limit=10)
    h.load_state_dict(state)
    assert h.state_dict() == state
    h.load_state_dict({})  # a checkpoint from before the counters existed
    assert h.state_dict() == dict.fromkeys(state, 0)
    assert NanGuard(limit=1).max_rollbacks == 3


def test_nan_guard_finite_and_all_finite():
    assert NanGuard.finite(1.0, 0.0, -3e38) and NanGuard.finite()
    assert not NanGuard.finite(1.0, float("nan")) and not NanGuard.finite(float("-inf"))
    assert all_finite([]) and all_finite([torch.ones(3), torch.arange(4)])  # ints too
    assert not all_finite([torch.ones(3), torch.tensor([1.0, float("inf")])])
    assert not all_finite([torch.tensor([float("nan")])])
    assert not all_finite([torch.full((4,), 3e19)])  # the norm overflows float32
    assert all_finite([torch.full((4,), 3e19, dtype=torch.float64)])


def _model_and_opt():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    return model, opt


def _step(model, opt):
    opt.zero_grad()
    model(torch.ones(4, 3)).square().sum().backward()
    opt.step()


def test_snapshot_restores_weights_and_optimizer_state_exactly():
    model, opt = _model_and_opt()
    _step(model, opt)
    snap = Snapshot(list(model.parameters()), opt)
    assert snap.step == -1
    snap.take(7)
    assert snap.step == 7
    saved_w = [p.detach().clone() for p in model.parameters()]
    saved_state = {k: v.clone() for k, v in opt.state[model.weight].items()}
    _step(model, opt)
    _step(model, opt)
    snap.restore()
    for p, w in zip(model.parameters(), saved_w, strict=True):
        assert torch.equal(p, w)
    for k, v in saved_state.items():
        assert torch.equal(opt.state[model.weight][k], v), k
    # taken again (same layout: the copies are reused), then restored again
    _step(model, opt)
    snap.take(8)
    again = [p.detach().clone() for p in model.parameters()]
    step_count = opt.state[model.weight]["step"].clone()
    _step(model, opt)
    snap.restore()
    assert all(torch.equal(p, w) for p, w in zip(model.parameters(), again, strict=True))
    assert torch.equal(opt.state[model.weight]["step"], step_count) and snap.step == 8


def test_snapshot_before_the_first_step_removes_later_optimizer_state():
    model, opt = _model_and_opt()
    snap = Snapshot(list(model.parameters()), opt)
    snap.take(0)  # no optimizer state yet
    w0 = [p.detach().clone() for p in model.parameters()]
    _step(model, opt)
    assert opt.state[model.weight]
    snap.restore()
    assert not opt.state.get(model.weight) and not opt.state.get(model.bias)
    assert all(torch.equal(p, w) for p, w in zip(model.parameters(), w0, strict=True))


def test_snapshot_without_optimizer_and_with_non_tensor_state():
    model, _ = _model_and_opt()
    snap = Snapshot(list(model.parameters()), None)
    snap.take(0)
    w0 = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        model.weight.add_(1.0)
    snap.restore()
    assert torch.equal(model.weight, w0[0])
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    _step(model, sgd)
    sgd.state[model.weight]["note"] = {"n": 1}  # a non-tensor entry is deep-copied
    snap = Snapshot(list(model.parameters()), sgd)
    snap.take(1)
    sgd.state[model.weight]["note"]["n"] = 5
    snap.restore()
    assert sgd.state[model.weight]["note"] == {"n": 1}
    snap.take(2)  # same layout: the non-tensor value is copied again
    sgd.state[model.weight]["note"] = {"n": 9}
    snap.restore()
    assert sgd.state[model.weight]["note"] == {"n": 1}


def test_ema_arguments_are_checked_with_their_values():
    m = {"net": nn.Linear(2, 2)}
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=rf"^EMA decay must be in \[0, 1\), got {bad}$"):
            EMA(m, decay=bad)
    EMA(m, decay=0.0)  # the closed end is allowed
    with pytest.raises(ValueError, match="^EMA needs at least one module$"):
        EMA({})


def test_ema_state_dict_round_trip_keeps_this_runs_settings():
    ema = EMA({"net": nn.Linear(2, 2)}, decay=0.9, warmup=False)
    for _ in range(3):
        ema.update({"net": nn.Linear(2, 2)})
    assert ema.state_dict() == {"decay": 0.9, "warmup": False, "num_updates": 3}
    other = EMA({"net": nn.Linear(2, 2)}, decay=0.5)
    other.load_state_dict({"decay": 0.9, "warmup": False, "num_updates": "3"})
    assert other.num_updates == 3 and isinstance(other.num_updates, int)
    assert other.decay == 0.5 and other.warmup is True
    assert other.current_decay() == min(0.5, 4 / 13)


def test_ema_copies_are_frozen_eval_copies():
    live = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5)).train()
    ema = EMA({"net": live})
    copy_ = ema.modules["net"]
    assert copy_ is not live and not copy_.training and live.training
    assert not any(p.requires_grad for p in copy_.parameters())
    assert all(p.requires_grad for p in live.parameters())


def test_ema_update_refuses_a_module_of_another_structure():
    """A live module with more parameters or buffers than its copy is an error, not a silent
    partial average (zip(..., strict=True))."""
    ema = EMA({"net": nn.Linear(2, 2, bias=False)})
    with pytest.raises(ValueError):
        ema.update({"net": nn.Linear(2, 2)})  # one parameter more
    bn = EMA({"net": nn.Sequential(nn.BatchNorm1d(2, track_running_stats=False))})
    with pytest.raises(ValueError):
        bn.update({"net": nn.Sequential(nn.BatchNorm1d(2))})  # three buffers more


def test_ema_dtype_keeps_float32_copies_of_bfloat16_modules():
    """A 1e-3 step of a bfloat16 weight is about half its ulp (rounded to 0 or 1 ulp); float32
    copies take it exactly, the update casting the live weights to them."""
    live = nn.Linear(4, 4).to(torch.bfloat16)
    ema = EMA({"net": live}, decay=0.999, warmup=False, dtype=torch.float32)
    plain = EMA({"net": live}, decay=0.999, warmup=False)
    assert all(p.dtype == torch.float32 for p in ema.modules["net"].parameters())
    assert all(p.dtype == torch.bfloat16 for p in plain.modules["net"].parameters())
    assert all(p.dtype == torch.bfloat16 for p in live.parameters())  # the live one untouched
    start = ema.modules["net"].weight.clone()
    with torch.no_grad():
        live.weight.add_(1.0)
    ema.update({"net": live})
    plain.update({"net": live})
    moved = ema.modules["net"].weight - start
    torch.testing.assert_close(moved, torch.full_like(moved, 1e-3), atol=2e-5, rtol=0)
    exact = start + 1e-3
    err_plain = (plain.modules["net"].weight.float() - exact).abs().max()
    assert err_plain > 10 * (ema.modules["net"].weight - exact).abs().max()  # bf16 rounds


def _state_copy(opt) -> dict:
    return {
        id(p): {k: v.clone() if torch.is_tensor(v) else copy.deepcopy(v) for k, v in s.items()}
        for p, s in opt.state.items()
    }


def _assert_state(opt, saved: dict) -> None:
    now = {id(p): s for p, s in opt.state.items() if s}
    assert set(now) == set(saved)
    for pid, entries in saved.items():
        assert set(now[pid]) == set(entries)
        for k, v in entries.items():
            got = now[pid][k]
            assert torch.equal(got, v) if torch.is_tensor(v) else got == v, k


def test_snapshot_restores_state_after_its_layout_changed():
    """Entries added, removed, re-shaped and a parameter's state dropped after the snapshot:
    restore puts back exactly the snapshot's entries, as copies (nested values included)."""
    model, opt = _model_and_opt()
    _step(model, opt)
    opt.state[model.weight]["note"] = {"n": [1]}  # a nested non-tensor entry
    snap = Snapshot(list(model.parameters()), opt)
    snap.take(1)
    saved = _state_copy(opt)
    _step(model, opt)
    opt.state[model.weight]["exp_avg"] = torch.zeros(5)  # re-shaped
    opt.state[model.weight]["extra"] = torch.ones(2)  # added
    del opt.state[model.bias]  # a parameter's whole state dropped
    snap.restore()
    _assert_state(opt, saved)
    # the restored entries are copies: changing them leaves the snapshot intact
    opt.state[model.weight]["exp_avg_sq"].add_(1.0)
    opt.state[model.weight]["note"]["n"].append(2)
    snap.restore()  # same layout now: the in-place path
    _assert_state(opt, saved)
    opt.state[model.weight]["note"]["n"].append(3)
    snap.restore()
    _assert_state(opt, saved)


def test_snapshot_take_copies_the_current_non_tensor_values_each_time():
    model, _ = _model_and_opt()
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    _step(model, sgd)
    sgd.state[model.weight]["note"] = {"n": [1]}
    snap = Snapshot(list(model.parameters()), sgd)
    snap.take(1)
    sgd.state[model.weight]["note"]["n"].append(5)  # in place, after the take
    snap.restore()
    assert sgd.state[model.weight]["note"] == {"n": [1]}
    sgd.state[model.weight]["note"] = {"n": [2]}
    snap.take(2)  # same layout, a new value
    sgd.state[model.weight]["note"]["n"].append(7)
    snap.restore()
    assert sgd.state[model.weight]["note"] == {"n": [2]}


def test_snapshot_layout_includes_the_shapes():
    """An entry re-shaped after the snapshot (and nothing else changed) is restored to the
    snapshot's shape and values, not copied into in place."""
    model, opt = _model_and_opt()
    _step(model, opt)
    snap = Snapshot(list(model.parameters()), opt)
    snap.take(1)
    saved = _state_copy(opt)
    opt.state[model.weight]["exp_avg"] = torch.zeros(5)
    snap.restore()
    _assert_state(opt, saved)
