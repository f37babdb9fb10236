"""fit -> sample through the CLI's main for the conditionings and spaces beyond the default:
two co-registered modalities as a mode embedding (single-modality batches), a mask given as a
prior instead of generated, and the Haar wavelet space."""

import json

import numpy as np
import pytest
import SimpleITK as sitk
import yaml

from medgen.train.cli import main

TINY = [
    "model.channels=16,32",
    "model.attention_levels=false,false",
    "training.steps=3",
    "training.batch_size=4",
    "training.warmup_steps=1",
    "training.log_every=1",
    "task.eval_samples=4",
    "data.eval_split=train",
]


def write(path, array):
    image = sitk.GetImageFromArray(np.asarray(array, dtype=np.float32))
    image.SetSpacing((1.0, 1.0, 2.0))
    sitk.WriteImage(image, str(path))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """Three subjects with t1 and flair (one CSV row per modality) and lesion masks."""
    root = tmp_path_factory.mktemp("modes")
    rows = ["subject,image,mask,class,split,modality"]
    _, y, x = np.mgrid[:10, :16, :16]
    body = ((y - 8) ** 2 + (x - 8) ** 2 < 30).astype(np.float32)
    for s in range(3):
        mask = np.zeros((10, 16, 16), np.uint8)
        mask[3:6, 6:9, 6:9] = 1
        write(root / f"m{s}.nii.gz", mask)
        for m, gain in (("t1", 100.0), ("flair", 40.0)):
            write(root / f"{m}{s}.nii.gz", body * (gain + 10 * s) + 5 * mask * (m == "flair"))
            rows.append(f"s{s},{m}{s}.nii.gz,m{s}.nii.gz,,train,{m}")
    (root / "subjects.csv").write_text("\n".join(rows) + "\n")
    recipe = dict(out=str(root / "cache"), sources=[str(root / "subjects.csv")], n_bins=2,
                  size=16, class_from="mask", min_lesion_voxels=2)  # fmt: skip
    (root / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["cache", str(root / "recipe.yaml"), "--quiet"]) == 0
    manifest = json.loads((root / "cache" / "manifest.json").read_text())
    assert manifest["modalities"] == ["flair", "t1"] and manifest["item_shape"] == [2, 16, 16]
    return root


def fit_and_sample(root, name, *overrides, sample=()):
    run, out = root / name, root / name / "s"
    assert main(["fit", "jsddpm", f"data.cache={root / 'cache'}", *TINY, *overrides,
                 "--out", str(run), "--quiet"]) == 0  # fmt: skip
    assert main(["sample", str(run), "--steps", "2", "--per-token", "1", "--out", str(out),
                 "--no-nifti", "--quiet", *sample]) == 0  # fmt: skip
    return np.load(out / "samples.npz"), json.loads((run / "data.json").read_text())


def test_modalities_as_a_mode_embedding_in_single_modality_batches(cache):
    samples, data = fit_and_sample(
        cache, "modes", "data.modality_as=mode", "data.group_by_mode=true",
        "data.oversample=1", sample=("--modes", "1"),
    )  # fmt: skip
    assert data["channels"] == ["image"] and data["n_modes"] == 2
    assert samples["images"].shape == (4, 1, 16, 16)  # 2 bins x 2 classes, mode 1 only
    assert set(samples["mode"].tolist()) == {1}


def test_both_modalities_as_channels_and_the_mask_as_a_prior(cache):
    samples, data = fit_and_sample(
        cache, "prior", "task.generate=image", "task.priors=mask",
        sample=("--priors-from", f"{cache / 'cache'}:train"),
    )  # fmt: skip
    assert data["channels"] == ["flair", "t1"]
    assert samples["images"].shape == (4, 2, 16, 16) and "masks" not in samples
    assert main(["sample", str(cache / "prior"), "--steps", "2", "--out",
                 str(cache / "prior" / "s2")]) == 2  # fmt: skip


def test_the_wavelet_space(cache):
    samples, _ = fit_and_sample(cache, "wavelet", "task.space.kind=wavelet", "task.clip_x0=null")
    assert samples["images"].shape == (4, 2, 16, 16) and np.isfinite(samples["images"]).all()
