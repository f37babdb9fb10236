"""A researcher's own scans to samples and scores, through the CLI in subprocesses: the demo
data set (MNI152 deformed, synthetic lesions, NIfTI and DICOM) -> inspect -> cache (masks,
lesion classes, subject-level split) -> fit -> sample -> evaluate -> report, in 2D and 3D."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml

pytestmark = pytest.mark.slow


def cli(*args, cwd, check=True, timeout=600):
    exe = shutil.which("medgen-train")
    cmd = [exe] if exe else [sys.executable, "-m", "medgen.train"]
    env = {**os.environ, "MEDGEN_QUIET": "1", "OMP_NUM_THREADS": "2"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(key, None)
    proc = subprocess.run(
        [*cmd, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env,
        timeout=timeout,
    )  # fmt: skip
    if check:
        assert proc.returncode == 0, f"{args}: {proc.stdout[-2000:]}{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("user")
    cli("demo-data", "demo", "--subjects", 6, "--dicom", 2, "--spacing", 4, cwd=root)
    return root


TINY = [
    "model.channels=16,32",
    "model.attention_levels=false,false",
    "training.steps=4",
    "training.batch_size=4",
    "training.warmup_steps=1",
    "training.log_every=2",
    "training.eval_every=2",
    "training.checkpoint_every=2",
    "task.eval_samples=4",
    "data.num_workers=0",
]


def recipe(root, name, **values):
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def test_slices_from_nifti_and_dicom_with_masks_to_samples_and_scores(demo):
    table = (demo / "demo" / "subjects.csv").read_text().splitlines()
    assert table[0].startswith("subject,image,mask,class")
    dicom = next(line.split(",")[1] for line in table[1:] if not line.split(",")[1].endswith(".gz"))
    info = json.loads(cli("inspect", f"demo/{dicom}", "--json", cwd=demo).stdout)
    assert info["format"] != "nifti" and len(info["shape_zyx"]) == 3

    r = recipe(
        demo, "slices", out="cache/slices", kind="slices", sources=["demo/subjects.csv"],
        orientation="RAS", z_from="foreground", foreground_threshold=-0.8, n_bins=4, size=16,
        class_from="mask", min_lesion_voxels=2, val_fraction=0.2, test_fraction=0.2,
    )  # fmt: skip
    out = cli("cache", r, cwd=demo).stdout
    assert "6 shards (6 built, 0 reused)" in out and " train " in out and " val " in out
    manifest = json.loads((demo / "cache/slices/manifest.json").read_text())
    splits = {k: set(v["subjects"]) for k, v in manifest["splits"].items()}
    assert sum(len(s) for s in splits.values()) == 6  # every subject in exactly one split
    assert not (splits["train"] & splits["val"]) and not (splits["train"] & splits["test"])
    assert manifest["n_classes"] == 2 and manifest["has_mask"]

    cli("fit", "jsddpm", "data.cache=cache/slices", *TINY, "data.oversample=2",
        "--out", "runs/js", cwd=demo)  # fmt: skip
    run = demo / "runs" / "js"
    rows = [line.split(",") for line in (run / "eval.csv").read_text().splitlines()]
    assert rows[0][:2] == ["step", "val_loss"] and [r[0] for r in rows[1:]] == ["2", "4"]
    data = json.loads((run / "data.json").read_text())
    assert data["n_bins"] == 4 and data["n_classes"] == 2 and data["shape"] == [16, 16]

    cli("sample", "runs/js", "--steps", 3, "--per-token", 1, "--out", "runs/js/s", cwd=demo)
    samples = np.load(run / "s" / "samples.npz")
    trained = data["tokens"]  # the bins x classes the training split held (of 4 x 2)
    assert set(trained) <= set(range(8)) and set(range(4)) <= set(trained)
    n = len(trained)
    assert samples["images"].shape == (n, 1, 16, 16) and samples["masks"].shape == (n, 16, 16)
    assert sorted(samples["token"].tolist()) == trained
    niftis = sorted(p.name for p in (run / "s" / "nifti").iterdir())
    assert len(niftis) == 2 * n and niftis[0] == "sample_00000_bin0_class0_image.nii.gz"
    from medgen.data import orientation_code, read_nifti

    vol = read_nifti(run / "s" / "nifti" / niftis[0])
    assert orientation_code(vol) == "RAS" and vol.spacing[1:] == pytest.approx(data["spacing"][1:])
    again = cli("sample", "runs/js", "--steps", 3, "--per-token", 1, "--out", "runs/js/s",
                cwd=demo)  # fmt: skip
    assert "already holds these samples" in again.stdout

    cli("evaluate", "runs/js/s", "--reference", "cache/slices:test", cwd=demo)
    result = json.loads((run / "s" / "evaluation" / "evaluation.json").read_text())
    assert result["reference"].endswith("cache/slices:test") and result["overall"]["n"] == n
    assert {"ssim", "psnr", "dice", "speckled"} <= result["overall"].keys()
    assert result["samples"].endswith("runs/js/s") and len(result["per_sample"]) == n
    assert set(result["per_bin"]) == {"0", "1", "2", "3"}
    cli("report", "runs/js", "--samples", "runs/js/s", cwd=demo)
    report = (run / "report.md").read_text()
    for needle in ("x0-prediction PSNR", "report/curves.png", "s/grid.png", "z-bin 3"):
        assert needle in report


def test_volumes_in_3d_with_padding(demo):
    r = recipe(
        demo, "volumes", out="cache/volumes", kind="volumes", sources=["demo/subjects.csv"],
        orientation="RAS", spacing=[8.0, 8.0, 8.0], shape=[16, 16, 16], class_from="mask",
        min_lesion_voxels=1, val_fraction=0.2,
    )  # fmt: skip
    cli("cache", r, cwd=demo)
    cli("fit", "volumes", "data.cache=cache/volumes", *TINY, "training.batch_size=2",
        "model.norm_num_groups=8", "--out", "runs/vol", cwd=demo)  # fmt: skip
    cli("sample", "runs/vol", "--steps", 2, "--per-token", 1, "--out", "runs/vol/s", cwd=demo)
    samples = np.load(demo / "runs/vol/s/samples.npz")
    assert samples["images"].shape[1:] == (1, 16, 16, 16)
    manifest = json.loads((demo / "runs/vol/s/manifest.json").read_text())
    assert manifest["data"]["spacing"] == [8.0, 8.0, 8.0]
    cli("evaluate", "runs/vol/s", cwd=demo)
    result = json.loads((demo / "runs/vol/s/evaluation/evaluation.json").read_text())
    assert result["overall"]["n"] == len(samples["images"])
