"""Datasets as researchers keep them, through the CLI in subprocesses: an nnU-Net v2 folder
(built from MNI152 with planted lesions) -> ``plan`` -> ``cache`` on the proposed recipe ->
``fit`` on the proposed config; a broken folder refused with every problem listed and nothing
written; Decathlon and BIDS folders planned and cached."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from medgen.data import write_layout_dataset

pytestmark = pytest.mark.slow

TINY = [
    "training.steps=2", "training.batch_size=2", "training.warmup_steps=1",
    "training.log_every=1", "training.eval_every=2", "training.checkpoint_every=2",
    "task.eval_samples=2", "model.channels=8,16", "model.attention_levels=false,false",
    "model.norm_num_groups=8", "model.num_head_channels=8",
]  # fmt: skip


def cli(*args, cwd, check=True):
    exe = shutil.which("medgen-train")
    cmd = [exe] if exe else [sys.executable, "-m", "medgen.train"]
    env = {**os.environ, "MEDGEN_QUIET": "1", "OMP_NUM_THREADS": "2"}
    proc = subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=600)  # fmt: skip
    if check:
        assert proc.returncode == 0, f"{args}: {proc.stdout[-2000:]}{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("layouts")
    for layout in ("nnunet", "decathlon", "bids"):
        write_layout_dataset(root / layout, layout, 4, spacing_mm=8.0)
    return root


def test_nnunet_plan_then_cache_then_fit_as_written(root):
    out = cli("plan", "nnunet", "--out", "plan", "--samples", 20000, cwd=root).stdout
    assert out.startswith("plan nnunet: nnunet, 4 cases, channels T1, T2, labels [0, 1]")
    assert "proposed: kind volumes, spacing 10 x 8 x 8 mm" in out
    plan = root / "plan"
    for name in ("recipe.yaml", "fit.yaml", "fingerprint.json", "plan.md", "plan.png"):
        assert (plan / name).stat().st_size > 100, name
    recipe = yaml.safe_load((plan / "recipe.yaml").read_text())
    assert recipe["sources"] == {"layout": "nnunet", "root": str(root / "nnunet")}
    assert recipe["modalities"] == ["T1", "T2"] and recipe["kind"] == "volumes"
    fingerprint = json.loads((plan / "fingerprint.json").read_text())
    assert len(fingerprint["cases"]) == 4 and set(fingerprint["intensity"]) == {"T1", "T2"}
    assert "| T1 |" in (plan / "plan.md").read_text()

    cached = cli("cache", plan / "recipe.yaml", cwd=root).stdout
    assert "4 shards (4 built, 0 reused)" in cached
    manifest = json.loads((plan / "cache" / "manifest.json").read_text())
    assert manifest["modalities"] == ["T1", "T2"] and manifest["kind"] == "volumes"
    assert manifest["item_shape"][1:] == recipe["shape"]

    cli("fit", plan / "fit.yaml", *TINY, "--out", "run", cwd=root)
    data = json.loads((root / "run" / "data.json").read_text())
    assert data["channels"] == ["T1", "T2"] and data["spatial_dims"] == 3


def test_broken_nnunet_folder_lists_every_problem_and_writes_nothing(root, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(root / "nnunet", bad)
    (bad / "imagesTr" / "brain_001_0001.nii.gz").unlink()
    (bad / "labelsTr" / "brain_003.nii.gz").rename(bad / "labelsTr" / "brain_003.nii")
    proc = cli("plan", bad, "--out", tmp_path / "plan", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and not (tmp_path / "plan").exists()
    lines = proc.stderr.strip().splitlines()
    assert lines == [
        f"medgen-train: error: 3 problems in {bad}/dataset.json (nnU-Net v2 layout)",
        f"  {bad}/labelsTr/brain_003.nii: does not end in file_ending '.nii.gz' of dataset.json",
        f"  {bad}/imagesTr/brain_001_0001.nii.gz: missing: channel 1 ('T2') of case 'brain_001'",
        f"  {bad}/labelsTr/brain_003.nii.gz: missing: label of case 'brain_003'",
    ]


SCRIPT = """
import sys
from medgen.train.cli import main
for layout in ("decathlon", "bids"):
    assert main(["plan", layout, "--out", f"plan_{layout}", "--samples", "20000"]) == 0
    assert main(["cache", f"plan_{layout}/recipe.yaml", "--quiet"]) == 0
"""


def test_decathlon_and_bids_plan_and_cache(root):
    pytest.importorskip("bids", reason="BIDS layouts need pybids (medgen-data[layouts])")
    env = {**os.environ, "MEDGEN_QUIET": "1", "OMP_NUM_THREADS": "2"}
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          cwd=root, env=env, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "plan decathlon: decathlon, 4 cases, channels T1, T2" in done.stdout
    assert "plan bids: bids, 4 cases, channels T1w, T2w" in done.stdout
    for layout, subjects in (("decathlon", 4), ("bids", 4)):
        manifest = json.loads((root / f"plan_{layout}" / "cache" / "manifest.json").read_text())
        assert len(manifest["shards"]) == subjects and manifest["has_mask"]
