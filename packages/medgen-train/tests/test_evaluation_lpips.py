"""LPIPS from local weights (the VGG16 and heads files the test writes itself): per channel
PerceptualLoss' distance, averaged; zero for identical images; ``evaluate --lpips`` end to end
with its protocol; a missing weights file is one line."""

import json

import numpy as np
import pytest
import torch

from medgen.models.autoencoders.perceptual import LPIPS_CHANNELS, PerceptualLoss, vgg16_features
from medgen.train.cli import main
from medgen.train.config.tiny import TINY as TINY_RUN
from medgen.train.evaluation.lpips import LPIPS, lpips_nearest

TINY = list(TINY_RUN)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("lpips")
    torch.manual_seed(0)
    feats = vgg16_features(5)
    torch.save({f"features.{k}": v for k, v in feats.state_dict().items()}, root / "vgg16.pth")
    heads = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(LPIPS_CHANNELS)}
    torch.save(heads, root / "vgg.pth")
    return root


def test_distances_are_perceptual_loss_per_channel_averaged(weights):
    spec = f"{weights / 'vgg16.pth'},{weights / 'vgg.pth'}"
    metric = LPIPS(spec, 2)
    rng = np.random.default_rng(0)
    x = np.tanh(rng.normal(size=(3, 2, 16, 16))).astype(np.float32)
    y = np.tanh(rng.normal(size=(3, 2, 16, 16))).astype(np.float32)
    got = metric.distances(x, y)
    net = PerceptualLoss(weights / "vgg16.pth", weights / "vgg.pth", reduction="none")
    with torch.no_grad():
        tx, ty = torch.as_tensor(x), torch.as_tensor(y)
        want = (net(tx[:, :1], ty[:, :1]) + net(tx[:, 1:], ty[:, 1:])) / 2
    assert np.allclose(got, want.double().numpy(), rtol=1e-6)
    assert np.allclose(metric.distances(x, x), 0.0, atol=1e-7) and (got > 0).all()
    p = metric.protocol
    assert p["heads_sha256"] and p["note"] is None and len(p["weights_sha256"]) == 64
    assert "not comparable" in LPIPS(str(weights / "vgg16.pth"), 2).protocol["note"]
    out = lpips_nearest(metric, x, y[::-1], [2, 1, 0], [0, 5, 7])
    assert [r["index"] for r in out["per_sample"]] == [0, 5, 7]
    assert out["mean"] == pytest.approx(float(got.mean()))


def test_missing_weights_name_the_path(tmp_path):
    with pytest.raises(ValueError, match="nothing.pth"):
        LPIPS(str(tmp_path / "nothing.pth"), 2)


def test_evaluate_with_lpips(weights, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MEDGEN_CACHE_DIR", str(tmp_path / "caches"))
    assert main(["fit", "quickstart", *TINY, "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert (
        main(
            [
                "sample",
                str(tmp_path / "run"),
                "--steps",
                "2",
                "--n",
                "6",
                "--out",
                str(tmp_path / "s"),
                "--no-nifti",
                "--quiet",
            ]
        )
        == 0
    )
    spec = f"{weights / 'vgg16.pth'},{weights / 'vgg.pth'}"
    assert (
        main(
            [
                "evaluate",
                str(tmp_path / "s"),
                "--lpips",
                spec,
                "--out",
                str(tmp_path / "ev"),
                "--quiet",
            ]
        )
        == 0
    )
    result = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    lp = result["lpips"]
    assert lp["n"] == 6 and lp["mean"] > 0 and result["request"]["lpips"] == spec
    assert lp["protocol"]["weights"] == str(weights / "vgg16.pth")
    assert "LPIPS against the nearest real item" in (tmp_path / "ev" / "evaluation.md").read_text()
    capsys.readouterr()
    code = main(
        [
            "evaluate",
            str(tmp_path / "s"),
            "--lpips",
            str(tmp_path / "none.pth"),
            "--out",
            str(tmp_path / "ev2"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--lpips" in err and "none.pth" in err
    assert not (tmp_path / "ev2").exists()
