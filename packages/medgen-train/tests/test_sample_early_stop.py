"""``sample.early_stop`` / ``--early-stop`` (seed 004's adaptive sampling) reaches the sampler:
a batch stops when the criterion says so, the manifest says after how many steps, and without
it every step runs. The criterion itself is tested in medgen-models; here a stand-in that
stops at a chosen step proves the wiring (a 2-step model's updates never shrink, so the real
criterion would rightly never stop it)."""

import json
from typing import ClassVar

import numpy as np
import pytest

from medgen.models import samplers
from medgen.train.cli import main
from medgen.train.config.tiny import TINY


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("early")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDGEN_CACHE_DIR", str(root / "caches"))
        assert main(["fit", "quickstart", *TINY, "--out", str(root / "run"), "--quiet"]) == 0
        yield root


def sample(root, name, *flags, trajectory=0):
    out = root / name
    assert main(["sample", str(root / "run"), "--steps", "20", "--n", "4", "--batch-size", "2",
                 "--no-nifti", "--trajectory", str(trajectory), "--out", str(out), "--quiet",
                 *flags]) == 0  # fmt: skip
    return json.loads((out / "manifest.json").read_text()), np.load(out / "samples.npz")["images"]


class StopAtStep(samplers.EarlyStop):
    """Stops after step 4 (0-based) whatever the updates; records the threshold it got."""

    thresholds: ClassVar[list[float]] = []

    def __call__(self, i, t, x, x_next):
        StopAtStep.thresholds.append(self.threshold)
        if i == 4:
            self.stopped_at, self.stopped_t = i, float(t)
            return True
        return False


def test_early_stop_ends_batches_early_and_says_so(run, monkeypatch):
    full, a = sample(run, "full")
    assert full["steps_taken"] == [20, 20] and full["settings"]["early_stop"] is None
    assert StopAtStep.thresholds == []
    monkeypatch.setattr(samplers, "EarlyStop", StopAtStep)
    early, b = sample(run, "early", "--early-stop", "0.25")
    assert early["settings"]["early_stop"] == 0.25 and set(StopAtStep.thresholds) == {0.25}
    assert early["steps_taken"] == [5, 5]
    assert np.isfinite(b).all() and not np.array_equal(a, b)


def test_bad_early_stop_is_one_line(run, capsys):
    assert main(["sample", str(run / "run"), "--early-stop", "0", "--out", str(run / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sample.early_stop" in err[0] and not (run / "x").exists()


def test_trajectories_of_early_stopped_batches_end_where_they_stopped(run, monkeypatch):
    """Frames after the stop were never computed: the trajectory keeps the ones reached (a
    missing frame crashed the write of every early-stopped sample with a trajectory)."""
    monkeypatch.setattr(samplers, "EarlyStop", StopAtStep)
    sample(run, "early_traj", "--early-stop", "0.25", trajectory=2)
    with np.load(run / "early_traj" / "trajectory.npz") as t:
        assert t["steps"].tolist() == [0, 4] and t["x0"].shape[:2] == (2, 2)
        assert t["index"].tolist() == [0, 1] and np.isfinite(t["x0"]).all()
