"""CacheRecipe.check(): every bad key is one DataError line that starts with the key."""

import dataclasses

import pytest

from medgen.data import CacheRecipe, DataError
from medgen.data.cache.recipe import LOCATION_FIELDS, SPLIT_FIELDS

GOOD = CacheRecipe(out="cache", sources=("mni152",))

BAD = [
    ({"out": ""}, "out: the cache directory is required"),
    ({"kind": "slice"}, r"kind: expected one of 'slices', 'volumes', 'pairs', got 'slice'"),
    ({"sources": ()}, "sources: list at least one"),
    ({"sources": ("",)}, r"sources\[0\]: expected a non-empty path"),
    ({"modalities": ("t1", "t1")}, "modalities: names must be unique"),
    ({"labels": ()}, "labels: list the mask values"),
    ({"labels": (1, 2)}, r"labels: must include 0 \(background\), got \[1, 2\]"),
    ({"labels": (0, 256)}, r"labels: expected integers in \[0, 255\]"),
    ({"labels": (0, 1.5)}, "labels: expected integers"),
    ({"orientation": "lps"}, "orientation: expected one of"),
    ({"spacing": (1.0, 0.0, 1.0)}, "spacing: expected 3 positive numbers"),
    ({"spacing": (1.0, 1.0)}, "spacing: expected 3 positive numbers"),
    ({"window": "liver"}, "window: expected one of"),
    ({"percentiles": (50.0, 50.0)}, r"percentiles: expected \(lo, hi\) with 0 <= lo < hi <= 100"),
    ({"percentiles": (-1.0, 99.0)}, "percentiles:"),
    ({"z_from": "brain"}, "z_from: expected one of 'range', 'mask', 'foreground'"),
    ({"z_range": (10, 5)}, r"z_range: expected \[z0, z1\] with 0 <= z0 <= z1"),
    ({"z_range": (-1, 5)}, "z_range:"),
    ({"z_range": (0, 20), "z_from": "mask"}, "z_range: applies to z_from: range only"),
    (
        {"z_range": (5, 14), "n_bins": 20},
        r"n_bins: 20 bins over the 10 slices of z_range \[5, 14\]",
    ),
    ({"n_bins": 0}, "n_bins: expected an integer >= 1, got 0"),
    ({"n_bins": True}, "n_bins: expected an integer"),
    ({"size": 4}, "size: expected an integer >= 8, got 4"),
    ({"in_plane": "resize"}, "in_plane: expected one of 'fit', 'crop'"),
    ({"class_from": "table"}, "class_from: expected one of 'none', 'mask', 'source'"),
    ({"min_lesion_voxels": 0}, "min_lesion_voxels: expected an integer >= 1"),
    ({"val_fraction": 1.0}, r"val_fraction: expected a fraction in \[0, 1\)"),
    ({"test_fraction": -0.1}, "test_fraction: expected a fraction"),
    ({"val_fraction": 0.5, "test_fraction": 0.5}, "val_fraction: .* = 1 leaves no training"),
    ({"split_seed": -1}, "split_seed: expected an integer >= 0"),
    ({"shape": (64, 64)}, "shape: expected 3 positive integers"),
    ({"shape": (64, 0, 64)}, "shape: expected 3 positive integers"),
    ({"thickness": 0.0}, "thickness: expected a positive number"),
    ({"thick_spacing": -2.0}, "thick_spacing: expected a positive number"),
    ({"profile": "triangle"}, "profile: expected one of 'box', 'gaussian'"),
]


@pytest.mark.parametrize("change,message", BAD, ids=[m.split(":")[0] for _, m in BAD])
def test_check_names_the_key_on_one_line(change, message):
    recipe = dataclasses.replace(GOOD, **change)
    with pytest.raises(DataError, match=f"^{message}") as info:
        recipe.check()
    assert "\n" not in str(info.value)


def test_good_recipes_pass_and_n_bins_only_limits_slices():
    assert GOOD.check() is GOOD
    dataclasses.replace(GOOD, kind="volumes", z_range=(5, 14), n_bins=20).check()
    dataclasses.replace(GOOD, z_range=(5, 14), n_bins=10).check()
    dataclasses.replace(GOOD, window="brain", spacing=(1, 1, 1), thick_spacing=2.5).check()


def test_lists_become_tuples_and_processing_leaves_out_location_and_split():
    r = CacheRecipe(out="c", sources=["a.nii.gz"], labels=[0, 1, 2], z_range=[0, 9])
    assert r.sources == ("a.nii.gz",) and r.labels == (0, 1, 2) and r.z_range == (0, 9)
    keys = set(r.processing())
    assert not keys & {*LOCATION_FIELDS, *SPLIT_FIELDS}
    assert keys | {*LOCATION_FIELDS, *SPLIT_FIELDS} == {f.name for f in dataclasses.fields(r)}
    assert r.n_bins_stored == 10 and dataclasses.replace(r, kind="pairs").n_bins_stored == 1
