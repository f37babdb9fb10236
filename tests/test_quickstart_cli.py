"""End to end: `medgen-train quickstart` (cache -> fit -> sample -> evaluate -> report) through
its CLI at a tiny size; a second run reuses the cache, the checkpoint and the samples."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

pytestmark = pytest.mark.slow

TINY = [
    "--size", "16", "--steps", "6", "--batch-size", "4",
    "model.channels=16,32", "model.attention_levels=false,true", "sample.per_token=1",
    "sample.steps=4", "training.log_every=2", "training.eval_every=3",
    "training.checkpoint_every=3", "training.warmup_steps=1", "data.recipe.n_bins=4",
    "task.eval_samples=8",
]  # fmt: skip


def run_cli(out, cache, *extra):
    exe = shutil.which("medgen-train")
    cmd = [exe] if exe else [sys.executable, "-m", "medgen.train"]
    env = {**os.environ, "MEDGEN_CACHE_DIR": str(cache), "MEDGEN_QUIET": "1"}
    cmd += ["quickstart", "--out", str(out), *TINY, *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def test_quickstart_writes_a_complete_run_and_reruns_reuse_it(tmp_path):
    out, cache = tmp_path / "run", tmp_path / "cache"
    proc = run_cli(out, cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1 shards built" in proc.stdout
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["data"]["recipe"]["size"] == 16 and cfg["training"]["steps"] == 6
    assert cfg["data"]["recipe"]["out"].startswith(str(cache))
    (samples,) = (out / "samples").iterdir()
    assert samples.name == "step_00000006-euler4-seed0"
    result = json.loads((samples / "evaluation" / "evaluation.json").read_text())
    assert result["overall"]["n"] == 4 and set(result["per_bin"]) == {"0", "1", "2", "3"}
    report = (out / "report.md").read_text()
    for ref in ("report/curves.png", "report/x0_psnr.png", "grid.png", "nearest.png", "SSIM"):
        assert ref in report
    import matplotlib.image as mpimg

    for png in (out / "report" / "curves.png", samples / "grid.png"):
        img = mpimg.imread(png)
        assert img.ndim == 3 and min(img.shape[:2]) > 100 and img.std() > 0.01, png

    again = run_cli(out, cache)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "0 shards built, 1 reused" in again.stdout
    assert "already holds these samples" in again.stdout
    assert "already holds this evaluation" in again.stdout


def test_bad_override_is_a_clear_error_before_anything_is_written(tmp_path):
    proc = run_cli(tmp_path / "run", tmp_path / "cache", "training.learning_rate=1")
    assert proc.returncode == 2
    assert "unknown config key 'training.learning_rate'" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()
