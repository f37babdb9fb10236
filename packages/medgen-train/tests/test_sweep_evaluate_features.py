"""A sweep's evaluate section with ``@key`` references to each run's config (the autoencoder
given on the sweep's command line), FID / KID cells with their intervals in ``sweep.md``, and
a changed evaluate section re-evaluating without retraining or re-sampling."""

import json
import os
import subprocess
import sys

import pytest
import yaml

from medgen.train.config.tiny import TINY
from medgen.train.errors import ConfigError
from medgen.train.sweeps.references import resolve_references
from medgen.train.sweeps.run import _check, evaluation, evaluation_dir
from medgen.train.sweeps.spec import read_sweep

CONFIG = {"task": {"space": {"kind": "latent", "autoencoder": "runs/vae", "chunks": 1},
                   "tokens": True, "priors": []},
          "training": {"seed": 7}}  # fmt: skip


def sweep(path, *args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "medgen.train.cli", "sweep", str(path), *map(str, args)],
        capture_output=True, text=True, env=env,
    )  # fmt: skip


def test_references_are_replaced_by_the_config_values():
    assert resolve_references("autoencoder:@task.space.autoencoder", CONFIG, "w") == (
        "autoencoder:runs/vae")  # fmt: skip
    assert resolve_references("random:@training.seed", CONFIG, "w") == "random:7"
    assert resolve_references("@task.tokens/@task.space.chunks", CONFIG, "w") == "true/1"
    assert resolve_references("user@host:x", CONFIG, "w") == "user@host:x"  # no dotted key


@pytest.mark.parametrize(
    "text, message",
    [
        ("autoencoder:@task.space.autoencodr",
         "@task.space.autoencodr: the run's config has no key 'task.space.autoencodr' (keys "
         "under task.space: autoencoder, chunks, kind)"),
        ("@model.channels",
         "@model.channels: the run's config has no key 'model' (keys under the config: task, "
         "training)"),
        ("@task.space", "@task.space is a section of the run's config, not a value"),
        ("@task.priors", "@task.priors is empty in the run's config; set it for the sweep, "
         "e.g. task.priors=... on the command line"),
    ],
)  # fmt: skip
def test_bad_references_are_one_line_naming_the_key(text, message):
    with pytest.raises(ConfigError) as err:
        resolve_references(text, CONFIG, "s.yaml: run a: evaluate.features")
    assert str(err.value) == f"s.yaml: run a: evaluate.features: {message}"


def test_the_bundled_sbldm_grid_evaluates_on_the_autoencoder_given_at_sweep_time(tmp_path):
    s = read_sweep("sbldm_ablation", overrides=["data.cache=c", "task.space.autoencoder=runs/ae"])
    configs = _check(s)
    requests = [evaluation(s, r, configs[r.fit]) for r in s.runs]
    assert all(q["features"] == ["autoencoder:runs/ae"] for q in requests)
    assert {"FID=distribution.0.planes.2d.fid", "KID=distribution.0.planes.2d.kid"} <= set(
        s.columns
    )
    other = read_sweep("sbldm_ablation", overrides=["data.cache=c", "task.space.autoencoder=b"])
    assert evaluation(other, other.runs[0], _check(other)[()])["features"] == ["autoencoder:b"]
    a, b = requests[0], evaluation(other, other.runs[0], _check(other)[()])
    assert evaluation_dir(tmp_path, dict(a)) == evaluation_dir(tmp_path, a)
    assert evaluation_dir(tmp_path, a) != evaluation_dir(tmp_path, b)


def test_a_bad_reference_is_one_line_naming_the_key_and_writes_nothing(tmp_path):
    spec = {"config": "quickstart", "runs": {"base": {}},
            "evaluate": {"features": ["autoencoder:@task.space.autoencoder"]}}  # fmt: skip
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    proc = sweep(tmp_path / "s.yaml", "--out", tmp_path / "sw", *TINY)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert (
        f"{tmp_path / 's.yaml'}: run base: evaluate.features: @task.space.autoencoder: the run's "
        "config has no key 'task.space.autoencoder'" in lines[0]
    ), lines[0]
    assert not (tmp_path / "sw").exists()


@pytest.mark.parametrize(
    "evaluate, message",
    [
        ({"features": "random:0"}, "evaluate.features: expected a list of extractor specs"),
        ({"features": [""]}, "evaluate.features: expected a list of extractor specs"),
        ({"bootstrap": 1}, "evaluate.bootstrap: expected an integer >= 2, got 1"),
        ({"seed": True}, "evaluate.seed: expected an integer >= 0, got True"),
        ({"reference": 3}, "evaluate.reference: expected CACHE[:split] or null"),
    ],
)  # fmt: skip
def test_bad_evaluate_values_are_one_line_naming_the_file_and_key(tmp_path, evaluate, message):
    spec = {"config": "quickstart", "runs": {"base": {}}, "evaluate": evaluate}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError) as err:
        read_sweep(tmp_path / "s.yaml")
    assert str(err.value).startswith(f"{tmp_path / 's.yaml'}: {message}"), str(err.value)


def _fmt(v):
    return f"{v:.4g}"


def test_fid_kid_cells_carry_their_intervals_and_a_new_evaluate_section_reuses_the_fit(
    tmp_path, tmp_path_factory
):
    env = {**os.environ, "MEDGEN_CACHE_DIR": str(tmp_path_factory.mktemp("caches"))}
    spec = {
        "config": "quickstart",
        "overrides": list(TINY),
        "runs": {"base": {}},
        "sample": ["sample.steps=2", "sample.per_token=4"],  # > 8 samples: 8-d random features
        "evaluate": {"features": ["random:@training.seed"], "bootstrap": 20},
        "columns": ["overall.n", "FID=distribution.0.planes.2d.fid",
                    "KID=distribution.0.planes.2d.kid", "distribution.0.planes.2d.fid.bca.0"],
    }  # fmt: skip
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    out = tmp_path / "sw"
    proc = sweep(tmp_path / "s.yaml", "--out", out, "--quiet", env=env)
    assert proc.returncode == 0, proc.stderr
    row = json.loads((out / "sweep.json").read_text())["runs"][0]
    assert row["evaluate"]["features"] == ["random:0"]  # training.seed of the run's config
    first = out / row["evaluation"]
    assert first.name.startswith("evaluation-") and first.parent.name == "samples-base"
    ev = json.loads((first / "evaluation.json").read_text())
    assert ev["request"]["features"] == ["random:0"]
    planes = ev["distribution"][0]["planes"]["2d"]
    md = (out / "sweep.md").read_text()
    assert "| run | overall.n | FID | KID | distribution.0.planes.2d.fid.bca.0 |" in md
    fid, kid = planes["fid"], planes["kid"]
    cells = [f"{_fmt(m['estimate'])} [{_fmt(m['bca'][0])}, {_fmt(m['bca'][1])}]"
             for m in (fid, kid)]  # fmt: skip
    assert (
        f"| base | {ev['overall']['n']} | {cells[0]} | {cells[1]} | {_fmt(fid['bca'][0])} |" in md
    )
    assert row["values"]["FID=distribution.0.planes.2d.fid"]["percentile"] == fid["percentile"]
    assert "FID = `distribution.0.planes.2d.fid`" in md and "95% BCa" in md

    weights = next((out / "base" / "checkpoints").glob("step_*/model.safetensors"))
    npz = out / "base" / "samples-base" / "samples.npz"
    stamps = weights.stat().st_mtime_ns, npz.stat().st_mtime_ns
    spec["evaluate"]["bootstrap"] = 30  # another evaluate section: a new evaluation only
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    again = sweep(tmp_path / "s.yaml", "--out", out, "--quiet", env=env)
    assert again.returncode == 0, again.stderr
    row2 = json.loads((out / "sweep.json").read_text())["runs"][0]
    assert row2["evaluation"] != row["evaluation"] and (first / "evaluation.json").is_file()
    assert json.loads((first / "evaluation.json").read_text()) == ev  # left as it was
    ev2 = json.loads((out / row2["evaluation"] / "evaluation.json").read_text())
    assert ev2["distribution"][0]["planes"]["2d"]["fid"]["n_boot"] == 30
    assert (weights.stat().st_mtime_ns, npz.stat().st_mtime_ns) == stamps  # no refit, resample
