"""The ``controlnet`` task: a ControlNet branch trained over a frozen diffusion run from its run
directory, through the CLI (in-process for speed; one subprocess end to end)."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from medgen.train.cli import main
from medgen.train.config.tiny import TINY as TINY_RUN

BASE_TINY = list(TINY_RUN)
DATA = ["data.recipe.size=16", "data.recipe.n_bins=4"]
STEPS = ["training.steps=2", "training.batch_size=4", "training.warmup_steps=1"]


def tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


def run_cache(run: Path) -> str:
    """The cache a run trained on (from its data.json)."""
    return json.loads((run / "checkpoints" / "latest" / "data.json").read_text())["cache"]


def control_config(root: Path, base: Path, **task) -> Path:
    path = root / f"control_{len(list(root.glob('control_*.yaml')))}.yaml"
    body = {
        "data": {"recipe": "mni152", "eval_split": "train"},
        "task": {"kind": "controlnet", "base": str(base), "checkpoint": "latest", **task},
        "training": {"log_every": 1},
    }
    path.write_text(yaml.safe_dump(body))
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("controlnet")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDGEN_CACHE_DIR", str(root / "caches"))
        assert main(["fit", "quickstart", *BASE_TINY, "--out", str(root / "base"), "--quiet"]) == 0
        yield root


@pytest.fixture
def in_base(base, monkeypatch):
    monkeypatch.setenv("MEDGEN_CACHE_DIR", str(base / "caches"))
    return base


def test_only_the_branch_is_trained_and_checkpointed_and_the_base_is_untouched(in_base, capsys):
    root = in_base
    before = tree_hash(root / "base")
    cfg = control_config(root, root / "base", control=["labels"], roi_labels=[1], roi_weight=4.0,
                         contrastive_weight=0.1)  # fmt: skip
    out = root / "ctl"
    assert main(["fit", str(cfg), *DATA, *STEPS, "--out", str(out), "--quiet"]) == 0
    assert tree_hash(root / "base") == before  # read, never written
    ckpt = out / "checkpoints" / "latest"
    for name in ("model.safetensors", "ema.safetensors"):
        keys = set(load_file(str(ckpt / name)))
        assert keys and all(k.startswith("controlnet.") for k in keys), sorted(keys)[:3]
    base_weights = load_file(str(root / "base" / "checkpoints" / "latest" / "ema.safetensors"))
    branch = load_file(str(ckpt / "model.safetensors"))
    # initialised from the base's encoder, then trained: close to the base, not equal
    w = "down_blocks.0.resnets.0.conv1.conv.weight"
    a, b = branch[f"controlnet.net.{w}"], base_weights[f"network.net.{w}"]
    assert not torch.equal(a, b) and (a - b).abs().max() < 0.1
    metrics = (out / "metrics.csv").read_text().splitlines()
    assert "loss_contrastive" in metrics[0]
    state = json.loads((ckpt / "state.json").read_text())
    assert state["step"] == 2


def test_a_controlnet_run_samples_with_control_maps_from_a_cache(in_base, capsys):
    root = in_base
    cfg = control_config(root, root / "base", control=["mask"])
    out = root / "ctl_mask"
    assert main(["fit", str(cfg), *DATA, *STEPS, "--out", str(out), "--quiet"]) == 0
    code = main(["sample", str(out), "--n", "3", "--steps", "3", "--quiet",
                 "--priors-from", f"{run_cache(out)}:train"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    manifest = json.loads(next((out / "samples").glob("*/manifest.json")).read_text())
    assert manifest["n"] == 3 and manifest["base"]["checkpoint"] == "step_00000002"
    assert manifest["base"]["sha256"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"task": {"base": "nowhere"}}, "task.base: nowhere: no such run directory"),
        (
            {"model": {"channels": [16, 16], "attention_levels": [False, False]}},
            "model.channels: [16, 16] here, [16, 32] in the base",
        ),
        ({"task": {"control": ["flair"]}}, "task.control: channel 'flair' is not in the data"),
        ({"task": {"roi_weight": 3.0}}, "roi_weight: 3.0 needs task.roi_labels"),
        ({"data": {"recipe": {"size": 8}}}, "data: the ControlNet's data differ from its base's"),
    ],
)
def test_bad_controlnet_configs_are_one_line_before_anything_is_written(
    in_base, capsys, change, message
):
    root = in_base
    cfg = control_config(root, root / "base")
    body = yaml.safe_load(cfg.read_text())
    for section, values in change.items():
        if section == "data" and "recipe" in values:
            body["data"]["recipe"] = {"kind": "slices", **_mni152(), **values["recipe"]}
            continue
        body.setdefault(section, {}).update(values)
    cfg.write_text(yaml.safe_dump(body))
    out = root / "refused"
    data = [] if "data" in change else DATA
    code = main(["fit", str(cfg), *data, *STEPS, "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err
    assert not out.exists()


def _mni152() -> dict:
    from medgen.train.tasks.data import recipe_preset

    preset = recipe_preset("mni152")
    preset.pop("kind", None)
    return {**preset, "n_bins": 4}


def test_a_resume_over_a_retrained_base_is_refused(in_base, capsys, tmp_path):
    root = in_base
    base = tmp_path / "base"
    shutil.copytree(root / "base", base)
    cfg = control_config(tmp_path, base, control=["mask"])
    out = tmp_path / "ctl"
    assert main(["fit", str(cfg), *DATA, *STEPS, "--out", str(out), "--quiet"]) == 0
    assert main(["fit", "quickstart", *BASE_TINY, "training.steps=3", "--out", str(base),
                 "--quiet"]) == 0  # fmt: skip
    code = main(["fit", str(cfg), *DATA, "training.steps=4", "training.batch_size=4",
                 "training.warmup_steps=1", "--out", str(out), "--quiet"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and "now holds other weights" in err, err


def test_the_bundled_controlnet_config_fits_and_samples_in_a_subprocess(base, tmp_path):
    """The commands a user types, end to end (a new process each): the bundled ``controlnet``
    config over a run, and its samples' control maps from the run's own cache (``:train``)."""
    exe = shutil.which("medgen-train")
    cmd = [exe] if exe else [sys.executable, "-m", "medgen.train"]
    env = {**os.environ, "MEDGEN_QUIET": "1", "MEDGEN_CACHE_DIR": str(base / "caches")}
    outputs = []
    for args in (
        ["fit", "controlnet", f"task.base={base / 'base'}", *DATA, *STEPS,
         "training.eval_every=0", "--out", tmp_path / "run"],
        ["sample", tmp_path / "run", "--n", "2", "--steps", "2", "--priors-from", ":train"],
        ["evaluate", tmp_path / "run" / "samples" / "step_00000002-euler2-seed0"],
    ):  # fmt: skip
        proc = subprocess.run(
            [*cmd, *map(str, args)], capture_output=True, text=True, env=env, timeout=600
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        outputs.append(proc.stdout)
    assert "fit: controlnet on" in outputs[0] and "over frozen base" in outputs[0], outputs
    assert "sample: 2 samples" in outputs[1] and "control Dice" in outputs[2], outputs


def _controlled(base: Path, **task):
    from medgen.train.tasks.controlnet import ControlledModel, ControlNetConfig
    from medgen.train.tasks.data import DataDescription
    from medgen.train.tasks.networks import NETWORKS

    description = DataDescription.from_json(
        (base / "base" / "checkpoints" / "latest" / "data.json").read_text()
    )
    cfg = ControlNetConfig(base=str(base / "base"), checkpoint="latest", **task)
    return ControlledModel.from_base(cfg, NETWORKS["unet"](), description, torch.device("cpu"))


def test_roi_weights_and_the_contrastive_term_by_hand(base):
    m = _controlled(base, control=["labels"], roi_labels=[1], roi_weight=4.0,
                    contrastive_weight=0.5, contrastive_margin=0.2)  # fmt: skip
    mask = torch.zeros((2, 1, 16, 16), dtype=torch.uint8)
    mask[0, 0, 2:6, 3:7] = 1  # a 4x4 ROI in sample 0, none in sample 1
    batch = {"mask": mask}
    x0 = torch.zeros((2, 2, 16, 16))
    w = m.voxel_weights(batch, None, x0)
    assert w.shape == (2, 1, 16, 16) and w.sum() == 2 * 256 + 3 * 16
    assert torch.equal(w[0, 0, 2:6, 3:7], torch.full((4, 4), 4.0)) and w[1].eq(1).all()
    valid = torch.ones((2, 1, 16, 16))
    valid[:, :, :, 8:] = 0  # padding: weights vanish there
    assert m.voxel_weights(batch, valid, x0)[:, :, :, 8:].eq(0).all()

    out = torch.zeros((2, 2, 16, 16))
    other = torch.zeros((2, 2, 16, 16))
    other[0, :, 2:6, 3:7] = 0.3  # inside the ROI: squared difference 0.09 < margin 0.2
    other[:, :, 12:, :] = 0.1  # outside: squared difference 0.01 on 4 of 16 rows
    seen = {}

    def fake_net(x, t, cond):
        seen["control"] = cond.control
        return other

    from medgen.models import Conditioning

    terms = m.extra_losses(fake_net, batch, x0, out, torch.zeros(2), Conditioning())
    outside0 = (0.01 * 2 * 64) / (2 * (256 - 16))  # sample 0: 64 outside voxels x 2 channels
    outside1 = 0.01 * 64 / 256
    expected = 0.5 * ((outside0 + (0.2 - 0.09)) + outside1) / 2
    torch.testing.assert_close(terms["contrastive"], torch.tensor(expected), rtol=1e-5, atol=0)
    assert seen["control"].eq(-1).all()  # the ROI label replaced by background everywhere
