"""``model.kind: dit | hdit | uvit`` through ``fit`` in real subprocesses: each trains a few
steps on the quickstart config (16x16 MNI152 slices, image + mask, z-bin tokens), its
validation loss is finite, and ``sample`` rebuilds the network from the run's checkpoint and
draws finite samples. Bad transformer settings are one-line config errors (exit 2) naming the
key, before any run directory is written."""

import csv
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from medgen.train.cli import main

TINY = [
    "training.steps=4",
    "training.batch_size=4",
    "training.warmup_steps=1",
    "training.log_every=2",
    "training.eval_every=4",
    "training.checkpoint_every=4",
    "task.eval_samples=4",
    "data.recipe.size=16",
    "data.recipe.n_bins=4",
]
KINDS = {
    "dit": ["model.hidden_size=32", "model.depth=2", "model.num_heads=2"],
    "hdit": ["model.hidden_size=32", "model.num_heads=2", "model.patch_size=2",
             "model.level_depths=1,1,1", "model.level_widths=32,64"],
    "uvit": ["model.hidden_size=32", "model.depth=3", "model.num_heads=2"],
}  # fmt: skip


def cli(*args, cwd, env):
    exe = shutil.which("medgen-train")
    cmd = [exe] if exe else [sys.executable, "-m", "medgen.train"]
    proc = subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)  # fmt: skip
    assert proc.returncode == 0, f"{args}: {proc.stdout[-2000:]}{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("transformers")
    env = {**os.environ, "MEDGEN_QUIET": "1", "OMP_NUM_THREADS": "2",
           "MEDGEN_CACHE_DIR": str(root / "caches")}  # fmt: skip
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(key, None)
    return root, env


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_fit_and_sample_each_transformer(env, kind):
    root, environ = env
    run = root / kind
    cli("fit", "quickstart", f"model.kind={kind}", *KINDS[kind], *TINY, "--out", run,
        "--quiet", cwd=root, env=environ)  # fmt: skip
    assert f"kind: {kind}" in (run / "config.yaml").read_text()
    rows = list(csv.DictReader((run / "eval.csv").open()))
    assert rows and rows[-1]["step"] == "4"
    assert math.isfinite(float(rows[-1]["val_loss"]))
    out = run / "s"
    cli("sample", run, "--steps", "2", "--n", "2", "--no-nifti", "--out", out, "--quiet",
        cwd=root, env=environ)  # fmt: skip
    samples = np.load(out / "samples.npz")
    assert samples["images"].shape[1:] == (1, 16, 16)
    assert np.isfinite(samples["images"]).all()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.kind=dit", "model.patch_size=3"], "model.patch_size: expected one of 1, 2, 4, 8"),
        (["model.kind=dit", "model.num_heads=5"], "model.num_heads: 5 heads do not divide the"),
        (["model.kind=uvit", "model.depth=4"], "model.depth: expected an odd depth"),
        (["model.kind=hdit", "model.level_depths=2,2"], "model.level_depths: expected an odd"),
        (["model.kind=hdit", "model.level_widths=384,768"], "model.level_widths: 5 level_depths"),
        (["model.kind=hdit", "model.variant=XXL"], "model.variant: expected one of S, B, L, XL"),
        (["model.kind=uvit", "model.variant=S-Deep", "model.num_heads=7"], "model.num_heads: 7"),
    ],
)
def test_bad_transformer_settings_are_one_line_errors(tmp_path, capsys, overrides, message):
    code = main(["fit", "quickstart", *overrides, "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "r").exists()


def test_a_patch_grid_that_does_not_fit_the_data_names_the_key(env, capsys, monkeypatch):
    root, environ = env
    monkeypatch.setenv("MEDGEN_CACHE_DIR", environ["MEDGEN_CACHE_DIR"])
    args = ["fit", "quickstart", *TINY, "model.kind=hdit", "model.hidden_size=32",
            "model.num_heads=2", "model.patch_size=8", "model.level_depths=1,1,1,1,1"]  # fmt: skip
    code = main([*args, "--out", str(root / "bad"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "model.level_depths: patches of 8 merged 2x 2 times" in err and "32" in err, err
    assert "[16, 16]" in err and not (root / "bad").exists()


def test_model_gradient_checkpointing_reaches_every_kind():
    """``model.gradient_checkpointing`` is passed to the network of every ``model.kind``."""
    from medgen.train.tasks.networks import NETWORKS, NetworkSpec

    spec = NetworkSpec(spatial_dims=2, in_channels=1, out_channels=1, shape=(16, 16))
    small = {"unet": dict(channels=(16, 32), attention_levels=(False, True),
                          num_head_channels=16, norm_num_groups=8),
             "dit": dict(hidden_size=32, depth=1, num_heads=2),
             "hdit": dict(hidden_size=32, num_heads=2, patch_size=2, level_depths=(1, 1, 1)),
             "uvit": dict(hidden_size=32, depth=1, num_heads=2)}  # fmt: skip
    for kind, config in NETWORKS.items():
        for flag in (False, True):
            net = config(gradient_checkpointing=flag, **small[kind]).build(spec)
            assert net.gradient_checkpointing is flag, kind


@pytest.mark.parametrize("kind", ["unet", "dit"])
def test_fit_and_sample_with_bfloat16_weights(env, kind):
    """``training.weights_dtype=bfloat16`` (pure bf16 weights) through ``fit`` with no EMA, so
    validation runs the bfloat16 network itself; ``sample`` rebuilds the network from the
    bfloat16 checkpoint and draws finite samples."""
    root, environ = env
    run = root / f"{kind}-bf16"
    net = KINDS.get(kind, ["model.channels=16,32", "model.attention_levels=false,true",
                           "model.num_head_channels=16", "model.norm_num_groups=8"])  # fmt: skip
    cli("fit", "quickstart", f"model.kind={kind}", *net, *TINY, "training.amp=bf16",
        "training.weights_dtype=bfloat16", "training.ema_decay=0", "--out", run, "--quiet",
        cwd=root, env=environ)  # fmt: skip
    rows = list(csv.DictReader((run / "eval.csv").open()))
    assert rows and math.isfinite(float(rows[-1]["val_loss"]))
    info = json.loads((run / "checkpoints" / "latest" / "state.json").read_text())
    assert info["weights_dtype"] == "bfloat16"
    out = run / "s"
    cli("sample", run, "--no-ema", "--steps", "2", "--n", "2", "--no-nifti", "--out", out,
        "--quiet", cwd=root, env=environ)  # fmt: skip
    assert np.isfinite(np.load(out / "samples.npz")["images"]).all()
