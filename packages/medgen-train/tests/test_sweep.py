"""``medgen-train sweep``: an ablation file -> fits (shared where only sampling differs) ->
samples -> evaluations -> one table whose cells are the runs' own numbers; bad files are one
line before anything is written."""

import json
import os
import subprocess
import sys

import pytest
import yaml

from medgen.train.config.tiny import TINY as TINY_RUN

TINY = list(TINY_RUN)


def sweep(path, *args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "medgen.train.cli", "sweep", str(path), *map(str, args)],
        capture_output=True, text=True, env=env,
    )  # fmt: skip


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return {**os.environ, "MEDGEN_CACHE_DIR": str(tmp_path_factory.mktemp("caches"))}


def test_sweep_end_to_end(tmp_path, env):
    spec = {
        "config": "quickstart",
        "overrides": TINY,
        "runs": {
            "base": {},
            "fewer_steps": {"sample": ["sample.steps=1"]},
        },
        "grid": {"training.lr": [0.001]},
        "sample": ["sample.steps=2", "sample.per_token=1"],
        "evaluate": {"bootstrap": 20},
        "columns": ["overall.ssim.mean", "overall.n", "fit.loss", "sample.seconds_per_sample",
                    "distribution.0.planes.mean.fid.estimate"],
    }  # fmt: skip
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    out = tmp_path / "sw"
    proc = sweep(tmp_path / "s.yaml", "--out", out, "--quiet", env=env)
    assert proc.returncode == 0, proc.stderr
    table = json.loads((out / "sweep.json").read_text())
    rows = {r["run"]: r for r in table["runs"]}
    assert list(rows) == ["base", "fewer_steps", "training.lr=0.001"]
    # sampling-only runs share the fit; the grid run trains its own
    assert rows["base"]["fit_dir"] == rows["fewer_steps"]["fit_dir"] == str(out / "base")
    assert rows["training.lr=0.001"]["fit_dir"] == str(out / "training.lr=0.001")
    assert sorted(p.name for p in out.iterdir() if (p / "config.yaml").is_file()) == [
        "base", "training.lr=0.001"]  # fmt: skip
    for r in rows.values():  # every cell is the run's own number
        ev = json.loads((out / r["evaluation"] / "evaluation.json").read_text())
        assert r["values"]["overall.ssim.mean"] == ev["overall"]["ssim"]["mean"]
        assert r["values"]["overall.n"] == ev["overall"]["n"]
        assert r["values"]["distribution.0.planes.mean.fid.estimate"] is None
    samples = json.loads((out / "base" / "samples-fewer_steps" / "manifest.json").read_text())
    assert samples["settings"]["steps"] == 1
    assert rows["base"]["values"]["fit.loss"] == rows["fewer_steps"]["values"]["fit.loss"]
    md = (out / "sweep.md").read_text()
    assert md.count("\n| ") == 4 and "Empty cells" in md and "distribution.0" in md
    again = sweep(tmp_path / "s.yaml", "--out", out, "--quiet", env=env)  # resumes: reuses all
    assert again.returncode == 0, again.stderr
    assert json.loads((out / "sweep.json").read_text())["runs"] == table["runs"]


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"config": "quickstart", "runs": {"a": {}}, "colour": 1}, "unknown key 'colour'"),
        ({"runs": {"a": {}}}, "config: name the fit config"),
        ({"config": "quickstart"}, "no run to make"),
        ({"config": "quickstart", "runs": {"a": {"fit": ["training.lr=-1"]}}}, "run a: "),
        ({"config": "quickstart", "runs": {"a": {"sample": ["training.lr=1"]}}}, "not a sample"),
        ({"config": "quickstart", "runs": {"a b": {}}}, "run name 'a b'"),
        ({"config": "quickstart", "grid": {"training.lr": []}}, "grid: expected"),
        ({"config": "quickstart", "runs": {"a": {}}, "evaluate": {"n": 1}}, "evaluate: unknown"),
    ],
)
def test_bad_sweep_files_are_one_line_and_write_nothing(tmp_path, spec, message):
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    proc = sweep(tmp_path / "s.yaml", "--out", tmp_path / "sw")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "s.yaml" in lines[0], proc.stderr
    assert not (tmp_path / "sw").exists()


def test_the_readme_sweep_file_is_valid(tmp_path):
    """The README's ablation.yaml parses, and every run's config (sample keys included)
    validates: 5 runs, 4 fits (heun_25 samples baseline's)."""
    from pathlib import Path

    from medgen.train.sweeps.run import _check
    from medgen.train.sweeps.spec import read_sweep

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("# ablation.yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "ablation.yaml").write_text(block)
    s = read_sweep(tmp_path / "ablation.yaml")
    assert [r.name for r in s.runs] == [
        "baseline", "v_prediction", "heun_25", "task.cutmix_prob=0.25", "task.cutmix_prob=0.5"]  # fmt: skip
    assert len(_check(s)) == 4 and s.fits()[()] == "baseline"


def test_the_bundled_sbldm_ablation_checks_and_plans_eight_fits():
    """E2.1-E2.4 one factor at a time: 11 rows, the 3 early-stop rows sample the baseline."""
    from medgen.train.sweeps.run import _check
    from medgen.train.sweeps.spec import read_sweep

    s = read_sweep("sbldm_ablation", overrides=["data.cache=somewhere"])
    assert len(s.runs) == 11 and len(_check(s)) == 8
    assert all(s.fits()[r.fit] == "baseline" for r in s.runs if r.name.startswith("E2.4"))
    assert s.overrides[-1] == "data.cache=somewhere"
