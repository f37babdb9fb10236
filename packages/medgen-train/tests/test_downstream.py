"""``medgen-train downstream``: segmentation trained on real / synthetic / mixed data, scored by
Dice on held-out real subjects. Dice against MONAI's DiceMetric and closed forms, intervals
against scipy's bootstrap, the CLI end to end in a subprocess (its per-item Dice recomputed
from the saved weights), determinism, the 3D path, and bad input as one line each."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from monai.metrics import DiceMetric
from safetensors.torch import load_file
from scipy import stats

from medgen.data import CacheDataset, CacheRecipe, build_cache
from medgen.data.cache.atomic import file_sha256
from medgen.data.synthetic.phantoms import write_demo_dataset
from medgen.train.cli import main
from medgen.train.commands.downstream import run_downstream
from medgen.train.evaluation.downstream import (
    ArrayItems,
    batch_order,
    binarize,
    build_network,
    item_interval,
    per_item_dice,
)
from medgen.train.evaluation.downstream_config import load_downstream_config

SLICES = dict(kind="slices", orientation="RAS", z_from="foreground", foreground_threshold=-0.8,
              n_bins=4, size=16, class_from="mask", min_lesion_voxels=2)  # fmt: skip
# 6 subjects, 3 with lesions: test gets 2 (one with lesions), val 1, train 3
SPLIT = dict(val_fraction=0.17, test_fraction=0.34)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The demo data set (6 subjects at 4 mm) as a 16 x 16 slices cache and a volumes cache."""
    root = tmp_path_factory.mktemp("downstream")
    table = write_demo_dataset(root / "demo", 6, spacing_mm=4.0, dicom_subjects=0)
    build_cache(CacheRecipe(out=str(root / "slices"), sources=(str(table),), **SLICES, **SPLIT),
                quiet=True)  # fmt: skip
    build_cache(
        CacheRecipe(out=str(root / "volumes"), kind="volumes", sources=(str(table),),
                    orientation="RAS", spacing=(8.0, 8.0, 8.0), shape=(8, 16, 16),
                    class_from="mask", min_lesion_voxels=1, **SPLIT),
        quiet=True,
    )  # fmt: skip
    return root


def write_samples(out, cache, split="val", masks=True, train_split="train", n=None):
    """A samples directory in `medgen-train sample`'s format (samples.npz + manifest.json),
    its items taken from ``cache:split`` (images, masks as the thresholded mask channel)."""
    ds = CacheDataset(cache, split)
    n = n or len(ds)
    images = np.stack([ds[i]["image"].numpy() for i in range(n)])
    arrays = {"images": images, "z_bin": np.zeros(n, np.int64), "class_id": np.zeros(n, np.int64),
              "token": np.zeros(n, np.int64)}  # fmt: skip
    if masks:
        arrays["masks"] = np.stack([ds[i]["mask"][0].numpy() > 0 for i in range(n)]).astype(
            np.uint8
        )
    out.mkdir(parents=True)
    np.savez(out / "samples.npz", **arrays)
    manifest = {
        "kind": "samples",
        "channels": ["image", "mask"] if masks else ["image"],
        "request_hash": "test",
        "data": {"kind": ds.kind, "cache": str(cache), "train_split": train_split},
        "files": {"samples.npz": {"sha256": file_sha256(out / "samples.npz")}},
    }
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / ".medgen-run.json").write_text(json.dumps({"kind": "samples"}))
    return out


def config(path, **values):
    path.write_text(yaml.safe_dump(values))
    return path


def test_dice_matches_monai_and_closed_forms():
    a = np.zeros((2, 8, 8), bool)
    b = np.zeros((2, 8, 8), bool)
    a[0, 1:5, 1:5] = True  # 16 voxels
    b[0, 2:6, 2:6] = True  # 16 voxels, 9 shared
    a[1, 0, 0] = True  # vs empty
    pred = np.stack([a[0], a[1], b[0] & False, b[0]])
    ref = np.stack([b[0], b[1], b[0] & False, b[0]])
    np.testing.assert_allclose(per_item_dice(pred, ref), [2 * 9 / 32, 0.0, 1.0, 1.0])
    rng = np.random.default_rng(0)
    for shape in ((6, 12, 12), (4, 6, 8, 8)):
        p, r = rng.random(shape) > 0.6, rng.random(shape) > 0.7
        p[0], r[0] = False, False  # both empty: 1.0 (MONAI with ignore_empty=False)
        r[1] = False  # only the prediction: 0.0
        metric = DiceMetric(include_background=True, reduction="none", ignore_empty=False)
        want = metric(torch.from_numpy(p[:, None]).float(), torch.from_numpy(r[:, None]).float())
        np.testing.assert_allclose(per_item_dice(p, r), want[:, 0].numpy(), rtol=1e-6)


def test_threshold_on_the_sigmoid_and_generated_masks_at_zero():
    logits = torch.tensor([-0.1, 0.0, 0.1, 1.3, 1.4])  # logit(0.8) = 1.386
    assert binarize(logits, 0.5).tolist() == [False, True, True, True, True]
    assert binarize(logits, 0.8).tolist() == [False, False, False, False, True]
    channel = np.array([[[-1.0, -0.2, 0.0, 0.3, 0.9]]], np.float32)  # a mask channel in [-1, 1]
    _, mask = ArrayItems(np.zeros((1, 1, 1, 5), np.float32), channel)[0]
    assert mask[0, 0].tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]


def test_item_interval_matches_scipy_bootstrap():
    rng = np.random.default_rng(1)
    values = np.clip(rng.beta(4, 2, 60), 0, 1)
    values[:10] = 1.0  # the lesion-free items predicted empty
    ci = item_interval(values, 4000, seed=0)
    assert ci["estimate"] == values.mean() and ci["n"] == 60 and ci["n_boot"] == 4000
    for method, key in (("percentile", "percentile"), ("BCa", "bca")):
        ref = stats.bootstrap((values,), np.mean, n_resamples=4000, method=method,
                              random_state=np.random.default_rng(5)).confidence_interval  # fmt: skip
        np.testing.assert_allclose(ci[key], [ref.low, ref.high], atol=0.006)
    assert item_interval(values[:1], 100, 0) is None
    # by subject (6 subjects of 10 items): the bootstrap of the subjects' means
    subjects = np.repeat([f"s{i}" for i in range(6)], 10)
    by_subject = item_interval(values, 4000, seed=0, groups=subjects)
    means = values.reshape(6, 10).mean(axis=1)
    assert by_subject["estimate"] == pytest.approx(means.mean()) and by_subject["n_resampled"] == 6
    ref = stats.bootstrap((means,), np.mean, n_resamples=4000, method="percentile",
                          random_state=np.random.default_rng(5)).confidence_interval  # fmt: skip
    np.testing.assert_allclose(by_subject["percentile"], [ref.low, ref.high], atol=0.01)
    assert (
        by_subject["percentile"][1] - by_subject["percentile"][0]
        > ci["percentile"][1] - ci["percentile"][0]
    )  # values sorted into subjects: the subject-level interval is the wider one
    assert item_interval(values, 100, 0, groups=np.repeat(["a"], 60)) is None


def test_bundled_demo_config_and_one_word_mode(tmp_path):
    cfg = load_downstream_config("demo")
    assert cfg.mode == ("real", "synthetic", "mixed") and cfg.test.endswith(":test")
    one = config(tmp_path / "one.yaml", real="c", test="c:test", mode="real")
    assert load_downstream_config(one).mode == ("real",)
    assert load_downstream_config(one, ["mode=real,mixed", "synthetic=s"]).mode == ("real", "mixed")


def test_batches_are_seeded_epochs():
    order = batch_order(10, 7, 4, seed=3)
    assert order.shape == (7, 4)
    flat = order.reshape(-1)
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))
    assert np.array_equal(order, batch_order(10, 7, 4, seed=3))
    assert not np.array_equal(order, batch_order(10, 7, 4, seed=4))


def cli(*args, cwd):
    env = {**os.environ, "MEDGEN_QUIET": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "medgen.train.cli", "downstream", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, env=env)  # fmt: skip


def test_cli_real_and_mixed_end_to_end(data, tmp_path):
    synthetic = write_samples(tmp_path / "samples", data / "slices")
    cfg = config(
        tmp_path / "ds.yaml", real=str(data / "slices"), synthetic=str(synthetic),
        mode=["real", "mixed"], test=f"{data / 'slices'}:test", steps=6, batch_size=8,
        bootstrap=300, out="out",
    )  # fmt: skip
    proc = cli(cfg, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out"
    result = json.loads((out / "downstream.json").read_text())
    test = CacheDataset(data / "slices", "test")
    n_train = len(CacheDataset(data / "slices", "train"))
    n_synthetic = len(CacheDataset(data / "slices", "val"))
    assert list(result["modes"]) == ["real", "mixed"]
    real, mixed = result["modes"]["real"], result["modes"]["mixed"]
    assert (real["n_train_real"], real["n_train_synthetic"]) == (n_train, 0)
    assert (mixed["n_train_real"], mixed["n_train_synthetic"]) == (n_train, n_synthetic)
    masks = torch.stack([test[i]["mask"] > 0 for i in range(len(test))]).float()
    images = torch.stack([test[i]["image"] for i in range(len(test))])
    foreground = masks.flatten(1).any(1).numpy()
    assert 0 < foreground.sum() < len(test)  # the test split has lesion and lesion-free items
    for mode, r in result["modes"].items():
        # the per-item Dice, recomputed from the saved weights on the test split (MONAI)
        net = build_network("segresnet", 2, 1, (8, 16, 32), 1).eval()
        net.load_state_dict(load_file(out / f"model_{mode}.safetensors"))
        with torch.no_grad():
            pred = (torch.sigmoid(net(images)) >= 0.5).float()
        want = DiceMetric(reduction="none", ignore_empty=False)(pred, masks)[:, 0].numpy()
        np.testing.assert_allclose(r["per_item_dice"], want, atol=1e-6)
        assert r["n_test"] == len(test) and r["n_test_foreground"] == foreground.sum()
        # intervals over test items: estimate, n and width as scipy's bootstrap of the same
        per_item = np.array(r["per_item_dice"])
        for key, subset in (("dice", per_item), ("dice_foreground", per_item[foreground])):
            ci = r[key]
            assert ci["n"] == len(subset) and ci["estimate"] == pytest.approx(subset.mean())
            ref = stats.bootstrap((subset,), np.mean, n_resamples=2000, method="percentile",
                                  random_state=np.random.default_rng(0)).confidence_interval  # fmt: skip
            np.testing.assert_allclose(ci["percentile"], [ref.low, ref.high], atol=0.03)
    diff = np.array(mixed["per_item_dice"]) - np.array(real["per_item_dice"])
    assert mixed["dice_minus_real"]["estimate"] == pytest.approx(diff.mean())
    p = result["protocol"]
    assert p["test"]["data"].endswith("slices:test") and p["real"]["data"].endswith("slices:train")
    assert p["test"]["sha256"] == file_sha256(data / "slices" / "manifest.json")
    assert p["synthetic"]["sha256"] == file_sha256(synthetic / "samples.npz")
    assert p["steps"] == 6 and p["seed"] == 0 and p["network"]["spatial_dims"] == 2
    assert p["generator_leak_check"].startswith("checked")
    md = (out / "downstream.md").read_text()
    assert "| real | " in md and "| mixed | " in md and "Dice [95% CI]" in md
    assert json.loads((out / ".medgen-run.json").read_text())["kind"] == "downstream"
    assert {"downstream.json", "downstream.md", "config.yaml"} <= set(
        json.loads((out / "manifest.json").read_text())["files"]
    )
    again = cli(cfg, cwd=tmp_path)
    assert again.returncode == 0 and "already holds" in again.stdout
    other = cli(cfg, "steps=7", cwd=tmp_path)
    assert other.returncode == 2 and "holds another downstream experiment" in other.stderr


def test_same_seed_same_dice_and_modes_independent(data, tmp_path):
    synthetic = write_samples(tmp_path / "samples", data / "slices")
    cfg = config(
        tmp_path / "ds.yaml", real=str(data / "slices"), synthetic=str(synthetic),
        mode=["real", "synthetic"], test=f"{data / 'slices'}:test", steps=4, batch_size=8,
        bootstrap=50, network="unet", widths=[4, 8],
    )  # fmt: skip
    say = lambda *_: None  # noqa: E731
    a = run_downstream(cfg, out=tmp_path / "a", quiet=True, say=say)
    b = run_downstream(cfg, out=tmp_path / "b", quiet=True, say=say)
    alone = run_downstream(cfg, ["mode=synthetic"], out=tmp_path / "c", quiet=True, say=say)
    seed1 = run_downstream(cfg, ["seed=1"], out=tmp_path / "d", quiet=True, say=say)
    ra, rb, rc, rd = (json.loads((d / "downstream.json").read_text())["modes"]
                      for d in (a, b, alone, seed1))  # fmt: skip
    assert ra["real"]["per_item_dice"] == rb["real"]["per_item_dice"]
    assert ra["real"]["dice"] == rb["real"]["dice"]
    for mode in ("real", "synthetic"):
        wa, wb = (
            load_file(a / f"model_{mode}.safetensors"),
            load_file(b / f"model_{mode}.safetensors"),
        )
        assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # a mode's result does not depend on the modes run before it
    ws, wc = (
        load_file(a / "model_synthetic.safetensors"),
        load_file(alone / "model_synthetic.safetensors"),
    )
    assert all(torch.equal(ws[k], wc[k]) for k in ws)
    assert rc["synthetic"]["per_item_dice"] == ra["synthetic"]["per_item_dice"]
    wd = load_file(seed1 / "model_real.safetensors")
    assert not all(torch.equal(wa[k], wd[k]) for k in wa if k in wd)
    assert rd["real"]["dice"]["seed"] == 1


def test_volumes_in_3d(data, tmp_path):
    cfg = config(tmp_path / "ds.yaml", real=str(data / "volumes"), test=f"{data / 'volumes'}:test",
                 steps=2, batch_size=2, bootstrap=20, widths=[8, 16], resample="subjects")  # fmt: skip
    out = run_downstream(cfg, out=tmp_path / "o", quiet=True, say=lambda *_: None)
    result = json.loads((out / "downstream.json").read_text())
    test = CacheDataset(data / "volumes", "test")
    r = result["modes"]["real"]
    assert result["protocol"]["network"]["spatial_dims"] == 3
    assert r["n_test"] == len(test) == 2 and r["n_train_real"] == 3
    assert r["dice"]["n"] == 2 and all(0.0 <= d <= 1.0 for d in r["per_item_dice"])
    assert r["dice"]["resampled"] == "test subjects" and r["dice"]["n_resampled"] == 2
    weights = load_file(out / "model_real.safetensors")
    assert any(w.ndim == 5 for w in weights.values())  # 3D convolutions


def fails(capsys, out, *argv, match):
    code = main(["downstream", *map(str, argv), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and match in err, err
    assert not out.exists(), f"{out} was written"
    return err


def test_bad_input_one_line_nothing_written(data, tmp_path, capsys):
    slices = data / "slices"
    good = dict(real=str(slices), test=f"{slices}:test", steps=1, batch_size=4)
    out = tmp_path / "out"

    def case(match, *overrides, **values):
        return fails(capsys, out, config(tmp_path / "c.yaml", **{**good, **values}), *overrides,
                     match=match)  # fmt: skip

    case("test: nope: not a MedGen cache", test="nope:test")
    case("real: split 'nosuch' of", real=f"{slices}:nosuch")
    case("test: split 'tset' of", test=f"{slices}:tset")
    case("is the training split named by real", test=f"{slices}:train")
    case("network: expected one of segresnet, unet, got 'vnet'", network="vnet")
    case("widths: SegResNet doubles", widths=[8, 24])
    case("every size must divide by 32", widths=[8, 16, 32, 64, 128, 256])
    case("unknown config key 'epochs'", epochs=3)
    case("synthetic: mode ['mixed'] trains on synthetic", mode="mixed")
    case("threshold: expected a number > 0 and < 1", "threshold=1.5")
    no_masks = write_samples(tmp_path / "nomask", slices, masks=False)
    case("without a mask channel", mode=["mixed"], synthetic=str(no_masks))
    case("synthetic: nowhere: not a complete samples directory", mode=["mixed"],
         synthetic="nowhere")  # fmt: skip
    changed = write_samples(tmp_path / "changed", slices)
    with np.load(changed / "samples.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    np.savez(changed / "samples.npz", **{**arrays, "masks": 1 - arrays["masks"]})
    case("samples.npz differs from its manifest", mode=["mixed"], synthetic=str(changed))
    small = write_samples(tmp_path / "vol", data / "volumes", split="train")
    case("samples are [1, 8, 16, 16]", mode=["synthetic"], synthetic=str(small))

    # a generator trained on the test subjects
    leaky = write_samples(tmp_path / "leaky", slices, train_split="test")
    test_subjects = json.loads((slices / "manifest.json").read_text())["splits"]["test"]["subjects"]
    err = case("with the generator's training split", mode=["synthetic"], synthetic=str(leaky))
    assert test_subjects[0] in err
    # a real training split of another cache that holds a test subject
    table = data / "demo" / "subjects.csv"
    build_cache(CacheRecipe(out=str(tmp_path / "resplit"), sources=(str(table),), **SLICES,
                            val_fraction=0.17, test_fraction=0.34, split_seed=1), quiet=True)  # fmt: skip
    resplit = json.loads((tmp_path / "resplit" / "manifest.json").read_text())
    shared = sorted(set(resplit["splits"]["train"]["subjects"]) & set(test_subjects))
    assert shared, "split_seed 1 should move a test subject into train"
    err = case("shares subject(s)", real=str(tmp_path / "resplit"))
    assert all(s in err for s in shared)

    # another command's directory is refused and left alone
    out.mkdir()
    (out / ".medgen-run.json").write_text(json.dumps({"kind": "fit"}))
    code = main(["downstream", str(config(tmp_path / "c.yaml", **good)), "--out", str(out)])
    assert code == 2 and "is a 'fit' directory" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [".medgen-run.json"]
