"""The manifest, the subject-level split, rebuild rules and split warnings of build_cache."""

import dataclasses
import json
import warnings

import numpy as np
import pytest

from medgen.data import (
    CacheDataset,
    CacheError,
    CacheRecipe,
    CacheWarning,
    DataError,
    build_cache,
    config_hash,
    pseudonym,
    read_manifest,
)
from medgen.data.cache.shards import SHARDS


def recipe_for(tmp_path, csv, **kw):
    base = dict(
        out=str(tmp_path / "cache"),
        sources=(str(csv),),
        z_range=(2, 13),
        n_bins=4,
        size=16,
        class_from="mask",
    )
    return CacheRecipe(**{**base, **kw})


def test_manifest_describes_the_cache_without_paths(tmp_path, subjects_csv):
    csv = subjects_csv(5, lesion_subjects=(0, 2))
    report = build_cache(recipe_for(tmp_path, csv, val_fraction=0.2, test_fraction=0.2), True)
    m = report.manifest
    assert m == read_manifest(tmp_path / "cache")
    assert m["format_version"] == 2 and m["kind"] == "slices" and m["modalities"] == ["image"]
    assert m["has_mask"] is True and m["labels"] == [0, 1] and m["n_bins"] == 4
    assert m["n_classes"] == 2 and m["item_shape"] == [1, 16, 16] and m["n_items"] == 5 * 12
    assert "out" not in m["recipe"] and m["recipe_hash"] == config_hash(m["recipe"])
    assert len(m["recipe"]["sources"]) == 1 and len(m["recipe"]["sources"][0]) == 64
    assert str(tmp_path) not in json.dumps(m) and "subjects.csv" not in json.dumps(m)
    # counts: 3 lesion slices (5, 6, 7 -> bins 1, 1, 2) in each of the 2 lesion subjects
    assert m["counts_per_class"] == [54, 6] and m["counts_per_bin"] == [15, 15, 15, 15]
    shards = m["shards"]
    assert sorted(e["subject"] for e in shards) == sorted(
        pseudonym(f"subject:s{i}") for i in range(5)
    )
    for e in shards:  # each sidecar on disk is the manifest entry minus its split
        side = json.loads(
            (tmp_path / "cache" / SHARDS / e["file"]).with_suffix(".json").read_text()
        )
        assert side == {k: v for k, v in e.items() if k != "split"}
        assert len(e["source_sha256"]) == 2 and e["spacing"][0] == 2.0
    splits = m["splits"]
    assert {k: len(v["subjects"]) for k, v in splits.items()} == {"train": 3, "val": 1, "test": 1}
    for name, s in splits.items():
        mine = [e for e in shards if e["split"] == name]
        assert s["subjects"] == [e["subject"] for e in mine]
        assert s["n_items"] == sum(e["n_items"] for e in mine)
        assert (
            s["counts_per_class"]
            == np.sum(
                [e["counts_per_class"] + [0] * (2 - len(e["counts_per_class"])) for e in mine],
                axis=0,
            ).tolist()
        )
    # the subject classes are stratified: 2 lesion subjects of 5, val 1 / test 1
    lesion = {pseudonym("subject:s0"), pseudonym("subject:s2")}
    assert len(lesion & set(splits["train"]["subjects"])) == 1


def test_changing_only_the_split_rebuilds_no_shard(tmp_path, subjects_csv):
    csv = subjects_csv(6, lesion_subjects=(0, 1, 2))
    first = build_cache(recipe_for(tmp_path, csv, val_fraction=0.2), quiet=True)
    second = build_cache(recipe_for(tmp_path, csv, val_fraction=0.4, split_seed=3), quiet=True)
    assert second.built == [] and sorted(second.reused) == sorted(first.built)
    assert first.manifest["splits"] != second.manifest["splits"]
    assert first.manifest["recipe_hash"] != second.manifest["recipe_hash"]
    assert len(second.manifest["splits"]["val"]["subjects"]) == 2
    third = build_cache(recipe_for(tmp_path, csv, val_fraction=0.4, size=24), quiet=True)
    assert len(third.built) == 6 and set(first.built) <= set(third.removed)
    assert len(list((tmp_path / "cache" / SHARDS).iterdir())) == 12  # nothing stale left


def test_resume_builds_exactly_the_missing_shards_reproducibly(tmp_path, subjects_csv):
    csv = subjects_csv(3)
    recipe = recipe_for(tmp_path, csv)
    first = build_cache(recipe, quiet=True)
    shard_dir = tmp_path / "cache" / SHARDS
    (shard_dir / first.built[1]).unlink()  # a lost shard
    (shard_dir / first.built[2]).with_suffix(".json").unlink()  # killed before its sidecar
    damaged = bytearray((shard_dir / first.built[0]).read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    (shard_dir / first.built[0]).write_bytes(bytes(damaged))
    with pytest.warns(CacheWarning, match=f"{first.built[0]}: damaged"):
        again = build_cache(recipe, quiet=True)
    assert sorted(again.built) == sorted(first.built) and again.reused == []
    assert again.manifest == first.manifest  # same inputs, same bytes, same hashes
    assert build_cache(recipe, quiet=True).built == []


def test_adding_a_subject_builds_one_shard(tmp_path, subjects_csv, tools):
    csv = subjects_csv(3)
    first = build_cache(recipe_for(tmp_path, csv), quiet=True)
    tools.save(tmp_path / "extra.nii.gz", tools.head(seed=9))
    tools.save(tmp_path / "extra_mask.nii.gz", np.zeros((16, 24, 24)))
    with csv.open("a") as fh:
        fh.write("extra,extra.nii.gz,extra_mask.nii.gz\n")
    second = build_cache(recipe_for(tmp_path, csv), quiet=True)
    assert len(second.built) == 1 and sorted(second.reused) == sorted(first.built)


def test_table_splits_are_kept_and_a_class_missing_from_train_warns(tmp_path, subjects_csv):
    csv = subjects_csv(3, lesion_subjects=(2,), split=["train", "train", "val"])
    with pytest.warns(CacheWarning, match=r"class 1 has no item in the train split"):
        report = build_cache(recipe_for(tmp_path, csv), quiet=True)
    assert report.manifest["splits"]["val"]["subjects"] == [pseudonym("subject:s2")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_cache(recipe_for(tmp_path, csv, class_from="none"), quiet=True)  # no warning


def test_split_errors(tmp_path, subjects_csv):
    csv = subjects_csv(2, split=["val", "test"])
    with pytest.raises(DataError, match="^split: no subject is in the train split"):
        build_cache(recipe_for(tmp_path, csv), quiet=True)
    csv = subjects_csv(2, split=["train", "train"], name="b.csv")
    with pytest.raises(DataError, match="^val_fraction: 0.3, but the val split got no subject"):
        build_cache(recipe_for(tmp_path, csv, val_fraction=0.3), quiet=True)
    csv = subjects_csv(2, name="c.csv")
    with pytest.raises(DataError, match="^val_fraction: 2 subjects to split cannot give val 1"):
        build_cache(recipe_for(tmp_path, csv, val_fraction=0.3, test_fraction=0.3), quiet=True)


def test_class_from_source_uses_the_table_and_sets_n_classes(tmp_path, subjects_csv):
    csv = subjects_csv(3, **{"class": ["0", "2", "1"]})
    report = build_cache(recipe_for(tmp_path, csv, class_from="source"), quiet=True)
    m = report.manifest
    assert m["n_classes"] == 3 and m["counts_per_class"] == [12, 12, 12]
    ds = CacheDataset(tmp_path / "cache", None)
    by_subject = dict(zip(ds.subjects(), ds.labels(), strict=True))
    assert by_subject[pseudonym("subject:s1")] == 2
    tokens = np.array([ds[i]["token"] for i in range(len(ds))])
    z_bins = np.array([ds[i]["z_bin"] for i in range(len(ds))])
    np.testing.assert_array_equal(tokens, z_bins + 4 * ds.labels())


def test_a_foreign_manifest_is_never_overwritten_and_format_1_is_rebuilt(tmp_path, subjects_csv):
    csv = subjects_csv(1)
    out = tmp_path / "cache"
    out.mkdir()
    (out / "manifest.json").write_text('{"name": "my project"}')
    with pytest.raises(CacheError, match="^out: .* holds a manifest.json that is not a MedGen"):
        build_cache(recipe_for(tmp_path, csv), quiet=True)
    assert json.loads((out / "manifest.json").read_text()) == {"name": "my project"}
    (out / "manifest.json").write_text('{"format_version": 1, "shards": []}')
    (out / SHARDS).mkdir()
    (out / SHARDS / "shard-0123456789abcdef01234567.npz").write_bytes(b"old format")
    report = build_cache(recipe_for(tmp_path, csv), quiet=True)
    assert "shard-0123456789abcdef01234567.npz" in report.removed
    assert read_manifest(out)["format_version"] == 2


def test_summary_is_one_line(tmp_path, subjects_csv):
    report = build_cache(recipe_for(tmp_path, subjects_csv(3), test_fraction=0.3), quiet=True)
    line = report.summary()
    assert "\n" not in line and "3 shards (3 built, 0 reused)" in line and "test 12" in line


def test_progress_bar_shows_unless_quiet(tmp_path, subjects_csv, capsys):
    csv = subjects_csv(2)
    import tqdm.auto

    shown = []
    real = tqdm.auto.tqdm

    class Spy(real):
        def __init__(self, *a, **kw):
            shown.append(kw.get("disable"))
            super().__init__(*a, **kw)

    import medgen.data.cache.build as build_module

    build_module.tqdm, original = Spy, build_module.tqdm
    try:
        build_cache(recipe_for(tmp_path, csv), quiet=True)
        build_cache(dataclasses.replace(recipe_for(tmp_path, csv), size=24), quiet=False)
    finally:
        build_module.tqdm = original
    assert shown == [True, True, None, None]  # quiet: off; else tqdm decides (off without a TTY)


def test_changing_modalities_rebuilds_the_shards(tmp_path, tools):
    img = tools.head(16, 24)
    tools.save(tmp_path / "t1.nii.gz", img)
    tools.save(tmp_path / "t2.nii.gz", 300.0 - img)
    csv = tools.table(
        tmp_path / "t.csv",
        ["subject", "image", "modality"],
        [["a", "t1.nii.gz", "t1"], ["a", "t2.nii.gz", "t2"]],
    )
    first = build_cache(recipe_for(tmp_path, csv, class_from="none"), quiet=True)
    swapped = build_cache(
        recipe_for(tmp_path, csv, class_from="none", modalities=("t2", "t1")), quiet=True
    )
    assert swapped.built and not swapped.reused and swapped.manifest["modalities"] == ["t2", "t1"]
    assert first.manifest["item_shape"] == swapped.manifest["item_shape"] == [2, 16, 16]
