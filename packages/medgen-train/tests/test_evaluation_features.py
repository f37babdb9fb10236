"""Feature extractors from local weights: weights the test writes itself, read back with their
sha256; the wrong architecture, a missing file and a bad spec are one clear error each."""

import hashlib

import numpy as np
import pytest
import torch

from medgen.train.evaluation.features import (
    Extractor,
    FeatureError,
    medicalnet_model,
    resnet2d_model,
)


def test_random_extractor_is_fixed_and_labelled():
    x = np.random.default_rng(0).normal(size=(3, 2, 16, 16))
    a, b = Extractor("random:0").extract(x), Extractor("random:0").extract(x)
    assert a["2d"].shape == (3, 1, 8) and np.array_equal(a["2d"], b["2d"])
    assert not np.allclose(Extractor("random:1").extract(x)["2d"], a["2d"])
    assert "not comparable" in Extractor("random:0").protocol["note"]
    assert Extractor("random:0").extract(np.zeros((2, 1, 8, 8, 8)))["3d"].shape == (2, 1, 8)


@pytest.mark.parametrize("depth", [10, 18])
def test_medicalnet_weights_round_trip(tmp_path, depth):
    torch.manual_seed(0)
    model = medicalnet_model(depth).eval()
    path = tmp_path / "medicalnet.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    ext = Extractor(f"medicalnet:{path}")
    assert ext.protocol["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert ext.protocol["architecture"] == f"monai resnet{depth} 3D (MedicalNet)"
    x = np.random.default_rng(1).normal(size=(2, 1, 16, 16, 16)).astype(np.float32)
    feats = ext.extract(x)["3d"]
    t = torch.as_tensor(x)
    z = (t - t.flatten(1).mean(1)[:, None, None, None, None]) / t.flatten(1).std(1)[
        :, None, None, None, None
    ]
    with torch.no_grad():
        want = model(z).double().numpy()
    assert feats.shape == (2, 1, 512)
    assert np.allclose(feats[:, 0], want, atol=1e-5)


def test_resnet2d_25d_planes(tmp_path):
    path = tmp_path / "r50.pt"
    torch.save(resnet2d_model().state_dict(), path)
    ext = Extractor(f"resnet2d:{path}", max_slices=2)
    out = ext.extract(np.zeros((1, 1, 6, 8, 10), np.float32))
    assert sorted(out) == ["XY", "YZ", "ZX"] and all(v.shape == (1, 2, 2048) for v in out.values())
    assert ext.protocol["planes"] == ["XY", "ZX", "YZ"]


def test_bad_weights_and_specs(tmp_path):
    with pytest.raises(FeatureError, match=r"nothing\.pt: no such weights file"):
        Extractor(f"medicalnet:{tmp_path / 'nothing.pt'}")
    path = tmp_path / "r50.pt"
    torch.save(resnet2d_model().state_dict(), path)
    with pytest.raises(FeatureError, match="not a MedicalNet resnet10/18/50"):
        Extractor(f"medicalnet:{path}")
    mn = tmp_path / "mn.pt"
    torch.save(medicalnet_model(10).state_dict(), mn)
    with pytest.raises(FeatureError, match="not a 2D ResNet-50"):
        Extractor(f"resnet2d:{mn}")
    sd = medicalnet_model(10).state_dict()
    sd["conv1.weight"] = torch.zeros(64, 2, 7, 7, 7)  # a 2-channel MedicalNet
    torch.save(sd, tmp_path / "two.pt")
    with pytest.raises(FeatureError, match="1 of another shape"):
        Extractor(f"medicalnet:{tmp_path / 'two.pt'}")
    (tmp_path / "junk.pt").write_text("junk")
    with pytest.raises(FeatureError, match="not a torch state dict"):
        Extractor(f"medicalnet:{tmp_path / 'junk.pt'}")
    with pytest.raises(FeatureError, match="unknown extractor 'inception'"):
        Extractor("inception:x")
    with pytest.raises(FeatureError, match="medicalnet features are 3D"):
        Extractor(f"medicalnet:{mn}").extract(np.zeros((1, 1, 8, 8)))


def test_medicalnet_through_the_evaluate_metrics_with_its_protocol(tmp_path):
    from medgen.train.commands.evaluate import _distribution

    torch.manual_seed(0)
    path = tmp_path / "resnet10.pt"
    torch.save(medicalnet_model(10).state_dict(), path)
    rng = np.random.default_rng(0)
    gen = rng.normal(size=(520, 1, 4, 4, 4)).astype(np.float32)
    ref = (rng.normal(size=(530, 1, 4, 4, 4)) * 1.5).astype(np.float32)
    block = _distribution(Extractor(f"medicalnet:{path}"), gen, ref, "c:test", 2, 0, True, 2)
    p = block["protocol"]
    assert p["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (p["n_generated"], p["n_reference"], p["dim"], p["planes"]) == (520, 530, 512, ["3d"])
    fid = block["planes"]["3d"]["fid"]
    assert fid["estimate"] > 0 and fid["n_boot"] == 2 and fid["bca"] is not None
