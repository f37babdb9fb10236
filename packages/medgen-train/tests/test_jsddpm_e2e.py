"""JS-DDPM end to end through the CLI in subprocesses: the demo lesions data (tiny) -> ``fit
jsddpm`` with the anatomical prior and Kendall weighting -> ``sample`` of every z-bin x class
the training split held -> ``evaluate`` against a held-out split with both classes: nearest-real
scores per z-bin x class (JSON, evaluation.md and report.html) and regional metrics by lesion
size."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file

from medgen.train.config.tiny import TINY

pytestmark = pytest.mark.slow


def cli(*args, cwd):
    exe = shutil.which("medgen-train")
    cmd = [exe] if exe else [sys.executable, "-m", "medgen.train"]
    env = {**os.environ, "MEDGEN_QUIET": "1", "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(key, None)
    proc = subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=600)  # fmt: skip
    assert proc.returncode == 0, f"{args}: {proc.stdout[-2000:]}{proc.stderr[-3000:]}"
    return proc


def test_fit_sample_evaluate_jsddpm_with_the_anatomical_prior(tmp_path):
    cli("demo-data", "demo", "--subjects", 6, "--dicom", 0, "--spacing", 4, cwd=tmp_path)
    cli("fit", "jsddpm", "data.cache=", "data.recipe=demo_lesions", "data.recipe.out=cache/dl",
        *TINY, "training.steps=4", "training.eval_every=2", "training.checkpoint_every=2",
        "data.num_workers=0", "task.anatomical_prior=true", "--out", "runs/js", cwd=tmp_path)  # fmt: skip
    run = tmp_path / "runs" / "js"
    data = json.loads((run / "data.json").read_text())
    assert data["n_bins"] == 4 and data["n_classes"] == 2
    trained = {(t % 4, t // 4) for t in data["tokens"]}
    assert {c for _, c in trained} == {0, 1}  # lesion slices were trained on
    weights = load_file(str(run / "checkpoints" / "step_00000004" / "ema.safetensors"))
    maps = weights["network.anatomical_prior.maps"]
    assert maps.shape == (4, 1, 16, 16) and maps.min() >= -1 and maps.max() <= 1
    assert any(k.startswith("loss_weights.") for k in weights)  # Kendall weighting, on in jsddpm

    cli("sample", "runs/js", "--steps", 3, "--per-token", 1, "--out", "runs/js/s", cwd=tmp_path)
    samples = np.load(run / "s" / "samples.npz")
    sampled = set(zip(samples["z_bin"].tolist(), samples["class_id"].tolist(), strict=True))
    assert sampled == trained and len(samples["z_bin"]) == len(trained)  # every bin x class

    manifest = json.loads((tmp_path / "cache" / "dl" / "manifest.json").read_text())
    held_out = manifest["splits"]["val"]["counts_per_class"]
    assert len(held_out) == 2 and min(held_out) > 0  # a held-out split with both classes
    cli("evaluate", "runs/js/s", "--reference", "cache/dl:val", cwd=tmp_path)
    out = run / "s" / "evaluation"
    result = json.loads((out / "evaluation.json").read_text())
    assert result["reference"].endswith("cache/dl:val") and result["overall"]["n"] == len(trained)
    per_sample = {(s["z_bin"], s["class_id"]): s for s in result["per_sample"]}
    assert set(per_sample) == trained
    for s in per_sample.values():
        assert {"ssim", "psnr", "dice", "speckled"} <= s.keys() and np.isfinite(s["psnr"])
    regional = result["regional"]
    assert set(regional["generated_lesions_per_bin"]) == {"tiny", "small", "medium", "large"}
    assert "vs_nearest_real" in regional and "reference_lesions_per_bin" in regional
    md = (out / "evaluation.md").read_text()
    html = (out / "report.html").read_text()
    for text in (md, html):
        assert "Nearest-real scores per z-bin and class" in text
        assert "Regional metrics by lesion size" in text
    for b, c in trained:  # one row per z-bin x class, with its n
        assert f"| {b} | {c} | 1 |" in md
