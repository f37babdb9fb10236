"""CacheDataset over memory-mapped shards, with the ResumableBatchSampler in a DataLoader."""

import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from medgen.data import (
    CacheDataset,
    CacheError,
    CacheRecipe,
    ResumableBatchSampler,
    build_cache,
    collate_padded,
)
from medgen.data.cache.shards import SHARDS


@pytest.fixture
def two_modality_csv(tmp_path, tools):
    rows = []
    for i in range(3):
        img = tools.head(16, 24, seed=i)
        tools.save(tmp_path / f"s{i}_t1.nii.gz", img)
        tools.save(tmp_path / f"s{i}_t2.nii.gz", 300.0 - img + i)
        tools.save(tmp_path / f"s{i}_mask.nii.gz", tools.lesion(img.shape, [4 + i, 5 + i]))
        rows += [
            [f"s{i}", f"s{i}_t1.nii.gz", f"s{i}_mask.nii.gz", "t1"],
            [f"s{i}", f"s{i}_t2.nii.gz", "", "t2"],
        ]
    return tools.table(tmp_path / "t.csv", ["subject", "image", "mask", "modality"], rows)


def build(tmp_path, csv, **kw):
    base = dict(
        out=str(tmp_path / "cache"), sources=(str(csv),), n_bins=4, size=16, class_from="mask"
    )
    build_cache(CacheRecipe(**{**base, **kw}), quiet=True)
    return tmp_path / "cache"


def test_items_equal_an_eager_load_of_the_shards(tmp_path, two_modality_csv):
    cache = build(tmp_path, two_modality_csv)
    ds = CacheDataset(cache, None)
    eager = []
    for entry in ds.manifest["shards"]:
        with np.load(cache / SHARDS / entry["file"]) as npz:
            eager += [{k: npz[k][j] for k in npz.files} for j in range(entry["n_items"])]
    assert len(ds) == len(eager) == 3 * 16 and ds.channels == 2
    for i, ref in enumerate(eager):
        item = ds[i]
        assert set(item) == {"image", "mask", "token", "z_bin", "class_id"}
        np.testing.assert_array_equal(item["image"].numpy(), ref["image"])
        np.testing.assert_array_equal(item["mask"].numpy(), ref["mask"])
        for key in ("token", "z_bin", "class_id"):
            assert item[key].dtype == torch.int64 and item[key].dim() == 0
            assert int(item[key]) == int(ref[key])
        assert item["image"].dtype == torch.float32 and item["image"].is_contiguous()
    np.testing.assert_array_equal(ds.labels(), [r["class_id"] for r in eager])
    assert (ds.groups() == 0).all() and len(set(ds.subjects())) == 3
    for key in ("image", "mask"):  # a copy, not a view of the dataset's read-only memory map
        tensor = ds[5][key]  # item 5 lies in shard 0
        mapped = ds._arrays(0)[key]
        assert isinstance(mapped, np.memmap) and mapped.base is not None
        lo, hi = mapped.ctypes.data, mapped.ctypes.data + mapped.nbytes
        assert not lo <= tensor.data_ptr() < hi and tensor.numpy().flags.writeable
    assert ds[-1]["token"] == ds[len(ds) - 1]["token"]
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_modality_as_mode_gives_one_channel_items_modality_major(tmp_path, two_modality_csv):
    cache = build(tmp_path, two_modality_csv)
    channels, modes = CacheDataset(cache, None), CacheDataset(cache, None, modality_as="mode")
    n = len(channels)
    assert len(modes) == 2 * n and modes.channels == 1
    np.testing.assert_array_equal(modes.groups(), np.repeat([0, 1], n))
    np.testing.assert_array_equal(modes.labels(), np.tile(channels.labels(), 2))
    for j in (0, 7, n - 1):
        for m in (0, 1):
            item = modes[m * n + j]
            assert item["image"].shape == (1, 16, 16) and int(item["mode"]) == m
            torch.testing.assert_close(item["image"][0], channels[j]["image"][m], rtol=0, atol=0)
            assert torch.equal(item["mask"], channels[j]["mask"])


def test_verify_rehashes_the_selected_split_once(tmp_path, two_modality_csv):
    cache = build(tmp_path, two_modality_csv, test_fraction=0.3)
    m = CacheDataset(cache, None).manifest
    test_shard = next(e for e in m["shards"] if e["split"] == "test")["file"]
    victim = cache / SHARDS / test_shard
    data = bytearray(victim.read_bytes())
    data[-100] ^= 0xFF
    victim.write_bytes(bytes(data))
    CacheDataset(cache, "train")  # the damaged shard is not in the train split
    with pytest.raises(CacheError, match=rf"{test_shard}: shard damaged or missing"):
        CacheDataset(cache, "test")
    CacheDataset(cache, "test", verify=False)  # the caller's choice


def volume_cache(tmp_path, subjects_csv):
    csv = subjects_csv(4, lesion_subjects=(1, 3))
    recipe = CacheRecipe(
        out=str(tmp_path / "vol"),
        sources=(str(csv),),
        kind="volumes",
        z_range=(2, 13),
        shape=(16, 20, 20),
        class_from="mask",
    )
    build_cache(recipe, quiet=True)
    return tmp_path / "vol"


def test_volume_crops_are_drawn_from_the_seed_and_valid_follows_the_box(tmp_path, subjects_csv):
    cache = volume_cache(tmp_path, subjects_csv)
    full = CacheDataset(cache, None)
    ds = CacheDataset(cache, None, crop=(8, 12, 10))
    item = full[0]
    assert item["valid"].dtype == torch.bool and item["valid"].shape == (1, 16, 20, 20)
    assert item["valid"][0, 2:14].all() and not item["valid"][0, :2].any()
    assert not item["valid"][0, 14:].any()  # valid_box [2, 14) in z, everything in y, x
    centre = ds[1]
    torch.testing.assert_close(centre["image"], full[1]["image"][:, 4:12, 4:16, 5:15])
    for seed in (0, 1, 12345):
        rng = np.random.default_rng(seed)
        z, y, x = (int(rng.integers(0, n + 1)) for n in (16 - 8, 20 - 12, 20 - 10))
        crop = ds[(1, seed)]
        assert torch.equal(crop["image"], full[1]["image"][:, z : z + 8, y : y + 12, x : x + 10])
        assert torch.equal(crop["mask"], full[1]["mask"][:, z : z + 8, y : y + 12, x : x + 10])
        assert torch.equal(crop["valid"], full[1]["valid"][:, z : z + 8, y : y + 12, x : x + 10])
        assert torch.equal(ds[(1, seed)]["image"], crop["image"])  # the same seed, the same crop
    assert not torch.equal(ds[(1, 0)]["image"], ds[(1, 1)]["image"])
    with pytest.raises(Exception, match="crop: expected 3 sizes within the item shape"):
        CacheDataset(cache, None, crop=(8, 24, 10))


def batches(loader):
    return [{k: v.clone() for k, v in b.items()} for b in loader]


def test_same_batches_bitwise_with_0_and_2_workers_and_random_crops(tmp_path, subjects_csv):
    cache = volume_cache(tmp_path, subjects_csv)
    ds = CacheDataset(cache, None, crop=(8, 8, 8))
    sampler = ResumableBatchSampler(len(ds), 2, seed=5, labels=ds.labels(), oversample=2)
    sampler.epoch = 1
    runs = [batches(DataLoader(ds, batch_sampler=sampler, num_workers=w)) for w in (0, 2)]
    assert len(runs[0]) == len(runs[1]) == sampler.batches_per_epoch() == 3
    for a, b in zip(*runs, strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert sampler.epoch == 1 and sampler.start == 0  # iteration never moves the position


def test_the_pickled_dataset_holds_no_memory_map_and_works_under_spawn(tmp_path, subjects_csv):
    cache = volume_cache(tmp_path, subjects_csv)
    ds = CacheDataset(cache, None, crop=(8, 8, 8))
    ds[0]  # opens a shard in this process
    assert ds._open and not pickle.loads(pickle.dumps(ds))._open
    copy = pickle.loads(pickle.dumps(ds))
    assert torch.equal(copy[(2, 9)]["image"], ds[(2, 9)]["image"])
    sampler = ResumableBatchSampler(len(ds), 2, seed=1, shuffle=False)
    loader = DataLoader(ds, batch_sampler=sampler, num_workers=1, multiprocessing_context="spawn")
    spawned = batches(loader)
    local = batches(DataLoader(ds, batch_sampler=sampler))
    assert all(torch.equal(a[k], b[k]) for a, b in zip(spawned, local, strict=True) for k in a)


def test_pairs_of_different_depth_collate_with_padding(tmp_path, tools):
    rows = []
    for i, depth in enumerate((16, 11)):
        tools.save(tmp_path / f"p{i}.nii.gz", tools.head(depth, 20, seed=i))
        tools.save(tmp_path / f"p{i}_mask.nii.gz", tools.lesion((depth, 20, 20), [4, 5]))
        rows.append([f"p{i}", f"p{i}.nii.gz", f"p{i}_mask.nii.gz"])
    csv = tools.table(tmp_path / "t.csv", ["subject", "image", "mask"], rows)
    recipe = CacheRecipe(
        out=str(tmp_path / "p"),
        sources=(str(csv),),
        kind="pairs",
        size=20,
        in_plane="crop",
        thickness=4.0,
    )
    m = build_cache(recipe, quiet=True).manifest
    assert m["item_shape"] == [1, None, 20, 20] and m["n_bins"] == 1
    ds = CacheDataset(tmp_path / "p", None)
    depths = sorted(ds[i]["thin"].shape[1] for i in range(2))
    assert depths == [11, 16] and set(ds[0]) == {
        "thin",
        "thick",
        "thin_label",
        "thick_label",
        "token",
        "z_bin",
        "class_id",
    }
    batch = collate_padded([ds[i] for i in range(2)])
    short = int(np.argmin([ds[i]["thin"].shape[1] for i in range(2)]))
    assert batch["thin"].shape == (2, 1, 16, 20, 20) and batch["thick"].shape == (2, 1, 8, 20, 20)
    assert (batch["thin"][short, :, 11:] == -1).all() and not batch["thin_valid"][
        short, 0, 11:
    ].any()
    assert batch["thick_shape"][short].tolist() == [5, 20, 20]  # floor((11 * 2 - 4) / 4) + 1
