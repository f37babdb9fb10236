"""End to end: `medgen-train quickstart` through its CLI at a tiny size."""

import csv
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml

pytestmark = pytest.mark.slow


def run_cli(out, cache, *extra):
    exe = shutil.which("medgen-train")
    cmd = [exe] if exe else [sys.executable, "-m", "medgen.train"]
    cmd += [
        "quickstart",
        "--out",
        str(out),
        "--size",
        "16",
        "--steps",
        "6",
        "channels=16,32",
        "attention_levels=false,true",
        "batch_size=4",
        "samples_per_bin=2",
        "sample_steps=4",
        "log_every=2",
        "diagnostics_every=3",
        "n_bins=4",
        *extra,
    ]
    env = {**os.environ, "MEDGEN_CACHE_DIR": str(cache), "MEDGEN_QUIET": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def test_quickstart_writes_a_complete_run(tmp_path):
    out, cache = tmp_path / "run", tmp_path / "cache"
    proc = run_cli(out, cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "cache built" in proc.stdout

    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["size"] == 16 and cfg["train_steps"] == 6 and cfg["n_bins"] == 4

    with open(out / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == [2, 4, 6]
    for r in rows:
        assert math.isfinite(float(r["loss_image"])) and math.isfinite(float(r["loss_mask"]))

    summary = json.loads((out / "summary.json").read_text())
    for key in ("ssim_mean", "psnr_mean", "dice_mean", "bin_mean_image_ssim_reference"):
        assert math.isfinite(summary[key]), key
    assert -1 <= summary["ssim_mean"] <= 1 and 0 <= summary["dice_mean"] <= 1
    assert len(summary["ssim_per_bin"]) == 4 and summary["n_samples"] == 8
    assert sorted(summary["x0_psnr_by_bucket"]) == ["3", "6"]
    assert all(len(v) == 10 for v in summary["x0_psnr_by_bucket"].values())

    import matplotlib.image as mpimg

    for name in ("samples.png", "curves.png", "x0_psnr.png"):
        img = mpimg.imread(out / name)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100, name
        assert img.std() > 0.01, f"{name} is blank"

    report = (out / "report.md").read_text()
    for ref in ("samples.png", "curves.png", "x0_psnr.png", "SSIM", "Dice"):
        assert ref in report

    samples = np.load(out / "samples.npz")
    assert samples["images"].shape == (8, 16, 16)
    assert samples["images"].min() >= -1 and samples["images"].max() <= 1

    ckpt = out / "checkpoints" / "latest"
    for name in (
        "model.safetensors",
        "ema.safetensors",
        "training_state.pt",
        "state.json",
        "config.yaml",
    ):
        assert (ckpt / name).is_file(), name
    assert json.loads((ckpt / "state.json").read_text())["step"] == 6

    # the slice cache: a manifest with counts per bin, no filesystem path, reused next time
    (manifest_path,) = cache.rglob("manifest.json")
    manifest = json.loads(manifest_path.read_text())
    assert sum(manifest["counts_per_bin"]) == manifest["n_slices"] == 100
    assert all(c > 0 for c in manifest["counts_per_bin"])
    assert "/" not in json.dumps(manifest["config"])

    again = run_cli(tmp_path / "run2", cache)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "cache reused" in again.stdout


def test_bad_override_is_a_clear_error(tmp_path):
    proc = run_cli(tmp_path / "run", tmp_path / "cache", "learning_rate=1")
    assert proc.returncode == 2
    assert "unknown config key 'learning_rate'" in proc.stderr
    assert not (tmp_path / "run").exists()  # rejected before anything is written
