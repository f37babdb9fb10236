"""Latent diffusion (``task.space.kind: latent``): fit on a latent cache or on the pixel cache
(encoded on the fly) sees the same latents, the scale is applied once on the way in and
inverted on the way out, latents are never clamped, mismatches between the autoencoder and
the latent cache or the run are refused in one line, sample decodes (chunked or not); and the
whole path in subprocesses: fit an autoencoder -> encode -> fit -> sample -> evaluate."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from medgen.train.cli import main
from medgen.train.commands.sample import run_sample
from medgen.train.latents.autoencoder import AutoencoderRun
from medgen.train.latents.cache import encode_cache
from medgen.train.latents.dataset import LatentDataset
from medgen.train.latents.space import data_x0, encode_x0
from medgen.train.runs import TrainedRun
from medgen.train.tasks import TASKS
from medgen.train.tasks.diffusion.task import DiffusionModel

TINY = ["model.channels=16,32", "model.attention_levels=false,false", "training.steps=2",
        "training.batch_size=4", "training.warmup_steps=1", "training.log_every=1",
        "training.eval_every=2", "training.checkpoint_every=2", "task.eval_samples=4",
        "data.oversample=1", "--quiet"]  # fmt: skip


@pytest.fixture
def world(tmp_path, toy_runs):
    """A pixel cache (train / val / test), a toy autoencoder run, its latent cache."""
    pixel = toy_runs.make_cache(tmp_path / "data")
    ae = toy_runs.make_run(tmp_path / "ae")
    encode_cache(AutoencoderRun.open(ae), pixel, tmp_path / "lat", quiet=True)
    return SimpleNamespace(root=tmp_path, pixel=pixel, ae=ae, lat=tmp_path / "lat",
                           toys=toy_runs)  # fmt: skip


def _latent(ae: Path, checkpoint: str = "best") -> list[str]:
    return ["task.space.kind=latent", f"task.space.autoencoder={ae}", "task.clip_x0=null",
            f"task.space.checkpoint={checkpoint}"]  # fmt: skip


def _fit(cache: Path, out: Path, *extra: str, ae: Path | None = None) -> int:
    space = _latent(ae) if ae is not None else []
    return main(["fit", "lesions_demo", f"data.cache={cache}", *space, *TINY, *extra,
                 "--out", str(out)])  # fmt: skip


def test_fit_on_the_pixel_cache_and_on_the_latent_cache_sees_the_same_latents(world, monkeypatch):
    seen: dict[str, list] = {}
    real = DiffusionModel.encode

    def record(self, batch):
        x0, valid = real(self, batch)
        seen.setdefault(where, []).append(x0.detach().clone())
        return x0, valid

    monkeypatch.setattr(DiffusionModel, "encode", record)
    for where, cache in (("pixel", world.pixel), ("latent", world.lat)):
        assert _fit(cache, world.root / where, "training.eval_every=0", ae=world.ae) == 0
    first = seen["pixel"][0]
    assert first.shape == (4, 3, 8, 8) and first.abs().max() > 1  # never clamped
    torch.testing.assert_close(seen["latent"][0], first, rtol=1e-5, atol=1e-5)
    scales = [
        json.loads((world.root / w / "data.json").read_text())["latent"]["scale_factor"]
        for w in ("pixel", "latent")
    ]
    manifest = json.loads((world.lat / "manifest.json").read_text())
    assert scales[1] == manifest["latent"]["scale_factor"]
    assert scales[0] == pytest.approx(scales[1], rel=1e-6)
    std = torch.cat(seen["latent"]).std().item()  # scaled latents: about unit variance
    assert 0.5 < std < 2.0, std
    from safetensors import safe_open

    for where in ("pixel", "latent"):  # the frozen autoencoder is never checkpointed
        for name in ("model.safetensors", "ema.safetensors"):
            path = world.root / where / "checkpoints" / "latest" / name
            with safe_open(str(path), framework="pt") as fh:
                assert {k.split(".")[0] for k in fh.keys()} == {"network"}, (where, name)


def test_volumes_train_the_same_on_the_fly_and_from_the_latent_cache(tmp_path, toy_runs):
    """Padded volumes: the validity mask pooled to the latent grid, the same losses either way,
    and a sample decoded in chunks along depth."""
    pixel = toy_runs.make_cache(tmp_path / "data", kind="volumes", shape=(16, 24, 24))  # padded
    ae = toy_runs.make_run(tmp_path / "ae", spatial_dims=3, latent_channels=2)
    encode_cache(AutoencoderRun.open(ae), pixel, tmp_path / "lat", quiet=True)
    assert not LatentDataset(tmp_path / "lat", "train")[0]["valid"].all()
    small = ["training.batch_size=2", "task.eval_samples=2"]
    for name, cache in (("fly", pixel), ("cached", tmp_path / "lat")):
        assert _fit(cache, tmp_path / name, *small, ae=ae) == 0
    rows = [(tmp_path / n / "metrics.csv").read_text() for n in ("fly", "cached")]
    assert _losses(rows[0]) == pytest.approx(_losses(rows[1]), rel=1e-5)  # valid-masked losses
    code = main(["sample", str(tmp_path / "cached"), "--n", "2", "--steps", "2", "--chunks", "2",
                 "--quiet"])  # fmt: skip
    assert code == 0
    images = np.load(next((tmp_path / "cached" / "samples").glob("*/samples.npz")))["images"]
    assert images.shape == (2, 1, 16, 24, 24) and np.isfinite(images).all()


def _losses(csv: str) -> list[float]:
    lines = csv.strip().splitlines()
    col = lines[0].split(",").index("loss")
    return [float(line.split(",")[col]) for line in lines[1:]]


def _generator(run: Path, *overrides: str):
    from medgen.train.config.schema import apply_overrides, validate

    trained = TrainedRun.open(run, "latest")
    cfg = validate(apply_overrides(trained.config, list(overrides)))
    return TASKS["diffusion"].generator(cfg, trained.description, torch.device("cpu"))


def test_the_scale_is_applied_once_in_and_inverted_out_and_latents_are_not_clamped(world):
    assert _fit(world.lat, world.root / "run", ae=world.ae) == 0
    m = _generator(world.root / "run").model
    scale = json.loads((world.lat / "manifest.json").read_text())["latent"]["scale_factor"]
    net, _ = world.toys.load(world.ae)
    g = torch.Generator().manual_seed(0)
    z = 3 * torch.randn((2, 3, 8, 8), generator=g)  # raw latents well beyond [-1, 1]
    with torch.no_grad():
        np.testing.assert_allclose(
            encode_x0(m.space, m.layout, {"latent": z}), (z * scale).numpy(), rtol=1e-6
        )
        decoded = data_x0(m.space, m.layout, {"latent": z})
        np.testing.assert_allclose(decoded, net.decode(z).numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(m.space.decode(z * scale), decoded, rtol=1e-5, atol=1e-5)
        x = torch.rand((2, 2, 16, 16), generator=g) * 2 - 1
        np.testing.assert_allclose(m.space.encode(x), (net.encode(x) * scale).numpy(), rtol=1e-5)


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def _edit_manifest(cache: Path, **latent) -> None:
    path = cache / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["latent"].update(latent)
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    "case, message",
    [
        ("sha", "now holds other weights (sha256"),
        ("shape", "holds latents of shape [3, 4, 4], but the autoencoder of"),
        ("channels", "but {lat} holds latents of ['mask', 'image']"),
        ("in_channels", "task.generate: 1 channel(s) ['image'], but the autoencoder of"),
        ("clip", "clip_x0: clipping x0 applies to pixel space, not the 'latent' space"),
        ("pixel_space", "{lat} is a latent cache (medgen-train encode)"),
        ("no_autoencoder", "autoencoder: name the fit run directory"),
        ("mode", "data.modality_as: 'mode' needs the pixel cache; {lat} is a latent cache"),
        ("image_prior", "are image channels, which the latent cache {lat} does not hold"),
    ],
)
def test_mismatches_are_one_line_and_nothing_is_written(world, capsys, case, message):
    extra, ae = [], world.ae
    if case == "sha":
        world.toys.make_run(world.ae, seed=7)  # the autoencoder retrained in place
    elif case == "shape":
        _edit_manifest(world.lat, shape=[3, 4, 4])
    elif case == "channels":
        _edit_manifest(world.lat, channels=["mask", "image"])
    elif case == "in_channels":
        extra = ["task.generate=image"]
    elif case == "clip":
        extra = ["task.clip_x0=1.0"]
    elif case == "pixel_space":
        ae = None
    elif case == "no_autoencoder":
        extra = ["task.space.autoencoder="]
    elif case == "mode":
        extra = ["data.modality_as=mode"]
    elif case == "image_prior":
        extra = ["task.generate=mask", "task.priors=image"]
    out = world.root / "run"
    assert _fit(world.lat, out, *extra, ae=ae) == 2
    err = _one_line(capsys)
    assert message.format(lat=world.lat) in err, err
    if case == "sha":
        old = json.loads((world.lat / "manifest.json").read_text())["latent"]["autoencoder"]
        assert old["sha256"][:12] in err and AutoencoderRun.open(ae).sha256[:12] in err
    assert not out.exists()


def test_a_resume_or_a_sample_over_a_changed_autoencoder_or_scale_is_refused(world, capsys):
    run = world.root / "fly"
    assert _fit(world.pixel, run, ae=world.ae) == 0  # encoded on the fly
    stored = json.loads((run / "data.json").read_text())["latent"]
    assert stored["origin"] == "encoded on the fly" and stored["scale_split"] == "train"
    assert main(["sample", str(run), "--n", "2", "--steps", "2", "--quiet"]) == 0
    world.toys.make_run(world.ae, seed=5)
    assert _fit(world.pixel, run, "training.steps=3", ae=world.ae) == 2
    assert "now holds other weights" in _one_line(capsys)
    code = main(["sample", str(run), "--n", "2", "--steps", "3", "--quiet"])
    assert code == 2 and "now holds other weights" in _one_line(capsys)
    # a latent-cache run: the manifest's scale edited after training
    lat_run = world.root / "lat_run"
    world.toys.make_run(world.ae)  # seed 0 again: the weights the latent cache was made with
    assert _fit(world.lat, lat_run, ae=world.ae) == 0
    _edit_manifest(world.lat, scale_factor=0.5)
    assert _fit(world.lat, lat_run, "training.steps=3", ae=world.ae) == 2
    err = _one_line(capsys)
    assert "records the scale factor 0.5" in err and f"{stored['scale_factor']!r}" in err, err


def test_chunked_decoding_of_a_convolutional_decoder_equals_decoding_at_once(world):
    assert _fit(world.lat, world.root / "run", ae=world.ae) == 0
    kw = {"n": 3, "nifti": False, "quiet": True, "say": lambda *_: None}
    steps = ["sample.steps=2"]
    outs = [
        run_sample(world.root / "run", out=world.root / name, overrides=steps + extra, **kw)
        for name, extra in (
            ("whole", []),
            ("chunked", ["task.space.chunks=4", "task.space.overlap=1"]),  # reach 1: exact
            ("no_overlap", ["task.space.chunks=4", "task.space.overlap=0"]),
        )
    ]
    images = [np.load(o / "samples.npz")["images"] for o in outs]
    np.testing.assert_allclose(images[1], images[0], rtol=0, atol=1e-5)
    assert np.abs(images[2] - images[0]).max() > 1e-3  # the comparison can tell
    manifests = [json.loads((o / "manifest.json").read_text()) for o in outs]
    assert manifests[1]["decode"] == {"chunks": 4, "overlap": 1}
    assert manifests[0]["autoencoder"]["sha256"] == AutoencoderRun.open(world.ae).sha256
    assert manifests[0]["data"]["cache"] == str(world.pixel.absolute())  # evaluate's reference


def _cli() -> list[str]:
    exe = shutil.which("medgen-train")
    return [exe] if exe else [sys.executable, "-m", "medgen.train"]


@pytest.mark.slow
def test_autoencoder_encode_latent_fit_sample_evaluate_in_subprocesses(tmp_path):
    """The commands a user types, each in a new process: a tiny ``vae_mni152`` run, its
    latent cache, latent diffusion on it, samples decoded at once and in chunks, evaluate."""
    env = {**os.environ, "MEDGEN_QUIET": "1", "MEDGEN_CACHE_DIR": str(tmp_path / "caches"),
           "OMP_NUM_THREADS": "1"}  # fmt: skip
    steps = ["training.steps=2", "training.batch_size=4", "training.warmup_steps=1",
             "training.log_every=1", "training.eval_every=2", "training.checkpoint_every=2",
             "task.eval_samples=4"]  # fmt: skip

    def run(*args) -> str:
        proc = subprocess.run([*_cli(), *map(str, args)], capture_output=True, text=True,
                              env=env, timeout=600)  # fmt: skip
        assert proc.returncode == 0, (args, proc.stderr[-3000:])
        return proc.stdout

    data = ["data.recipe.size=16", "data.recipe.n_bins=4"]
    run("fit", "vae_mni152", *data, *steps, "task.network.channels=16,16",
        "task.network.latent_channels=2", "--out", tmp_path / "vae")  # fmt: skip
    cache = json.loads((tmp_path / "vae" / "data.json").read_text())["cache"]
    out = run("encode", tmp_path / "vae", "--cache", cache, "--out", tmp_path / "lat",
              "--checkpoint", "latest")  # fmt: skip
    assert "latent [2, 8, 8] of image" in out, out
    config = {
        "data": {"cache": str(tmp_path / "lat"), "eval_split": "train"},
        "model": {"channels": [16, 32], "attention_levels": [False, False]},
        "task": {
            "space": {"kind": "latent", "autoencoder": str(tmp_path / "vae"),
                      "checkpoint": "latest"},
            "generate": ["image"],
            "clip_x0": None,
            "strategy": {"kind": "rflow"},
        },
    }  # fmt: skip
    (tmp_path / "ldm.yaml").write_text(yaml.safe_dump(config))
    assert "fit: diffusion on" in run(
        "fit", tmp_path / "ldm.yaml", *steps, "--out", tmp_path / "ldm"
    )
    whole = tmp_path / "ldm" / "samples" / "whole"
    run("sample", tmp_path / "ldm", "--n", "2", "--steps", "2", "--out", whole)
    run("sample", tmp_path / "ldm", "--n", "2", "--steps", "2", "--chunks", "2", "--out",
        tmp_path / "ldm" / "samples" / "chunked")  # fmt: skip
    a = np.load(whole / "samples.npz")["images"]
    b = np.load(tmp_path / "ldm" / "samples" / "chunked" / "samples.npz")["images"]
    assert a.shape == b.shape == (2, 1, 16, 16) and np.isfinite(a).all() and np.isfinite(b).all()
    assert "evaluate: 2 samples vs" in run("evaluate", whole)
    bad = subprocess.run([*_cli(), "evaluate", str(whole), "--reference", f"{tmp_path / 'lat'}:train",
                          "--out", str(tmp_path / "ev")], capture_output=True, text=True, env=env)  # fmt: skip
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "a latent cache" in bad.stderr and not (tmp_path / "ev").exists()
    # MONAI's AutoencoderKL normalises with GroupNorm: every output voxel depends on the whole
    # latent, so chunked.py promises no bound for it (the toy test above checks exactness)
    from medgen.models.autoencoders import required_overlap
    from medgen.train.tasks.autoencoder.load import load_autoencoder

    net, _ = load_autoencoder(tmp_path / "vae", "latest")
    assert required_overlap(net.decode, torch.randn(1, 2, 32, 8), downsample=2) is None
    print("chunked vs whole decode, max |difference|:", float(np.abs(a - b).max()))


def test_a_controlnet_over_a_latent_run_is_refused(world, capsys):
    assert _fit(world.lat, world.root / "run", ae=world.ae) == 0
    cfg = world.root / "control.yaml"
    cfg.write_text(yaml.safe_dump({
        "data": {"cache": str(world.pixel)},
        "task": {"kind": "controlnet", "base": str(world.root / "run"), "checkpoint": "latest"},
    }))  # fmt: skip
    out = world.root / "control"
    assert main(["fit", str(cfg), "training.steps=2", "--out", str(out), "--quiet"]) == 2
    assert "diffuses in a latent space" in _one_line(capsys) and not out.exists()
