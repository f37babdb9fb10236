"""Bad input to the training-side commands: each is exit status 2 and one line naming the file,
directory or key, and nothing of value is written or lost. Run through ``cli.main`` (the CLI's
own code path, in-process for speed); concurrency and signals run in real subprocesses."""

import json
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import SimpleITK as sitk
import yaml

from medgen.train.cli import main
from medgen.train.config.tiny import TINY as TINY_RUN

TINY = list(TINY_RUN)


def fails(capsys, *argv, match):
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert match in err, err
    return err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny quickstart-config run (and its recipe cache) shared by the sampling cases."""
    root = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDGEN_CACHE_DIR", str(root / "caches"))
        assert main(["fit", "quickstart", *TINY, "--out", str(root / "run"), "--quiet"]) == 0
        yield root


def write_volume(path, array, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)):
    image = sitk.GetImageFromArray(np.asarray(array, dtype=np.float32))
    image.SetSpacing(spacing[::-1])
    image.SetOrigin(origin)
    sitk.WriteImage(image, str(path))


def table(tmp_path, rows, **recipe):
    """A CSV of subjects with a recipe over it."""
    lines = ["subject,image,mask,class,split"] + [",".join(map(str, r)) for r in rows]
    (tmp_path / "subjects.csv").write_text("\n".join(lines) + "\n")
    values = dict(out=str(tmp_path / "cache"), sources=[str(tmp_path / "subjects.csv")],
                  n_bins=2, size=16, **recipe)  # fmt: skip
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(values))
    return tmp_path / "recipe.yaml"


def scan(tmp_path, name, seed=0, shape=(12, 24, 24), lesion=True, **geometry):
    _, y, x = np.mgrid[: shape[0], : shape[1], : shape[2]]
    body = (y - shape[1] / 2) ** 2 + (x - shape[2] / 2) ** 2 < (shape[1] / 3) ** 2
    write_volume(tmp_path / f"{name}.nii.gz", body * (100.0 + seed), **geometry)
    mask = np.zeros(shape, np.uint8)
    if lesion:
        mask[4:8, 10:14, 10:14] = 1
    write_volume(tmp_path / f"{name}_mask.nii.gz", mask, **geometry)
    return f"{name}.nii.gz", f"{name}_mask.nii.gz"


def test_missing_foreign_and_old_caches(tmp_path, capsys):
    fails(capsys, "fit", "jsddpm", f"data.cache={tmp_path / 'nope'}", "--out", tmp_path / "r",
          match=f"data.cache: {tmp_path / 'nope'} does not exist")  # fmt: skip
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("x")
    fails(capsys, "fit", "jsddpm", f"data.cache={tmp_path / 'foreign'}", "--out", tmp_path / "r",
          match="not a MedGen cache")  # fmt: skip
    old = tmp_path / "old"
    old.mkdir()
    (old / "manifest.json").write_text(json.dumps({"format_version": 1, "shards": []}))
    fails(capsys, "fit", "jsddpm", f"data.cache={old}", "--out", tmp_path / "r",
          match="cache format 1")  # fmt: skip
    assert not (tmp_path / "r").exists()  # nothing written for any of them


def test_masks_of_another_geometry_or_with_undeclared_labels(tmp_path, capsys):
    a = scan(tmp_path, "a")
    b_img, _ = scan(tmp_path, "b", seed=1)
    scan(tmp_path, "shifted", origin=(0.0, 0.0, 5.0))
    r = table(tmp_path, [("s1", *a, 1, ""), ("s2", b_img, "shifted_mask.nii.gz", 1, "")])
    err = fails(capsys, "cache", r, "--quiet", match="b.nii.gz")
    assert "shifted_mask.nii.gz" in err and "origin" in err
    labels = np.zeros((12, 24, 24), np.uint8)
    labels[5, 5, 5] = 3
    write_volume(tmp_path / "three.nii.gz", labels)
    r = table(tmp_path, [("s1", *a, 1, ""), ("s2", b_img, "three.nii.gz", 1, "")])
    fails(capsys, "cache", r, "--quiet", match="three.nii.gz")
    assert not (tmp_path / "cache" / "manifest.json").exists()


def test_too_many_bins_and_a_class_absent_from_training(tmp_path, capsys):
    a, b = scan(tmp_path, "a"), scan(tmp_path, "b", seed=1, lesion=False)
    r = table(tmp_path, [("s1", *a, 1, "val"), ("s2", *b, 0, "train")], z_range=[2, 5])
    fails(capsys, "cache", r, "n_bins=8", "--quiet",
          match="n_bins: 8 bins over the 4 slices of z_range [2, 5]")  # fmt: skip
    assert main(["cache", str(r), "class_from=source", "--quiet"]) == 0
    capsys.readouterr()
    fails(capsys, "fit", "jsddpm", f"data.cache={tmp_path / 'cache'}", *TINY[:7],
          "--out", tmp_path / "run", match="class [1] absent from split 'train'")  # fmt: skip
    assert main(["cache", str(r), "class_from=none", "--quiet"]) == 0
    capsys.readouterr()
    fails(capsys, "fit", "jsddpm", f"data.cache={tmp_path / 'cache'}", "data.eval_split=test",
          "--out", tmp_path / "run", match="data.eval_split: split 'test'")  # fmt: skip
    assert not (tmp_path / "run").exists()


def test_sampling_bad_requests(trained, tmp_path, capsys):
    run = trained / "run"
    fails(capsys, "sample", tmp_path / "nothing", match="no such run directory")
    (tmp_path / "empty_run").mkdir()
    fails(capsys, "sample", tmp_path / "empty_run", match="no checkpoint to use")
    fails(capsys, "sample", run, "--bins", "4", match="--bins: z-bins [4] outside")
    fails(capsys, "sample", run, "--classes", "1", match="--classes: classes [1] outside")
    fails(capsys, "sample", run, "--sampler", "ddim", match="'ddim' does not sample a 'rflow'")
    fails(capsys, "sample", run, "--guidance", "3", match="guidance needs a null token")
    fails(capsys, "sample", run, "--steps", "0", match="sample.steps: expected a number >= 1")
    fails(capsys, "sample", run, "--batch-size", "0", match="sample.batch_size: expected")
    fails(capsys, "sample", run, "--n", "0", match="--n: expected at least 1 sample")
    fails(capsys, "sample", run, "--checkpoint", "step_7", match="no such checkpoint")
    fails(capsys, "sample", run, "--out", run, match="is a 'fit' directory, not a 'samples'")


def test_evaluate_against_items_of_another_size(trained, tmp_path, capsys):
    run = trained / "run"
    out = tmp_path / "s"
    assert main(["sample", str(run), "--steps", "2", "--per-token", "1", "--out", str(out),
                 "--no-nifti", "--quiet"]) == 0  # fmt: skip
    big = tmp_path / "big"
    assert main(["cache", "mni152", f"out={big}", "size=24", "n_bins=4", "--quiet"]) == 0
    capsys.readouterr()
    fails(capsys, "evaluate", out, "--reference", f"{big}:train",
          match="samples of shape [1, 16, 16] cannot be compared with")  # fmt: skip
    fails(capsys, "evaluate", tmp_path, match="not a complete samples directory")


def test_run_directories_that_cannot_be_used(trained, tmp_path, capsys, readonly_dir):
    (tmp_path / "file").write_text("x")
    fails(capsys, "fit", "quickstart", *TINY, "--out", tmp_path / "file", match="is a file")
    fails(capsys, "fit", "quickstart", *TINY, "--out", readonly_dir / "run",
          match="cannot be created")  # fmt: skip
    samples = tmp_path / "samples"
    assert main(["sample", str(trained / "run"), "--steps", "2", "--per-token", "1",
                 "--out", str(samples), "--no-nifti", "--quiet"]) == 0  # fmt: skip
    fails(capsys, "quickstart", *TINY, "--out", samples,
          match="is a 'samples' directory, not a 'fit' one")  # fmt: skip
    assert (samples / "manifest.json").is_file()  # untouched


def test_resume_with_another_config_is_refused_before_anything_is_written(trained, capsys):
    run = trained / "run"
    before = (run / "config.yaml").read_text()
    fails(capsys, "fit", "quickstart", *TINY, "model.channels=32,32", "--out", run,
          match="was trained with another config: model.channels: [16, 32] -> [32, 32]")  # fmt: skip
    fails(capsys, "fit", "quickstart", *TINY, "data.recipe.z_range=30,120", "--out", run,
          match="data.recipe.z_range: [40, 139] -> [30, 120]")  # fmt: skip
    assert (run / "config.yaml").read_text() == before
    # loader settings and more steps are fine: it resumes
    assert main(["fit", "quickstart", *TINY, "training.steps=3", "data.num_workers=1",
                 "--out", str(run), "--quiet"]) == 0  # fmt: skip


def test_two_fits_on_one_run_directory_and_ctrl_c(tmp_path):
    """The second process is refused, naming the first; Ctrl-C then stops the first after a
    checkpoint (exit 130), and the same command resumes from it."""
    cmd = [sys.executable, "-m", "medgen.train", "fit", "quickstart", *TINY,
           "training.steps=400", "--out", str(tmp_path / "run")]  # fmt: skip
    import os
    import signal

    env = {**os.environ, "MEDGEN_CACHE_DIR": str(tmp_path / "caches"), "OMP_NUM_THREADS": "1",
           "MEDGEN_QUIET": "1"}  # fmt: skip
    first = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "run" / "metrics.csv").exists():
            assert first.poll() is None, first.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.2)
        second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        assert f"in use by pid {first.pid}" in second.stderr
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 130, err
    assert "Ctrl-C" in err and "Traceback" not in err
    state = json.loads((tmp_path / "run" / "checkpoints" / "latest" / "state.json").read_text())
    assert 0 < state["step"] < 400
    again = subprocess.run([*cmd[:-3], "training.steps=" + str(state["step"] + 1), *cmd[-2:]],
                           env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert again.returncode == 0, again.stderr
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert rows[-1].split(",")[0] == str(state["step"] + 1)
    shutil.rmtree(tmp_path / "caches", ignore_errors=True)
