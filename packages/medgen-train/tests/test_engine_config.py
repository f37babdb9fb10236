"""YAML configs validated against the typed schema; dotted overrides; `medgen-train fit`."""

import csv
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from medgen.train.config import apply_overrides, from_mapping, load_config, to_dict
from medgen.train.errors import ConfigError
from medgen.train.fit_command import FitConfig, read_fit_config
from medgen.train.settings import EngineSettings

EXAMPLE = Path(__file__).parents[1] / "configs" / "jsddpm_quickstart.yaml"


def test_example_config_loads_and_round_trips(tmp_path):
    cfg = read_fit_config(EXAMPLE)
    assert cfg.training.lr == 1e-3 and cfg.model.attention_levels == (False, False, True)
    assert cfg.data.z_range == (40, 139) and cfg.diffusion.min_snr_gamma == 5.0
    path = tmp_path / "resolved.yaml"
    path.write_text(yaml.safe_dump(to_dict(cfg)))
    assert load_config(FitConfig, path) == cfg


def test_dotted_overrides_are_typed():
    cfg = read_fit_config(
        EXAMPLE,
        [
            "training.lr=1e-4",
            "training.amp=bf16",
            "training.compile=true",
            "training.betas=0.8,0.99",
            "model.channels=16,32",
            "diffusion.min_snr_gamma=none",
            "run.dir=/tmp/x",
        ],
    )
    assert cfg.training.lr == 1e-4 and cfg.training.amp == "bf16" and cfg.training.compile
    assert cfg.training.betas == (0.8, 0.99) and cfg.model.channels == (16, 32)
    assert cfg.diffusion.min_snr_gamma is None and cfg.run.dir == "/tmp/x"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("training.lrr=1", "unknown config key 'training.lrr'; known keys under 'training'"),
        ("trainin.lr=1", "unknown config key 'trainin'"),
        ("training.lr=fast", "training.lr: expected float, got 'fast'"),
        ("training.steps=1.5", "training.steps: expected int"),
        ("training.compile=maybe", "training.compile: expected a boolean"),
        ("training.lr.x=1", "training.lr is not a section"),
        ("training=1", "training: is a section"),
        ("training.amp=fp8", "training.amp: expected one of"),
        ("training", "must look like key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        read_fit_config(EXAMPLE, [override])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("training: {lr: fast}", "training.lr: expected float, got 'fast'"),
        ("training: {steps: true}", "training.steps: expected int"),
        ("training: {learning_rate: 1}", "unknown config key 'training.learning_rate'"),
        ("model: {channels: 32}", "model.channels: expected a list"),
        ("training: [1, 2]", "training: expected a mapping"),
        ("- a", "expected a mapping of sections"),
        ("optimizer: adamw", "unknown config key 'optimizer'"),
    ],
)
def test_bad_yaml_names_file_and_key(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(FitConfig, path)
    assert str(path) in str(info.value)


def test_yaml_floats_written_without_a_dot_are_accepted(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("training: {lr: 1e-4, weight_decay: 0}\n")  # YAML 1.1: '1e-4' is a str
    cfg = load_config(FitConfig, path)
    assert cfg.training.lr == 1e-4 and cfg.training.weight_decay == 0.0


def test_flat_dataclasses_still_work():
    s = apply_overrides(EngineSettings(), ["lr=0.5", "steps=3"])
    assert s.lr == 0.5 and s.steps == 3
    assert from_mapping(EngineSettings, {"lr": 2}) == dataclasses.replace(EngineSettings(), lr=2.0)


def test_fit_cli_rejects_a_bad_key_before_writing(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "medgen.train", "fit", str(EXAMPLE), "--out", str(out)]
    proc = subprocess.run([*cmd, "training.lrr=1"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "unknown config key 'training.lrr'" in proc.stderr
    assert not out.exists()


@pytest.mark.slow
def test_fit_cli_trains_then_resumes(tmp_path):
    out = tmp_path / "run"
    tiny = [
        "data.size=16",
        "data.n_bins=4",
        "model.channels=32,32",
        "model.attention_levels=false,false",
        "training.batch_size=4",
        "training.log_every=2",
        "training.eval_every=2",
        "diffusion.eval_samples=8",
    ]
    env = {**os.environ, "MEDGEN_CACHE_DIR": str(tmp_path / "cache"), "MEDGEN_QUIET": "1"}
    cmd = [sys.executable, "-m", "medgen.train", "fit", str(EXAMPLE), "--out", str(out), *tiny]
    first = subprocess.run([*cmd, "training.steps=4"], capture_output=True, text=True, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["training"]["steps"] == 4 and saved["model"]["channels"] == [32, 32]
    again = subprocess.run([*cmd, "training.steps=6"], capture_output=True, text=True, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "step 6 (resumed from 4)" in again.stdout
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [r["step"] for r in rows] == ["2", "4", "6"]
    assert {f"loss_t{k}" for k in range(10)} <= rows[0].keys()
    evals = list(csv.DictReader((out / "eval.csv").open()))
    assert [r["step"] for r in evals] == ["2", "4", "6"] and "x0_psnr_t0" in evals[0]
    assert (out / "checkpoints" / "latest").resolve().name == "step_00000006"
