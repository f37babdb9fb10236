"""``training.weights_dtype: bfloat16`` (seed 003's "pure weights"): the trained networks, their
gradients and optimizer state in bfloat16 with no float32 master copy, computed under bf16
autocast; the EMA stays float32. It trains (finite, the loss falls), checkpoints record the
dtype and resume restores it, and a resume in another dtype is refused."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from medgen.train.cli import main
from medgen.train.engine import ShardedBatches, TrainingSetup, fit
from medgen.train.engine.ema import EMA
from medgen.train.engine.settings import EngineSettings
from medgen.train.errors import CheckpointError, ConfigError

spec = importlib.util.spec_from_file_location(
    "engine_worker", Path(__file__).with_name("engine_worker.py")
)
W = importlib.util.module_from_spec(spec)
spec.loader.exec_module(W)

PURE = dict(amp="bf16", weights_dtype="bfloat16")


def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))


def mse(net, batch, step):
    x, y = batch
    loss = ((net(x).float() - y) ** 2).mean()
    return loss, {"mse": float(loss.detach())}


def settings(**kw):
    base = dict(steps=8, batch_size=8, lr=2e-2, log_every=1, tensorboard=False, keep_last=0)
    return EngineSettings(**{**base, **kw})


def run(s, run_dir=None, net=None):
    net = net or model()
    setup = TrainingSetup.single(net, mse)
    return fit(setup, ShardedBatches(W.make_data(), s.batch_size), s, run_dir, quiet=True), net


def test_bfloat16_weights_need_bf16_autocast():
    for amp in ("none", "fp16"):
        with pytest.raises(ConfigError, match=f"bfloat16 weights need training.amp=bf16.*{amp}"):
            settings(amp=amp, weights_dtype="bfloat16").validate()
    settings(**PURE).validate()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("training.weights_dtype=bfloat16", "training.weights_dtype: bfloat16 weights need "
         "training.amp=bf16 (autocast feeds them the float32 data), got amp=none"),
        ("training.weights_dtype=float16", "training.weights_dtype: expected one of float32, "
         "bfloat16"),
    ],
)  # fmt: skip
def test_a_bad_weights_dtype_is_a_one_line_config_error(tmp_path, capsys, override, message):
    code = main(["fit", "quickstart", override, "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "r").exists()


def test_a_tiny_fit_with_bfloat16_weights_trains():
    r, net = run(settings(steps=40, log_every=10, **PURE))
    assert all(p.dtype == torch.bfloat16 for p in net.parameters())
    assert r.step == 40 and r.skipped_updates == 0 and r.rollbacks == 0
    losses = [row["loss"] for row in r.rows]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.7 * losses[0], losses
    assert "Converted model weights to torch.bfloat16" in r.notes
    assert all(p.dtype == torch.float32 for p in r.ema.modules["model"].parameters())


def test_the_ema_of_bfloat16_weights_is_kept_in_float32():
    """decay 0.999 moves the average by 1/1000 of the difference: exact in float32, lost below
    half an ulp in bfloat16 (which is why the engine keeps float32 copies)."""
    live = model().to(torch.bfloat16)
    kept = EMA({"m": live}, decay=0.999, warmup=False, dtype=torch.float32)
    lossy = EMA({"m": live}, decay=0.999, warmup=False)
    start = [p.detach().float().clone() for p in live.parameters()]
    with torch.no_grad():
        for p in live.parameters():
            p.add_(0.5 * p.sign())  # a difference of 0.5 * |1|: well above bfloat16's ulp
    kept.update({"m": live})
    lossy.update({"m": live})
    for e, s, p in zip(kept.modules["m"].parameters(), start, live.parameters(), strict=True):
        expected = s + 0.001 * (p.float() - s)  # the EMA formula, by hand
        torch.testing.assert_close(e, expected, rtol=1e-6, atol=1e-7)
    lossy_p = torch.cat([e.float().flatten() for e in lossy.modules["m"].parameters()])
    before = torch.cat([s.flatten() for s in start])
    big = before.abs() >= 0.25  # there 0.0005 is below half of bfloat16's ulp (2**-9)
    assert big.sum() > 20 and torch.equal(lossy_p[big], before[big])  # never moved there


def test_checkpoints_record_the_dtype_and_resume_restores_it(tmp_path):
    run(settings(steps=4, **PURE), tmp_path)
    ckpt = (tmp_path / "checkpoints" / "latest").resolve()
    assert json.loads((ckpt / "state.json").read_text())["weights_dtype"] == "bfloat16"
    assert {t.dtype for t in load_file(ckpt / "model.safetensors").values()} == {torch.bfloat16}
    assert {t.dtype for t in load_file(ckpt / "ema.safetensors").values()} == {torch.float32}
    state = torch.load(ckpt / "training_state.pt", weights_only=True)
    moments = state["objectives"]["main"]["optimizer"]["state"][0]
    assert moments["exp_avg"].dtype == moments["exp_avg_sq"].dtype == torch.bfloat16

    r, net = run(settings(steps=8, **PURE), tmp_path)
    assert r.resumed_from == 4 and r.step == 8
    assert all(p.dtype == torch.bfloat16 for p in net.parameters())
    ckpt = (tmp_path / "checkpoints" / "latest").resolve()
    assert {t.dtype for t in load_file(ckpt / "model.safetensors").values()} == {torch.bfloat16}

    with pytest.raises(CheckpointError, match="trained in bfloat16, training.weights_dtype is "
                       "float32: resume with training.weights_dtype=bfloat16"):  # fmt: skip
        run(settings(steps=12, amp="bf16"), tmp_path)


def test_float32_runs_record_float32_and_refuse_a_bfloat16_resume(tmp_path):
    run(settings(steps=2), tmp_path)
    ckpt = (tmp_path / "checkpoints" / "latest").resolve()
    assert json.loads((ckpt / "state.json").read_text())["weights_dtype"] == "float32"
    with pytest.raises(CheckpointError, match="trained in float32"):
        run(settings(steps=4, **PURE), tmp_path)


def test_resume_rules_for_the_new_keys():
    """``model.gradient_checkpointing`` may change on resume (same weights and gradients);
    ``training.weights_dtype`` may not, and a run written before the key existed counts as
    float32."""
    from medgen.train.commands import fit as fit_command

    old = {"model": {"kind": "unet", "channels": [16, 32]}, "training": {"amp": "bf16"}}
    new = {"model": {**old["model"], "gradient_checkpointing": True}}
    assert fit_command._learned(old)["model"] == fit_command._learned(new)["model"]
    assert "weights_dtype" in fit_command.FIXED_TRAINING_KEYS
    assert fit_command.ADDED_TRAINING_DEFAULTS == {"weights_dtype": "float32"}
