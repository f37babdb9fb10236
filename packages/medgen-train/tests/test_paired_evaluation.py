"""Paired evaluation (``sample --paired`` + ``evaluate``): the metric functions against
independent references (PSNR in closed form and torchmetrics, SSIM maps from torchmetrics),
the bootstrap over subjects, the thick -> thin baselines against thick_to_thin computed here,
and the whole path through the CLI on a tiny pairs cache and on a slices run with a mask
prior."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torchmetrics.functional.image import peak_signal_noise_ratio as tm_psnr
from torchmetrics.functional.image import structural_similarity_index_measure as tm_ssim

from medgen.data import (
    CacheDataset,
    CacheRecipe,
    PairVolumes,
    Volume,
    build_cache,
    thick_positions,
    thick_to_thin,
    write_nifti,
)
from medgen.train.cli import main
from medgen.train.config.tiny import TINY
from medgen.train.evaluation import metrics
from medgen.train.evaluation.interpolation import InterpolationBaselines
from medgen.train.evaluation.paired import (
    MSE_FLOOR,
    between_slices,
    masked_psnr,
    paired_tables,
    score_pair,
    ssim_map,
    subject_bootstrap,
)

THICKNESS = 3.0  # 3 thin slices of 1 mm: slab centres on thin slices 1, 4, 7, ...
DEPTHS = {"s0": 16, "s1": 13, "s2": 16, "s3": 14, "s4": 12}  # s3, s4: the test split
SPLITS = {"s0": "train", "s1": "train", "s2": "train", "s3": "test", "s4": "test"}
SIDE = 16
TINY_RUN = [o for o in TINY if not o.startswith("data.recipe.")]  # the caches are built here
RUN = [
    *TINY_RUN,
    "task.space.kind=pixel",  # no autoencoder run needed
    "task.encode_priors=false",
    "task.clip_x0=1",
    "model.norm_num_groups=8",
    "model.num_res_blocks=1",
    "training.amp=none",
    "training.batch_size=2",
    "training.eval_every=2",
    "training.checkpoint_every=2",
]


def tm_map(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """torchmetrics' SSIM map (Gaussian 11 taps, sigma 1.5, data range 2), interior only."""
    _, full = tm_ssim(torch.from_numpy(x)[None, None], torch.from_numpy(y)[None, None],
                      gaussian_kernel=True, sigma=1.5, kernel_size=11, data_range=2.0,
                      return_full_image=True)  # fmt: skip
    return full[0, 0].numpy()[tuple(slice(5, n - 5) for n in x.shape)]


def closed_psnr(x, y) -> float:
    mse = np.mean((np.asarray(x, np.float64) - np.asarray(y, np.float64)) ** 2)
    return 10 * math.log10(4.0 / max(mse, MSE_FLOOR))


# --- metric functions ---------------------------------------------------------------------------


def test_psnr_counts_valid_voxels_only_and_never_inf():
    rng = np.random.default_rng(0)
    x, y = rng.uniform(-1, 1, (2, 16, 8, 8)), rng.uniform(-1, 1, (2, 16, 8, 8))
    valid = np.zeros((1, 16, 8, 8), bool)
    valid[:, :11] = True
    x[:, 11:], y[:, 11:] = 1.0, -1.0  # padding that disagrees as much as it can
    value, clamped = masked_psnr(x, y, valid)
    assert value == pytest.approx(closed_psnr(x[:, :11], y[:, :11]), abs=1e-12) and not clamped
    ref = tm_psnr(torch.from_numpy(x[:, :11]), torch.from_numpy(y[:, :11]), data_range=2.0)
    assert value == pytest.approx(float(ref), abs=1e-6)  # torchmetrics: float32 range
    same, clamped = masked_psnr(y, y, valid)
    assert clamped and same == pytest.approx(10 * math.log10(4 / MSE_FLOOR)) and math.isfinite(same)


def test_ssim_3d_over_the_real_depth_and_2d_match_torchmetrics():
    rng = np.random.default_rng(1)
    truth = np.clip(rng.normal(0, 0.5, (2, 16, 14, 15)), -1, 1)
    pred = np.clip(truth + rng.normal(0, 0.3, truth.shape), -1, 1)
    valid = np.zeros((1, *truth.shape[1:]), bool)
    valid[:, :12] = True  # 12 real thin slices, 4 of padding
    pred[:, 12:], truth[:, 12:] = 1.0, -1.0
    got = score_pair(pred, truth, valid)["ssim"]
    want = np.mean([tm_map(pred[c, :12], truth[c, :12]).mean() for c in range(2)])
    assert got == pytest.approx(want, abs=1e-10)
    got2d = score_pair(pred[:, 0], truth[:, 0])["ssim"]
    assert got2d == pytest.approx(np.mean([tm_map(pred[c, 0], truth[c, 0]).mean()
                                           for c in range(2)]), abs=1e-10)  # fmt: skip
    # the same SSIM as nearest-real scoring's (medgen.train.evaluation.metrics.ssim)
    assert ssim_map(pred[0, :12], truth[0, :12]).mean() == pytest.approx(
        metrics.ssim(pred[0, :12], truth[0, :12]), abs=1e-12
    )
    with pytest.raises(ValueError, match="needs every side >= 11"):
        score_pair(pred[:, :10], truth[:, :10])


def test_between_slices_closed_form_and_their_scores():
    # 10 thin slices of 1 mm, 3 mm slabs: centres at thin slices 1, 4, 7 (u = (i - 1) / 3)
    u = thick_positions(10, 1.0, 3.0)
    between = between_slices(u, 3)
    assert np.flatnonzero(between).tolist() == [2, 3, 5, 6]
    rng = np.random.default_rng(2)
    truth = np.clip(rng.normal(0, 0.5, (1, 16, 12, 12)), -1, 1)
    pred = np.clip(truth + rng.normal(0, 0.2, truth.shape), -1, 1)
    mask = np.zeros(16, bool)
    mask[[2, 3, 6, 9, 10]] = True
    got = score_pair(pred, truth, None, mask)["between"]
    assert got["psnr"] == pytest.approx(closed_psnr(pred[:, mask], truth[:, mask]), abs=1e-12)
    inner = mask[5:11]  # the slices of the SSIM map's interior (depth 16 - 2 * 5)
    assert got["ssim"] == pytest.approx(tm_map(pred[0], truth[0])[inner].mean(), abs=1e-10)


def test_bootstrap_resamples_subjects_with_all_their_items():
    # subject a: items 0 and 10, subject b: 100. Subject draws give means 5, 36.7 or 100; an item
    # bootstrap would give means below 5 (items 0, 0, 0) in ~15% of replicates.
    out = subject_bootstrap([0.0, 10.0, 100.0], ["a", "a", "b"], n_boot=400, seed=0)
    assert out["estimate"] == pytest.approx(110 / 3)
    assert out["n_subjects"] == 2 and out["n_items"] == 3
    assert 5.0 - 1e-9 <= out["percentile"][0] and out["percentile"][1] <= 100.0
    assert 5.0 - 1e-9 <= out["bca"][0]
    assert subject_bootstrap([None, float("nan")], ["a", "b"]) is None
    one = subject_bootstrap([1.0, 3.0], ["a", "a"])  # one subject: a mean, no interval
    assert one["estimate"] == 2.0 and one["percentile"] is None and one["bca"] is None


def test_bootstrap_agrees_with_scipy_on_subject_means():
    from scipy.stats import bootstrap

    rng = np.random.default_rng(3)
    per_subject = rng.gamma(2.0, 3.0, 30)
    values = np.repeat(per_subject, 2) + np.tile([-0.5, 0.5], 30)  # two items each, same mean
    subjects = np.repeat([f"s{i}" for i in range(30)], 2)
    out = subject_bootstrap(values, subjects, n_boot=3000, seed=1)
    ref = bootstrap((per_subject,), np.mean, n_resamples=3000, method="BCa", random_state=2)
    lo, hi = ref.confidence_interval
    width = hi - lo
    assert abs(out["bca"][0] - lo) < 0.1 * width and abs(out["bca"][1] - hi) < 0.1 * width
    assert out["estimate"] == pytest.approx(per_subject.mean())


def test_tables_hold_means_and_paired_differences():
    recs = [{"model": {"psnr": m, "ssim": 0.5}, "linear": {"psnr": b, "ssim": 0.25}}
            for m, b in ((30.0, 20.0), (28.0, 25.0), (26.0, 21.0))]  # fmt: skip
    t = paired_tables(recs, ["a", "b", "c"], ["model", "linear"], n_boot=50)["all"]
    assert list(t) == ["model", "linear", "model - linear"]
    assert t["model"]["psnr"]["estimate"] == pytest.approx(28.0)
    assert t["model - linear"]["psnr"]["estimate"] == pytest.approx(6.0)
    assert t["model - linear"]["ssim"]["estimate"] == pytest.approx(0.25)


# --- a tiny pairs cache, the baselines, and the CLI ---------------------------------------------


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    """Five subjects of different depths (1 mm thin slices), 3 mm box slabs."""
    root = tmp_path_factory.mktemp("paired")
    rng = np.random.default_rng(0)
    rows = []
    for sid, d in DEPTHS.items():
        z, y, x = np.mgrid[:d, :SIDE, :SIDE]
        img = 100 * np.sin(z / 2.0 + y / 5.0) + 50 * np.cos(x / 3.0) + rng.normal(0, 5, z.shape)
        vol = Volume(img.astype(np.float32), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
        write_nifti(vol, root / f"{sid}.nii.gz")
        rows.append([sid, f"{sid}.nii.gz", SPLITS[sid]])
    with (root / "subjects.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["subject", "image", "split"])
        writer.writerows(rows)
    table = str(root / "subjects.csv")
    recipe = CacheRecipe(out=str(root / "cache"), kind="pairs", sources=(table,),
                         size=SIDE, in_plane="crop", thickness=THICKNESS)  # fmt: skip
    build_cache(recipe, quiet=True)
    return root


def test_baselines_follow_the_window_of_a_longer_volume(pairs):
    ds = CacheDataset(pairs / "cache", "train")
    items = PairVolumes(ds, depth=12)  # s0 and s2 have 16 thin slices: a centred window of 12
    base = InterpolationBaselines(items)
    i = int(np.flatnonzero(ds.subjects() == ds.subjects()[0])[0])
    raw = ds[i]
    n = raw["thin"].shape[1]
    assert n == 16
    got = base.item(i, items[i]["image"].numpy())
    assert got["window_start"] == 2 and got["depth"] == 16
    for kind in ("linear", "cubic"):
        want = thick_to_thin(raw["thick"].numpy(), n, 1.0, THICKNESS, kind=kind)[:, 2:14]
        np.testing.assert_allclose(got[kind], want, atol=1e-6)
    u = (np.arange(2, 14) - 1) / 3.0  # centres on thin slices 1, 4, 7, 10, 13
    want = (np.abs(u - np.round(u)) > 1e-6) & (u > 0) & (u < 4)
    assert got["between"].tolist() == want.tolist()


def cli(*args):
    done = subprocess.run([sys.executable, "-m", "medgen.train", *map(str, args)],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def evaluated(pairs) -> Path:
    """fit ct_interpolation (tiny, pixel space) -> sample --paired :test -> evaluate."""
    run = pairs / "run"
    cli("fit", "ct_interpolation", f"data.cache={pairs / 'cache'}", *RUN, "--out", run, "--quiet")
    cli("sample", run, "--priors-from", ":test", "--paired", "--steps", "2", "--out",
        pairs / "s", "--no-nifti", "--quiet")  # fmt: skip
    cli("evaluate", pairs / "s", "--bootstrap", "40", "--quiet")
    return pairs


def _own_scores(pairs: Path) -> dict:
    """Per test item, computed here: thin, thick_to_thin baselines, their PSNR / SSIM."""
    ds = CacheDataset(pairs / "cache", "test")
    out = {"subjects": [str(s) for s in ds.subjects()], "thin": [], "linear": [], "cubic": []}
    for i in range(len(ds)):
        item = ds[i]
        thin, thick = item["thin"].numpy().astype(np.float64), item["thick"].numpy()
        out["thin"].append(thin)
        for kind in ("linear", "cubic"):
            pred = thick_to_thin(thick, thin.shape[1], 1.0, THICKNESS, kind=kind).astype(np.float64)
            out[kind].append({"psnr": closed_psnr(pred, thin),
                              "ssim": float(tm_map(pred[0], thin[0]).mean())})  # fmt: skip
    return out


def test_paired_samples_record_their_items(evaluated):
    manifest = json.loads((evaluated / "s" / "manifest.json").read_text())
    ds = CacheDataset(evaluated / "cache", "test")
    assert manifest["n"] == 2 and manifest["paired"]["split"] == "test"
    assert manifest["paired"]["items"] == [0, 1]
    assert manifest["paired"]["subjects"] == [str(s) for s in ds.subjects()]


def test_paired_plan_conditions_each_sample_on_its_own_item(evaluated):
    from medgen.train.commands.paired_plan import paired_plan
    from medgen.train.runs import TrainedRun
    from medgen.train.tasks import TASKS

    run = TrainedRun.open(evaluated / "run")
    spec = TASKS[run.config.task.kind]
    generator = spec.generator(run.config, run.description, torch.device("cpu"))
    plan, record = paired_plan(generator, ":test", run.description)
    items = PairVolumes(CacheDataset(evaluated / "cache", "test"), depth=16)
    assert len(plan) == len(items) == 2 and record["items"] == [0, 1]
    for k in range(len(items)):  # the prior is the item's own thick stack on the thin grid
        np.testing.assert_array_equal(plan.priors[k][0].numpy(), items[k]["thick"][0].numpy())
        assert int(plan.token[k]) == int(items[k]["token"])


def test_table_rows_and_the_baselines_equal_our_own_computation(evaluated):
    result = json.loads((evaluated / "s" / "evaluation" / "evaluation.json").read_text())
    block = result["paired"]
    assert block["methods"] == ["model", "linear", "cubic"]
    for region in ("all", "between"):
        assert list(block["tables"][region]) == ["model", "linear", "cubic", "model - linear",
                                                 "model - cubic"]  # fmt: skip
    own = _own_scores(evaluated)
    per = block["per_sample"]
    assert [r["subject"] for r in per] == own["subjects"]
    for kind in ("linear", "cubic"):
        for rec, want in zip(per, own[kind], strict=True):
            assert rec[kind]["psnr"] == pytest.approx(want["psnr"], abs=1e-4)
            assert rec[kind]["ssim"] == pytest.approx(want["ssim"], abs=1e-5)
        mean = np.mean([w["psnr"] for w in own[kind]])
        assert block["tables"]["all"][kind]["psnr"]["estimate"] == pytest.approx(mean, abs=1e-4)
    with np.load(evaluated / "s" / "samples.npz") as npz:
        images = npz["images"]
    for k, rec in enumerate(per):  # each sample against its OWN item, padding left out
        thin = own["thin"][k]
        assert rec["depth"] == thin.shape[1] and rec["item"] == k
        want = closed_psnr(images[k][:, : thin.shape[1]], thin)
        assert rec["model"]["psnr"] == pytest.approx(want, abs=1e-4)
        diff = rec["model"]["psnr"] - rec["linear"]["psnr"]
        assert math.isfinite(diff)
    d = block["tables"]["all"]["model - linear"]["psnr"]["estimate"]
    assert d == pytest.approx(np.mean([r["model"]["psnr"] - r["linear"]["psnr"] for r in per]))
    for rec in per:  # between slab centres: centres on thin slices 1, 4, 7, 10 (, 13)
        u = (np.arange(rec["depth"]) - 1) / 3.0
        n_thick = (rec["depth"] - 3) // 3 + 1
        want = (np.abs(u - np.round(u)) > 1e-6) & (u > 0) & (u < n_thick - 1)
        assert rec["n_between"] == int(want.sum())
        assert rec["linear"]["between"]["psnr"] != rec["linear"]["psnr"]


def test_report_files_show_the_table_and_figure(evaluated):
    out = evaluated / "s" / "evaluation"
    md = (out / "evaluation.md").read_text()
    assert "| model - linear |" in md and "| cubic |" in md and "between slab centres" in md
    assert "interpolation.png" in md and (out / "interpolation.png").stat().st_size > 1000
    assert "model - cubic" in (out / "report.html").read_text()


def test_paired_flag_errors(evaluated, capsys):
    run = evaluated / "run"

    def fails(*argv, match):
        code = main(["sample", str(run), "--out", str(evaluated / "bad"), "--quiet", *argv])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and match in err, err

    fails("--paired", match="--paired: needs --priors-from")
    fails("--paired", "--priors-from", ":test", "--n", "3", match="--n cannot be combined")
    fails("--paired", "--priors-from", ":test", "--bins", "0", match="--bins cannot be combined")
    # another split is another request: the samples directory refuses it without --fresh
    code = main(["sample", str(run), "--priors-from", ":train", "--paired", "--steps", "2",
                 "--out", str(evaluated / "s"), "--no-nifti", "--quiet"])  # fmt: skip
    assert code != 0 and "other settings" in capsys.readouterr().err
    code = main(["evaluate", str(evaluated / "s"), "--reference", f"{evaluated / 'cache'}:train",
                 "--out", str(evaluated / "bad_ev")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "leave --reference out" in err, err


# --- a slices run with a mask prior: paired without baselines -----------------------------------


def test_slices_run_with_a_mask_prior_pairs_each_sample_with_its_item(tmp_path):
    import SimpleITK as sitk
    import yaml

    rows = ["subject,image,mask,split"]
    _, y, x = np.mgrid[:6, :16, :16]
    for s in range(3):
        mask = np.zeros((6, 16, 16), np.uint8)
        mask[2:4, 5 + s : 9 + s, 6:10] = 1
        body = ((y - 8) ** 2 + (x - 8) ** 2 < 30 + 5 * s).astype(np.float32) * 100 + 20 * mask
        for name, a in ((f"m{s}", mask), (f"i{s}", body)):
            sitk.WriteImage(
                sitk.GetImageFromArray(a.astype(np.float32)), str(tmp_path / f"{name}.nii.gz")
            )
        rows.append(f"s{s},i{s}.nii.gz,m{s}.nii.gz,{'test' if s == 2 else 'train'}")
    (tmp_path / "subjects.csv").write_text("\n".join(rows) + "\n")
    recipe = dict(out=str(tmp_path / "cache"), sources=[str(tmp_path / "subjects.csv")], n_bins=1,
                  size=16)  # fmt: skip
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["cache", str(tmp_path / "recipe.yaml"), "--quiet"]) == 0
    run = tmp_path / "run"
    assert main(["fit", "jsddpm", f"data.cache={tmp_path / 'cache'}", *TINY_RUN,
                 "task.generate=image", "task.priors=mask", "task.uncertainty_weighting=false",
                 "--out", str(run), "--quiet"]) == 0  # fmt: skip
    assert main(["sample", str(run), "--priors-from", ":test", "--paired", "--steps", "2",
                 "--out", str(tmp_path / "s"), "--no-nifti", "--quiet"]) == 0  # fmt: skip
    assert main(["evaluate", str(tmp_path / "s"), "--bootstrap", "20", "--quiet"]) == 0
    result = json.loads((tmp_path / "s" / "evaluation" / "evaluation.json").read_text())
    block = result["paired"]
    ds = CacheDataset(tmp_path / "cache", "test")
    assert block["methods"] == ["model"] and list(block["tables"]) == ["all"]
    assert len(block["per_sample"]) == len(ds) > 1
    with np.load(tmp_path / "s" / "samples.npz") as npz:
        images = npz["images"]
    for k, rec in enumerate(block["per_sample"]):
        truth = ds[rec["item"]]["image"].numpy()
        assert rec["item"] == k
        assert rec["model"]["psnr"] == pytest.approx(closed_psnr(images[k], truth), abs=1e-4)
        assert rec["model"]["ssim"] == pytest.approx(float(tm_map(images[k][0], truth[0]).mean()),
                                                     abs=1e-6)  # fmt: skip
    assert not (tmp_path / "s" / "evaluation" / "interpolation.png").exists()
