"""The demo data set: lesions only where the masks say, DICOM on the masks' grid, a cache."""

import csv

import numpy as np
import pytest

from medgen.data import CacheDataset, CacheRecipe, DataError, build_cache, read_volume
from medgen.data.cache.load import grid_difference
from medgen.data.synthetic.phantoms import write_demo_dataset

KW = dict(n_subjects=3, spacing_mm=4.0, dicom_subjects=1, seed=2)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    with_lesions = write_demo_dataset(root / "a", lesion_fraction=0.67, **KW)
    without = write_demo_dataset(root / "b", lesion_fraction=0.0, **KW)
    return with_lesions, without


def rows(table):
    with table.open() as fh:
        return list(csv.DictReader(fh))


def test_table_lists_every_subject_with_class_and_an_empty_split(demo):
    table, _ = demo
    r = rows(table)
    assert [x["subject"] for x in r] == ["sub-001", "sub-002", "sub-003"]
    assert sorted(x["class"] for x in r) == ["0", "1", "1"] and {x["split"] for x in r} == {""}
    assert r[2]["image"] == "sub-003_t1" and (table.parent / "sub-003_t1").is_dir()
    assert all(x["image"].endswith(".nii.gz") for x in r[:2])


def test_lesion_voxels_are_exactly_where_the_masks_say(demo):
    table, control_table = demo
    for row, ctrl in zip(rows(table), rows(control_table), strict=True):
        image = read_volume(table.parent / row["image"])
        mask = read_volume(table.parent / row["mask"])
        plain = read_volume(control_table.parent / ctrl["image"])
        assert set(np.unique(mask.array)) <= {0.0, 1.0}  # binary
        assert grid_difference(image, mask) == ""  # DICOM or NIfTI: the mask's grid
        changed = image.array != plain.array
        lesion = mask.array > 0
        assert not (changed & ~lesion).any(), "intensity changed outside the lesion mask"
        if row["class"] == "1":
            assert lesion.sum() > 0 and changed[lesion].mean() > 0.99
            brain = plain.array > np.percentile(plain.array, 60)
            hi = np.percentile(image.array[brain & ~lesion], 99)
            assert image.array[lesion].mean() > 1.1 * hi  # hyperintense
        else:
            assert not lesion.any() and not changed.any()


def test_dicom_geometry_equals_the_nifti_mask(demo):
    table, _ = demo
    row = rows(table)[2]
    image, mask = read_volume(table.parent / row["image"]), read_volume(table.parent / row["mask"])
    assert image.meta.get("modality", "MR") and image.shape == mask.shape
    np.testing.assert_allclose(image.spacing, mask.spacing, rtol=1e-6)
    np.testing.assert_allclose(image.origin, mask.origin, atol=1e-4)
    np.testing.assert_allclose(image.direction, mask.direction, atol=1e-6)


def test_deterministic_in_the_seed(demo, tmp_path):
    table, _ = demo
    again = write_demo_dataset(tmp_path / "again", lesion_fraction=0.67, **KW)
    other = write_demo_dataset(tmp_path / "other", lesion_fraction=0.67, **{**KW, "seed": 3})
    a, b = (read_volume(t.parent / "sub-001_t1.nii.gz").array for t in (table, again))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, read_volume(other.parent / "sub-001_t1.nii.gz").array)


def test_the_table_builds_a_cache_with_a_stratified_split(demo, tmp_path):
    table, _ = demo
    recipe = CacheRecipe(
        out=str(tmp_path / "cache"),
        sources=(str(table),),
        z_from="foreground",
        n_bins=5,
        size=32,
        class_from="source",
        val_fraction=0.3,
    )
    m = build_cache(recipe, quiet=True).manifest
    assert m["n_classes"] == 2 and m["has_mask"] and set(m["splits"]) == {"train", "val"}
    ds = CacheDataset(tmp_path / "cache")
    assert ds[0]["image"].shape == (1, 32, 32) and ds[0]["mask"].shape == (1, 32, 32)


def test_bad_arguments_name_the_argument(tmp_path):
    with pytest.raises(DataError, match="^dicom_subjects: expected 0..2"):
        write_demo_dataset(tmp_path, 2, dicom_subjects=3)
    with pytest.raises(DataError, match="^n_subjects: expected an integer >= 1"):
        write_demo_dataset(tmp_path, 0)
    with pytest.raises(DataError, match="^lesion_fraction: expected a fraction"):
        write_demo_dataset(tmp_path, 2, lesion_fraction=1.5)
