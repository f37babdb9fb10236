"""The public pieces other cache writers and datasets use: ``prepare_cache_directory`` and
``CacheDataset.stored_item`` / ``item_metadata`` / ``n_stored``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medgen.data import (
    CacheDataset,
    CacheError,
    CacheRecipe,
    build_cache,
    prepare_cache_directory,
)
from medgen.data.cache.shards import MANIFEST, SHARDS


def test_prepare_cache_directory_keeps_wanted_shards_and_removes_the_rest(tmp_path):
    shards = tmp_path / SHARDS
    shards.mkdir()
    (tmp_path / MANIFEST).write_text(json.dumps({"format_version": 2}))
    (tmp_path / f".{MANIFEST}.123.tmp").write_text("{}")
    for name in ("shard-a.npz", "shard-a.json", "shard-b.npz", "shard-b.json", "x.npz.tmp",
                 "notes.txt"):  # fmt: skip
        (shards / name).write_text("")
    shard_dir, removed = prepare_cache_directory(tmp_path, ["shard-a.npz"])
    assert shard_dir == shards
    assert sorted(removed) == sorted([f".{MANIFEST}.123.tmp", "shard-b.json", "shard-b.npz",
                                      "x.npz.tmp"])  # fmt: skip
    assert sorted(p.name for p in shards.iterdir()) == ["notes.txt", "shard-a.json",
                                                        "shard-a.npz"]  # fmt: skip
    assert not (tmp_path / MANIFEST).exists()  # incomplete until the manifest is written again
    fresh, removed = prepare_cache_directory(tmp_path / "new", ["shard-a.npz"])
    assert fresh.is_dir() and removed == []


def test_prepare_cache_directory_refuses_a_foreign_manifest(tmp_path):
    (tmp_path / MANIFEST).write_text(json.dumps({"name": "someone else's"}))
    with pytest.raises(CacheError, match=f"{tmp_path} holds a {MANIFEST} that is not a MedGen"):
        prepare_cache_directory(tmp_path, [])
    assert (tmp_path / MANIFEST).exists() and not (tmp_path / SHARDS).exists()


def test_stored_items_are_the_shard_rows_behind_the_items(tmp_path, subjects_csv):
    csv = subjects_csv(n=3, depth=8, side=16)
    build_cache(CacheRecipe(out=str(tmp_path / "c"), sources=(str(csv),), n_bins=4, size=16,
                            class_from="mask"), quiet=True)  # fmt: skip
    ds = CacheDataset(tmp_path / "c", None)
    assert ds.n_stored == len(ds) == 3 * 8
    rows = []
    for entry in ds.manifest["shards"]:
        with np.load(tmp_path / "c" / SHARDS / entry["file"]) as npz:
            rows += [{k: npz[k][j] for k in npz.files} for j in range(entry["n_items"])]
    for i in (0, 7, 8, 23):
        arrays, k = ds.stored_item(i)
        np.testing.assert_array_equal(arrays["image"][k], rows[i]["image"])
        meta = ds.item_metadata(i)
        assert set(meta) == {"token", "z_bin", "class_id"}
        for key, value in meta.items():
            assert value.dtype == torch.int64 and value.dim() == 0
            assert int(value) == int(rows[i][key]) == int(ds[i][key])
    with pytest.raises(IndexError, match="stored item 24 out of range for 24 items"):
        ds.stored_item(24)
