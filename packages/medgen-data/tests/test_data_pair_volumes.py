"""PairVolumes over a tiny pairs cache of subjects with different depths, and a real CT DICOM
series through a pairs recipe with the soft-tissue window."""

from __future__ import annotations

import csv
import math
import pickle
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pydicom.data import get_testdata_file

from medgen.data import (
    CacheDataset,
    CacheRecipe,
    DataError,
    PairVolumes,
    Volume,
    build_cache,
    open_shard,
    pseudonym,
    thick_to_thin,
    window,
    write_nifti,
)

SPACING = (2.0, 1.0, 1.0)  # z, y, x mm
THICKNESS, THICK_SPACING = 4.0, 3.0  # 2 thin slices thick, overlapping by 1 mm
DEPTHS = {"a": 10, "b": 13, "c": 16, "d": 7}  # c (the longest) is the test split
SPLITS = {"a": "train", "b": "train", "c": "test", "d": "val"}
Z_SPACING = {"a": 2.0, "b": 2.0, "c": 2.0, "d": 3.0}  # d: another thin spacing
SIDE = 16


def _write_subjects(root: Path) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for sid, depth in DEPTHS.items():
        spacing = (Z_SPACING[sid], *SPACING[1:])
        mask = np.zeros((depth, SIDE, SIDE), np.float32)
        mask[depth // 2 - 1 : depth // 2 + 1, 5:9, 6:10] = 1
        write_nifti(Volume(mask, spacing, (0.0, 0.0, 0.0), np.eye(3)), root / f"{sid}_m.nii.gz")
        for modality in ("t1", "t2"):
            z = np.arange(depth, dtype=np.float32)[:, None, None]
            img = 50 + 10 * np.sin(z / 2) + rng.normal(0, 5, (depth, SIDE, SIDE))
            vol = Volume(img.astype(np.float32), spacing, (0.0, 0.0, 0.0), np.eye(3))
            write_nifti(vol, root / f"{sid}_{modality}.nii.gz")
            rows.append([sid, f"{sid}_{modality}.nii.gz", f"{sid}_m.nii.gz", SPLITS[sid], modality])
    table = root / "subjects.csv"
    with table.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["subject", "image", "mask", "split", "modality"])
        writer.writerows(rows)
    return table


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pairs")
    table = _write_subjects(root)
    recipe = CacheRecipe(
        out=str(root / "cache"),
        kind="pairs",
        sources=(str(table),),
        size=SIDE,
        in_plane="crop",
        thickness=THICKNESS,
        thick_spacing=THICK_SPACING,
    )
    build_cache(recipe, quiet=True)
    return root / "cache"


def _np_interp_prior(thick: np.ndarray, depth: int, s: float) -> np.ndarray:
    """The linear prior written out in mm with np.interp: thin slice i at i * s, thick slab k
    at c_k = T/2 - s/2 + k * S (edge values held beyond the first/last slab)."""
    centres = THICKNESS / 2 - s / 2 + THICK_SPACING * np.arange(thick.shape[1])
    flat = thick.reshape(thick.shape[0], thick.shape[1], -1).astype(np.float64)
    out = np.stack(
        [
            np.stack([np.interp(s * np.arange(depth), centres, col) for col in ch.T], -1)
            for ch in flat
        ]
    )
    return out.reshape(thick.shape[0], depth, *thick.shape[2:])


def test_depth_none_is_the_longest_item_of_every_split_rounded_up(cache):
    train = CacheDataset(cache, "train")
    np.testing.assert_array_equal(train.spacings(), [SPACING, SPACING])
    everything = CacheDataset(cache, None)
    got = dict(zip(everything.subjects(), everything.spacings()[:, 0], strict=True))
    assert got == {pseudonym(f"subject:{sid}"): z for sid, z in Z_SPACING.items()}
    assert PairVolumes(train).shape == (16, SIDE, SIDE)  # c (16 slices) is in the test split
    for multiple in (1, 3, 5, 16):
        want = multiple * math.ceil(max(DEPTHS.values()) / multiple)
        assert PairVolumes(train, multiple=multiple).shape == (want, SIDE, SIDE)
        assert PairVolumes(CacheDataset(cache, "val"), multiple=multiple).depth == want
    pv = PairVolumes(train, depth=12, multiple=4)
    assert pv.shape == (12, SIDE, SIDE) and pv.channels == ["t1", "t2"]
    assert (pv.thickness, pv.thick_spacing) == (THICKNESS, THICK_SPACING)


@pytest.mark.parametrize("prior", ["linear", "cubic"])
def test_padding_valid_mask_and_prior_per_item(cache, prior):
    pv = PairVolumes(CacheDataset(cache, None), depth=18, prior=prior)
    manifest = pv.pairs.manifest
    by_subject = {e["subject"]: open_shard(cache, e) for e in manifest["shards"]}
    seen = set()
    for i in range(len(pv)):
        item, raw = pv[i], pv.raw(i)
        shard = by_subject[raw["subject"]]
        n = shard["thin"].shape[2]
        seen.add(n)
        np.testing.assert_array_equal(raw["thin"], shard["thin"][0])
        np.testing.assert_array_equal(raw["thick"], shard["thick"][0])
        s = raw["thin_spacing"]
        assert s == Z_SPACING[next(k for k, d in DEPTHS.items() if d == n)]
        assert item["image"].shape == item["thick"].shape == (2, 18, SIDE, SIDE)
        assert item["image"].dtype == item["thick"].dtype == torch.float32
        assert int(item["depth"]) == n and item["depth"].dtype == torch.int64
        np.testing.assert_array_equal(item["image"][:, :n].numpy(), raw["thin"])
        assert (item["image"][:, n:] == -1).all() and (item["thick"][:, n:] == -1).all()
        valid = np.zeros((1, 18, SIDE, SIDE), bool)
        valid[:, :n] = True
        assert item["valid"].dtype == torch.bool
        np.testing.assert_array_equal(item["valid"].numpy(), valid)
        assert item["mask"].dtype == torch.uint8
        np.testing.assert_array_equal(item["mask"][:, :n].numpy(), shard["thin_label"][0])
        assert (item["mask"][:, n:] == 0).all() and item["mask"].sum() > 0
        expected = thick_to_thin(raw["thick"], n, s, THICKNESS, THICK_SPACING, kind=prior)
        np.testing.assert_allclose(item["thick"][:, :n].numpy(), expected, atol=1e-6)
        if prior == "linear":
            reference = _np_interp_prior(raw["thick"], n, s)
            np.testing.assert_allclose(item["thick"][:, :n].numpy(), reference, atol=1e-5)
        for key in ("token", "z_bin", "class_id"):
            assert item[key].shape == () and item[key].dtype == torch.int64
    assert seen == set(DEPTHS.values())
    assert len(pv) == len(pv.pairs) == 4
    np.testing.assert_array_equal(pv.subjects(), pv.pairs.subjects())
    np.testing.assert_array_equal(pv.labels(), pv.pairs.labels())
    np.testing.assert_array_equal(pv.tokens(), pv.pairs.tokens())
    np.testing.assert_array_equal(pv.groups(), pv.pairs.groups())


def test_windows_are_deterministic_per_seed_inside_the_volume_and_centred_without(cache):
    pv = PairVolumes(CacheDataset(cache, None), depth=8)
    i = next(j for j in range(len(pv)) if pv.raw(j)["thin"].shape[1] == 16)
    raw = pv.raw(i)
    whole = thick_to_thin(raw["thick"], 16, 2.0, THICKNESS, THICK_SPACING)
    starts = set()
    for seed in range(12):
        a, b = pv[(i, seed)], pv[(i, seed)]
        for key in a:
            assert torch.equal(a[key], b[key]), key
        found = [
            s
            for s in range(16 - 8 + 1)
            if np.array_equal(a["image"].numpy(), raw["thin"][:, s : s + 8])
        ]
        assert len(found) == 1  # a window of real slices inside the volume
        s = found[0]
        starts.add(s)
        np.testing.assert_allclose(a["thick"].numpy(), whole[:, s : s + 8], atol=1e-6)
        assert a["valid"].all() and int(a["depth"]) == 16
    assert len(starts) > 3  # the seed moves the window
    centred = pv[i]
    np.testing.assert_array_equal(centred["image"].numpy(), raw["thin"][:, 4:12])
    assert torch.equal(pv[np.int64(i)]["image"], centred["image"])


def test_items_collate_with_the_default_collate(cache):
    pv = PairVolumes(CacheDataset(cache, "train"), multiple=4)
    batch = next(iter(torch.utils.data.DataLoader(pv, batch_size=2)))
    assert batch["image"].shape == (2, 2, 16, SIDE, SIDE)
    assert batch["valid"].shape == (2, 1, 16, SIDE, SIDE)
    assert sorted(batch["depth"].tolist()) == [10, 13]
    again = pickle.loads(pickle.dumps(pv))  # what a spawned DataLoader worker receives
    assert all(torch.equal(again[(1, 7)][k], pv[(1, 7)][k]) for k in pv[0])


def test_bad_cache_depth_and_prior_are_one_line_data_errors(cache, tmp_path):
    pairs = CacheDataset(cache, "train")
    for depth in (0, -3, 2.5, True):
        with pytest.raises(DataError, match=r"^depth: expected an integer >= 1"):
            PairVolumes(pairs, depth=depth)
    with pytest.raises(DataError, match=r"^depth: 10 is not a multiple of 4"):
        PairVolumes(pairs, depth=10, multiple=4)
    with pytest.raises(DataError, match=r"^multiple: expected an integer >= 1"):
        PairVolumes(pairs, multiple=0)
    with pytest.raises(DataError, match=r"^prior: unknown interpolation 'nearest'; known: linear"):
        PairVolumes(pairs, prior="nearest")
    with pytest.raises(DataError, match="modality_as='channels'"):
        PairVolumes(CacheDataset(cache, "train", modality_as="mode"))
    with pytest.raises(IndexError):
        PairVolumes(pairs)[5]
    volumes = CacheRecipe(
        out=str(tmp_path / "vol"),
        kind="volumes",
        sources=(str(cache.parent / "a_t1.nii.gz"),),
        shape=(8, SIDE, SIDE),
    )
    build_cache(volumes, quiet=True)
    with pytest.raises(DataError) as err:
        PairVolumes(CacheDataset(tmp_path / "vol", "train"))
    assert (
        str(err.value)
        == f"{tmp_path / 'vol'}: PairVolumes needs a pairs cache, this one holds volumes"
    )
    with pytest.raises(DataError, match="needs a pairs cache"):
        PairVolumes(object())


def test_real_ct_dicom_series_through_a_soft_tissue_pairs_recipe(tmp_path):
    series = Path(get_testdata_file("dicomdirtests/98892001/CT5N/2062")).parent
    datasets = [pydicom.dcmread(p) for p in sorted(series.iterdir())]
    datasets.sort(key=lambda d: float(d.ImagePositionPatient[2]))  # inferior first, like LPS z
    hu = np.stack(
        [d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in datasets]
    )
    assert hu.shape == (5, 16, 16)
    recipe = CacheRecipe(
        out=str(tmp_path / "ct"),
        kind="pairs",
        sources=(str(series),),
        window="soft_tissue",
        size=16,
        in_plane="crop",
        thickness=5.0,  # 2 thin slices of 2.5 mm
    )
    build_cache(recipe, quiet=True)
    pv = PairVolumes(CacheDataset(tmp_path / "ct", "train"))
    raw = pv.raw(0)
    assert raw["thin"].shape == (1, 5, 16, 16) and raw["thick"].shape == (1, 2, 16, 16)
    assert raw["thin_spacing"] == 2.5
    expected = window(hu, preset="soft_tissue")
    expected_by_hand = np.clip((hu - (40 - 200)) / 400, 0, 1) * 2 - 1  # C40/W400 -> [-1, 1]
    np.testing.assert_allclose(expected, expected_by_hand, atol=1e-6)
    rng = np.random.default_rng(0)
    inside = np.argwhere((hu > -160) & (hu < 240))  # voxels inside the window, not clipped
    picks = [*inside[rng.choice(len(inside), 5, replace=False)], (0, 0, 0), (4, 15, 15)]
    for z, y, x in picks:
        assert raw["thin"][0, z, y, x] == pytest.approx(expected[z, y, x], abs=1e-6)
    np.testing.assert_allclose(raw["thin"][0], expected, atol=1e-6)
    # the thick slabs are the means of thin slice pairs (0, 1) and (2, 3)
    np.testing.assert_allclose(raw["thick"][0, 0], expected[:2].mean(0), atol=1e-6)
    np.testing.assert_allclose(raw["thick"][0, 1], expected[2:4].mean(0), atol=1e-6)
    item = pv[0]
    assert item["image"].shape == (1, 5, 16, 16) and item["valid"].all()
