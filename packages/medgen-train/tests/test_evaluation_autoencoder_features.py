"""``autoencoder:RUN_DIR[:CHECKPOINT]`` features: the encoder's deterministic latent, per channel
its spatial mean and std, with the run's weights sha256 in the protocol; against a toy loader
(the extractor's maths) and a real tiny autoencoder run (the loader, offline), 2D and 3D; bad
runs and mismatched samples are one line each."""

import hashlib
import json

import numpy as np
import pytest
import torch

from medgen.train.cli import main
from medgen.train.evaluation.features import Extractor, FeatureError
from medgen.train.tasks.autoencoder import load as ae_load

TINY_VAE = [
    "task.network.channels=8,8",
    "task.network.latent_channels=2",
    "task.network.norm_num_groups=4",
    "task.discriminator.channels=8",
    "training.steps=2",
    "training.batch_size=4",
    "training.warmup_steps=1",
    "training.eval_every=0",
    "training.checkpoint_every=0",
    "task.eval_samples=4",
    "data.recipe.size=16",
]


@pytest.fixture
def toy(monkeypatch, toy_runs):
    monkeypatch.setattr(ae_load, "load_autoencoder", toy_runs.load)
    return toy_runs


@pytest.mark.parametrize("dims", [2, 3])
def test_features_are_the_pooled_latent_mean_and_std(tmp_path, toy, dims):
    run = toy.make_run(tmp_path / "ae", spatial_dims=dims, latent_channels=3)
    ext = Extractor(f"autoencoder:{run}")
    sha = hashlib.sha256((run / "weights.safetensors").read_bytes()).hexdigest()
    p = ext.protocol
    assert p["weights_sha256"] == sha and p["dim"] == 6 and p["checkpoint"] == "best"
    x = np.random.default_rng(0).normal(size=(5, 2, *(8,) * dims)).astype(np.float32)
    feats = ext.extract(x)[f"{dims}d"]
    net, _ = toy.load(run)
    with torch.no_grad():
        z = net.encode(torch.as_tensor(x)).double().numpy().reshape(5, 3, -1)
    want = np.concatenate([z.mean(-1), z.std(-1)], axis=1)  # numpy: population std
    assert feats.shape == (5, 1, 6) and np.allclose(feats[:, 0], want, atol=1e-5)


def test_checkpoint_suffix_and_bad_input(tmp_path, toy):
    run = toy.make_run(tmp_path / "ae", spatial_dims=2)
    assert Extractor(f"autoencoder:{run}:step_1").protocol["checkpoint"] == "step_1"
    assert Extractor(f"autoencoder:{run}:latest").protocol["run_dir"] == str(run)
    with pytest.raises(FeatureError, match=r"nothing: no such run directory"):
        Extractor(f"autoencoder:{tmp_path / 'nothing'}")
    (tmp_path / "other").mkdir()
    with pytest.raises(FeatureError, match="other: no checkpoint to use"):
        Extractor(f"autoencoder:{tmp_path / 'other'}")
    ext = Extractor(f"autoencoder:{run}")
    with pytest.raises(
        FeatureError,
        match=r"encodes 2D inputs \(N, 2, H, W\); these samples are "
        r"\[1, 1, 8, 8\]",
    ):
        ext.extract(np.zeros((1, 1, 8, 8), np.float32))
    with pytest.raises(FeatureError, match=r"encodes 2D inputs"):
        ext.extract(np.zeros((1, 2, 8, 8, 8), np.float32))
    with pytest.raises(FeatureError, match="not divisible|divisible"):
        ext.extract(np.zeros((1, 2, 7, 8), np.float32))


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("aefeat")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDGEN_CACHE_DIR", str(root / "caches"))
        assert main(["fit", "vae_mni152", *TINY_VAE, "--out", str(root / "vae"), "--quiet"]) == 0
        yield root / "vae"


def test_a_real_autoencoder_run_offline(vae_run):
    ext = Extractor(f"autoencoder:{vae_run}:latest")
    p = ext.protocol
    state = json.loads((vae_run / "checkpoints" / "step_00000002" / "state.json").read_text())
    weights = next(
        f
        for f in ("ema.safetensors", "model.safetensors")
        if (vae_run / "checkpoints" / "step_00000002" / f).is_file()
    )
    got = hashlib.sha256((vae_run / "checkpoints" / "step_00000002" / weights).read_bytes())
    assert p["weights_sha256"] == got.hexdigest() == state["files"][weights]
    assert p["dim"] == 4 and p["step"] == 2 and "kl encoder, 2D" in p["architecture"]
    x = np.tanh(np.random.default_rng(0).normal(size=(3, 1, 16, 16))).astype(np.float32)
    feats = ext.extract(x)["2d"]
    net, _ = ae_load.load_autoencoder(vae_run, "latest")
    with torch.no_grad():
        z = net.encode(torch.as_tensor(x)).double().numpy().reshape(3, 2, -1)
    assert np.allclose(feats[:, 0], np.concatenate([z.mean(-1), z.std(-1)], 1), atol=1e-5)
    assert np.isfinite(feats).all() and feats[:, 0, 2:].min() >= 0


def test_a_run_of_another_kind_is_one_line(tmp_path):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDGEN_CACHE_DIR", str(tmp_path / "caches"))
        assert (
            main(
                [
                    "fit",
                    "quickstart",
                    "model.channels=16,32",
                    "training.steps=2",
                    "model.attention_levels=false,false",
                    "training.batch_size=2",
                    "training.warmup_steps=1",
                    "task.eval_samples=2",
                    "data.eval_split=train",
                    "data.recipe.size=16",
                    "--out",
                    str(tmp_path / "dm"),
                    "--quiet",
                ]
            )
            == 0
        )
    with pytest.raises(FeatureError) as info:
        Extractor(f"autoencoder:{tmp_path / 'dm'}:latest")
    msg = str(info.value)
    assert "a task.kind 'diffusion' run, not an autoencoder run" in msg and "\n" not in msg


def test_evaluate_with_autoencoder_features_end_to_end(vae_run, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDGEN_CACHE_DIR", str(vae_run.parent / "caches"))
    tiny = [
        "model.channels=16,32",
        "model.attention_levels=false,false",
        "training.steps=2",
        "training.batch_size=4",
        "training.warmup_steps=1",
        "task.eval_samples=4",
        "data.eval_split=train",
        "data.recipe.size=16",
        "task.generate=image",
    ]
    assert main(["fit", "quickstart", *tiny, "--out", str(tmp_path / "dm"), "--quiet"]) == 0
    assert (
        main(
            [
                "sample",
                str(tmp_path / "dm"),
                "--steps",
                "2",
                "--n",
                "8",
                "--out",
                str(tmp_path / "s"),
                "--no-nifti",
                "--quiet",
            ]
        )
        == 0
    )
    spec = f"autoencoder:{vae_run}:latest"
    assert (
        main(
            [
                "evaluate",
                str(tmp_path / "s"),
                "--features",
                spec,
                "--bootstrap",
                "5",
                "--out",
                str(tmp_path / "ev"),
                "--quiet",
            ]
        )
        == 0
    )
    result = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    (block,) = result["distribution"]
    assert block["protocol"]["extractor"] == "autoencoder" and block["protocol"]["dim"] == 4
    assert block["protocol"]["weights_sha256"] == Extractor(spec).protocol["weights_sha256"]
    assert np.isfinite(block["planes"]["2d"]["fid"]["estimate"])
