"""Bad input to a cache build or read: one DataError / CacheError line naming the file or key."""

import json
import re

import numpy as np
import pytest

from medgen.data import CacheDataset, CacheError, CacheRecipe, DataError, build_cache, read_manifest
from medgen.data.cache.shards import verify_cache


def one_subject(tmp_path, tools, mask=None, mask_geometry=None, image=None, name="a"):
    img = tools.head() if image is None else image
    tools.save(tmp_path / f"{name}.nii.gz", img)
    m = tools.lesion(img.shape, [5, 6]) if mask is None else mask
    tools.save(tmp_path / f"{name}_mask.nii.gz", m, **(mask_geometry or {}))
    return tools.table(
        tmp_path / f"{name}.csv",
        ["subject", "image", "mask"],
        [[name, f"{name}.nii.gz", f"{name}_mask.nii.gz"]],
    )


def recipe(tmp_path, csv, **kw):
    base = dict(out=str(tmp_path / "cache"), sources=(str(csv),), n_bins=2, size=16)
    return CacheRecipe(**{**base, **kw})


def fails(r, pattern):
    with pytest.raises(DataError, match=pattern) as info:
        build_cache(r, quiet=True)
    assert "\n" not in str(info.value)
    return str(info.value)


@pytest.mark.parametrize(
    "geometry,what",
    [
        ({"spacing": (2.0, 1.0, 1.001)}, r"spacing \[2.0, 1.0, 1.0\] vs \[2.0, 1.0, 1.001\] mm"),
        ({"origin": (-10.0, 5.0, 3.1)}, r"origin \[-10.0, 5.0, 3.0\] vs \[-10.0, 5.0, 3.1\] mm"),
        ({"origin": (-10.0, 5.0, 3.0025)}, r"origin .* vs \[-10.0, 5.0, 3.0025\] mm"),  # > 2e-3
        ({"spacing": (2.0, 1.0003, 1.0)}, r"spacing \[2.0, 1.0, 1.0\] vs \[2.0, 1.0003, 1.0\]"),
        ({"direction": np.array([[0, 0, 1], [0, 0.8, 0.6], [1, 0.6, 0]])}, "direction"),
    ],
)
def test_mask_geometry_mismatch_names_both_files_and_what_differs(tmp_path, tools, geometry, what):
    csv = one_subject(tmp_path, tools, mask_geometry=geometry)
    mask, image = re.escape(str(tmp_path / "a_mask.nii.gz")), re.escape(str(tmp_path / "a.nii.gz"))
    fails(recipe(tmp_path, csv), f"^{mask} does not lie on the grid of {image}: {what}")


def test_small_geometry_differences_within_tolerance_are_accepted(tmp_path, tools):
    geometry = {"origin": (-10.0, 5.0, 3.0015), "spacing": (2.0, 1.00005, 1.0)}
    csv = one_subject(tmp_path, tools, mask_geometry=geometry)
    build_cache(recipe(tmp_path, csv), quiet=True)  # 1.5e-3 mm < 1e-3 x 2 mm; 5e-5 < 1e-4


def test_mask_shape_mismatch(tmp_path, tools):
    csv = one_subject(tmp_path, tools, mask=np.zeros((16, 24, 20)))
    fails(
        recipe(tmp_path, csv),
        r"a_mask.nii.gz does not lie on .*: shape \[16, 24, 24\] vs "
        r"\[16, 24, 20\]",
    )


def test_modalities_must_share_a_grid(tmp_path, tools):
    tools.save(tmp_path / "t1.nii.gz", tools.head())
    tools.save(tmp_path / "t2.nii.gz", tools.head(), spacing=(2.0, 1.1, 1.0))
    csv = tools.table(
        tmp_path / "t.csv",
        ["subject", "image", "modality"],
        [["a", "t1.nii.gz", "t1"], ["a", "t2.nii.gz", "t2"]],
    )
    fails(recipe(tmp_path, csv), r"t2.nii.gz does not lie on the grid of .*t1.nii.gz: spacing")


@pytest.mark.parametrize(
    "value,labels,shown", [(2, (0, 1), "2"), (0.5, (0, 1), "0.5"), (1, (0, 2), "1")]
)
def test_mask_values_outside_labels_name_the_mask_file_and_value(
    tmp_path, tools, value, labels, shown
):
    m = tools.lesion((16, 24, 24), [5, 6]).astype(np.float32) * value
    csv = one_subject(tmp_path, tools, mask=m)
    fails(
        recipe(tmp_path, csv, labels=labels),
        rf"^{re.escape(str(tmp_path / 'a_mask.nii.gz'))}: mask value {shown} is not one of the "
        rf"labels {re.escape(str(list(labels)))}",
    )


def test_more_labels_are_kept_as_values(tmp_path, tools):
    m = tools.lesion((16, 24, 24), [5, 6]) * 2 + tools.lesion((16, 24, 24), [7], y=(0, 2))
    csv = one_subject(tmp_path, tools, mask=m)
    r = build_cache(recipe(tmp_path, csv, labels=(0, 1, 2), in_plane="crop", size=24), True)
    assert r.manifest["labels"] == [0, 1, 2]
    ds = CacheDataset(tmp_path / "cache", None)
    values = set(np.unique(np.stack([ds[i]["mask"].numpy() for i in range(len(ds))])))
    assert values == {0, 1, 2}


def test_subjects_missing_what_the_recipe_needs(tmp_path, tools):
    tools.save(tmp_path / "b.nii.gz", tools.head(seed=3))
    plain = tools.table(tmp_path / "p.csv", ["subject", "image"], [["b", "b.nii.gz"]])
    fails(
        recipe(tmp_path, plain, z_from="mask"),
        r"p.csv:2: subject 'b' has no mask \(z_from: mask needs one\)",
    )
    fails(
        recipe(tmp_path, plain, class_from="source"),
        r"^class_from: 'source' needs a class for every subject; .*p.csv:2: subject 'b'",
    )
    csv = one_subject(tmp_path, tools)
    mixed = CacheRecipe(out=str(tmp_path / "c"), sources=(str(csv), str(plain)), n_bins=2)
    fails(mixed, r"p.csv:2: subject 'b' has no mask \(other subjects have one\)")
    empty = one_subject(tmp_path, tools, mask=np.zeros((16, 24, 24)), name="e")
    fails(recipe(tmp_path, empty, z_from="mask"), r"^z_from: .*e.nii.gz has no slice with mask > 0")


def test_the_same_scan_under_two_subjects_is_refused(tmp_path, tools):
    tools.save(tmp_path / "a.nii.gz", tools.head())
    tools.save(tmp_path / "copy.nii.gz", tools.head())
    csv = tools.table(
        tmp_path / "t.csv", ["subject", "image"], [["a", "a.nii.gz"], ["b", "copy.nii.gz"]]
    )
    fails(
        recipe(tmp_path, csv),
        r"^sources: subjects 'a' \(.*t.csv:2\) and 'b' \(.*t.csv:3\) "
        "have identical image files",
    )


def test_unusable_images_name_the_file(tmp_path, tools):
    csv = one_subject(tmp_path, tools, image=np.full((16, 24, 24), 7.0))
    fails(
        recipe(tmp_path, csv),
        r"a.nii.gz: cannot scale intensities \(percentile_scale: "
        "constant image",
    )
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not a nifti file at all")
    t = tools.table(tmp_path / "b.csv", ["subject", "image"], [["x", "broken.nii.gz"]])
    fails(recipe(tmp_path, t), r"broken.nii.gz: truncated or corrupt gzip")
    csv = one_subject(tmp_path, tools, name="thin")
    fails(
        recipe(tmp_path, csv, kind="pairs", thickness=40.0),
        r"^volume .*thin.nii.gz: thickness 40.0 mm exceeds",
    )


def test_reading_a_directory_that_is_not_a_cache_format_2(tmp_path):
    with pytest.raises(
        CacheError,
        match=rf"^{re.escape(str(tmp_path))}: not a MedGen cache "
        r"\(no manifest.json\)$",
    ):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{broken")
    with pytest.raises(CacheError, match="manifest.json: not valid JSON"):
        CacheDataset(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format_version": 1, "shards": []}))
    with pytest.raises(
        CacheError,
        match=rf"^{re.escape(str(tmp_path))}: cache format 1, this "
        r"medgen-data reads format 2; rebuild it with `medgen-train cache CONFIG`$",
    ):
        CacheDataset(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format_version": 3}))
    with pytest.raises(CacheError, match="cache format 3, .* upgrade medgen-data"):
        verify_cache(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps([1, 2]))
    with pytest.raises(CacheError, match="not a MedGen cache manifest"):
        read_manifest(tmp_path)


def test_empty_split_and_bad_dataset_arguments(tmp_path, subjects_csv):
    csv = subjects_csv(3, lesion_subjects=())
    build_cache(
        CacheRecipe(
            out=str(tmp_path / "c"), sources=(str(csv),), n_bins=2, size=16, test_fraction=0.3
        ),
        quiet=True,
    )
    with pytest.raises(
        CacheError,
        match=r"c: split 'val' is empty; this cache has the splits "
        r"train, test$",
    ):
        CacheDataset(tmp_path / "c", "val")
    with pytest.raises(CacheError, match="split 'validation' is empty"):
        CacheDataset(tmp_path / "c", ("train", "validation"))
    with pytest.raises(DataError, match="^modality_as: expected 'channels' or 'mode'"):
        CacheDataset(tmp_path / "c", modality_as="stack")
    with pytest.raises(DataError, match="^crop: applies to volumes caches only"):
        CacheDataset(tmp_path / "c", crop=(8, 8, 8))
    assert len(CacheDataset(tmp_path / "c", ("train", "test"))) == len(
        CacheDataset(tmp_path / "c", None)
    )


def test_a_second_builder_of_the_same_cache_is_refused(tmp_path):
    """Two builders would interleave shards and manifests: the second is refused, naming
    the first's pid, and the first's build is unaffected."""
    import multiprocessing
    import os

    from medgen.data.cache.atomic import exclusive

    out = tmp_path / "cache"
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()

    def hold():
        with exclusive(out):
            ready.set()
            release.wait(30)

    proc = ctx.Process(target=hold)
    proc.start()
    try:
        assert ready.wait(30)
        recipe = CacheRecipe(out=str(out), sources=("mni152",), size=16, n_bins=2,
                             z_range=(60, 70))  # fmt: skip
        with pytest.raises(CacheError, match=rf"another process \(pid {proc.pid}\) is building"):
            build_cache(recipe, quiet=True)
        assert not (out / "shards").exists()
    finally:
        release.set()
        proc.join(30)
    assert os.path.exists(out / ".lock")
    build_cache(recipe, quiet=True)  # free once the first is gone
