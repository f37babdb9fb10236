"""SBLDM (seed 004) end to end through the CLI in subprocesses, on the bundled configs shrunk
to seconds: stage 1 ``sbldm_vae`` on the MNI152 slices -> stage 2 ``sbldm`` in its latent space
(gamma-rebalanced schedule, frequency loss, latent CutMix, dropout) -> ``sample`` with the
adaptive early stop -> ``evaluate`` with FID / KID on the VAE's own latents."""

import json
import os
import subprocess
import sys

import numpy as np

DATA = ["data.cache=", "data.recipe=mni152", "data.recipe.size=16", "data.recipe.n_bins=4",
        "data.eval_split=train"]  # fmt: skip
TRAIN = ["training.steps=2", "training.batch_size=4", "training.warmup_steps=1",
         "training.log_every=1", "training.eval_every=2", "training.checkpoint_every=2"]  # fmt: skip


def _cli(*args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, "-m", "medgen.train", *map(str, args), "--quiet"],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


def test_sbldm_two_stages_sample_with_early_stop_and_evaluate(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDGEN_CACHE_DIR", str(tmp_path / "cache"))
    vae, ldm = tmp_path / "vae", tmp_path / "ldm"
    _cli("fit", "sbldm_vae", *DATA, *TRAIN, "task.network.channels=8,16,16",
         "task.network.norm_num_groups=8", "task.eval_samples=4", "--out", vae, cwd=tmp_path)  # fmt: skip
    _cli("fit", "sbldm", *DATA, *TRAIN, f"task.space.autoencoder={vae}", "model.channels=16,32",
         "model.attention_levels=false,true", "model.num_head_channels=16",
         "task.eval_samples=4", "--out", ldm, cwd=tmp_path)  # fmt: skip
    cfg = (ldm / "config.yaml").read_text()
    for key in ("gamma_rebalanced", "freq_loss_weight: 0.1", "cutmix_prob: 0.25", "dropout: 0.1"):
        assert key in cfg
    _cli("sample", ldm, "--n", "12", "--steps", "5", "--early-stop", "0.5", "--out", tmp_path / "s",
         cwd=tmp_path)  # fmt: skip
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert all(1 <= n <= 5 for n in manifest["steps_taken"])
    with np.load(tmp_path / "s" / "samples.npz") as npz:
        assert npz["images"].shape == (12, 1, 16, 16) and np.isfinite(npz["images"]).all()
    _cli("evaluate", tmp_path / "s", "--features", f"autoencoder:{vae}", "--bootstrap", "20",
         cwd=tmp_path)  # fmt: skip
    ev = json.loads((tmp_path / "s" / "evaluation" / "evaluation.json").read_text())
    text = json.dumps(ev)
    assert "fid" in text and "kid" in text
