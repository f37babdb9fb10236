"""build_cache: shard arrays against independent references (SimpleITK, numpy, closed forms)."""

import dataclasses

import numpy as np
import pytest
import SimpleITK as sitk

from medgen.data import (
    CacheRecipe,
    DataError,
    Volume,
    axial_slices,
    build_cache,
    mni152_path,
    open_shard,
    percentile_scale,
    pseudonym,
    read_nifti,
    simulate_thick,
    thick_mask,
)


def sitk_array(path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float64)


def scaled(raw: np.ndarray, lo=0.5, hi=99.5) -> np.ndarray:
    """MR percentile scaling written out in numpy: [p_lo, p_hi] -> [-1, 1], clipped."""
    p0, p1 = np.percentile(raw, [lo, hi])
    return np.clip((raw - p0) / (p1 - p0), 0, 1) * 2 - 1


def shards_by_subject(report) -> dict:
    m = report.manifest
    return {e["subject"]: open_shard(report.directory, e) for e in m["shards"]}


@pytest.mark.parametrize("min_voxels,lesion_class", [(6, 1), (7, 0)])
def test_slices_match_numpy_scaling_local_bins_and_planted_classes(
    tmp_path, subjects_csv, min_voxels, lesion_class
):
    csv = subjects_csv(4, lesion_subjects=(0, 2))
    recipe = CacheRecipe(
        out=str(tmp_path / "c"),
        sources=(str(csv),),
        z_range=(2, 13),
        n_bins=4,
        size=24,
        in_plane="crop",
        class_from="mask",
        min_lesion_voxels=min_voxels,
    )
    shards = shards_by_subject(build_cache(recipe, quiet=True))
    z = np.arange(2, 14)
    for i in range(4):
        a = shards[pseudonym(f"subject:s{i}")]
        raw = sitk_array(tmp_path / f"s{i}.nii.gz")
        np.testing.assert_allclose(a["image"][:, 0], scaled(raw)[2:14], atol=2e-6)
        planted = np.isin(z, [5, 6, 7]) & (i in (0, 2))  # 3 x 2 = 6 voxels on slices 5-7
        np.testing.assert_array_equal(a["lesion_voxels"], np.where(planted, 6, 0))
        np.testing.assert_array_equal(
            a["mask"][:, 0], sitk_array(tmp_path / f"s{i}_mask.nii.gz")[2:14]
        )
        np.testing.assert_array_equal(a["z_index"], z)
        np.testing.assert_array_equal(a["z_bin"], np.minimum(3, (z - 2) * 4 // 11))
        np.testing.assert_array_equal(a["class_id"], np.where(planted, lesion_class, 0))
        np.testing.assert_array_equal(a["token"], a["z_bin"] + 4 * a["class_id"])
        assert a["image"].dtype == np.float32 and a["mask"].dtype == np.uint8


def test_fit_equals_axial_slices_and_nearest_exact_labels(tmp_path, subjects_csv):
    csv = subjects_csv(1, lesion_subjects=(0,), side=30)
    recipe = CacheRecipe(
        out=str(tmp_path / "c"),
        sources=(str(csv),),
        z_range=(1, 14),
        n_bins=5,
        size=16,
        foreground_threshold=-0.999,
    )
    (a,) = shards_by_subject(build_cache(recipe, quiet=True)).values()
    img = read_nifti(tmp_path / "s0.nii.gz")
    vol = dataclasses.replace(img, array=percentile_scale(img.array))
    ref = axial_slices(vol, (1, 14), 5, 16)
    np.testing.assert_array_equal(a["image"], ref.images)
    np.testing.assert_array_equal(a["z_bin"], ref.z_bin)
    # mask: the same foreground box, padded square with 0, output pixel i <- floor((i+.5) s/16)
    fg = (vol.array[1:15] > -0.999).any(0)
    rows, cols = np.flatnonzero(fg.any(1)), np.flatnonzero(fg.any(0))
    h, w = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    side = max(h, w)
    square = np.zeros((14, side, side), np.uint8)
    m = sitk_array(tmp_path / "s0_mask.nii.gz")[
        1:15, rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1
    ]
    square[:, (side - h) // 2 : (side - h) // 2 + h, (side - w) // 2 : (side - w) // 2 + w] = m
    src = np.floor((np.arange(16) + 0.5) * side / 16).astype(int)
    np.testing.assert_array_equal(a["mask"][:, 0], square[:, src][:, :, src])


def test_mni152_white_matter_is_a_probability_resized_bilinearly(tmp_path):
    recipe = CacheRecipe(
        out=str(tmp_path / "c"),
        sources=("mni152",),
        z_range=(40, 139),
        size=32,
        foreground_threshold=-0.999,
    )
    report = build_cache(recipe, quiet=True)
    (a,) = shards_by_subject(report).values()
    t1, wm = read_nifti(mni152_path("t1")), read_nifti(mni152_path("wm"))
    t1 = dataclasses.replace(t1, array=percentile_scale(t1.array))
    wm = dataclasses.replace(wm, array=wm.array / np.float32(255))
    ref = axial_slices(t1, (40, 139), 10, 32, mask_probability=wm)  # the 0.1 quickstart recipe
    np.testing.assert_array_equal(a["image"], ref.images)
    np.testing.assert_array_equal(a["mask"], ref.masks)
    np.testing.assert_array_equal(a["lesion_voxels"], (wm.array[40:140] > 0.5).sum((1, 2)))
    assert report.manifest["shards"][0]["subject"] == pseudonym("subject:mni152")


def test_modalities_are_channels_in_sorted_order(tmp_path, tools):
    img = tools.head(12, 20)
    tools.save(tmp_path / "a_t1.nii.gz", img)
    tools.save(tmp_path / "a_t2.nii.gz", 300.0 - img)
    csv = tools.table(
        tmp_path / "t.csv",
        ["subject", "image", "modality"],
        [["a", "a_t2.nii.gz", "t2"], ["a", "a_t1.nii.gz", "t1"]],
    )
    recipe = CacheRecipe(
        out=str(tmp_path / "c"), sources=(str(csv),), n_bins=2, size=20, in_plane="crop"
    )
    report = build_cache(recipe, quiet=True)
    (a,) = shards_by_subject(report).values()
    assert report.manifest["modalities"] == ["t1", "t2"] and a["image"].shape == (12, 2, 20, 20)
    np.testing.assert_allclose(a["image"][:, 0], scaled(img), atol=2e-6)
    np.testing.assert_allclose(a["image"][:, 1], scaled(300.0 - img), atol=2e-6)
    assert report.manifest["has_mask"] is False and "mask" not in a


def test_z_from_mask_and_foreground_select_the_closed_form_extent(tmp_path, tools):
    img = tools.head(16, 24)
    img[:3], img[-2:] = 0, 0
    tools.save(tmp_path / "a.nii.gz", img)
    tools.save(tmp_path / "a_mask.nii.gz", tools.lesion(img.shape, [5, 6, 7]))
    csv = tools.table(
        tmp_path / "t.csv", ["subject", "image", "mask"], [["a", "a.nii.gz", "a_mask.nii.gz"]]
    )
    base = CacheRecipe(out=str(tmp_path / "c"), sources=(str(csv),), n_bins=3, size=24)
    shard = shards_by_subject(build_cache(dataclasses.replace(base, z_from="mask"), quiet=True))
    np.testing.assert_array_equal(next(iter(shard.values()))["z_index"], [5, 6, 7])
    fg = dataclasses.replace(base, z_from="foreground", out=str(tmp_path / "d"))
    shard = shards_by_subject(build_cache(fg, quiet=True))
    np.testing.assert_array_equal(next(iter(shard.values()))["z_index"], np.arange(3, 14))
    with pytest.raises(DataError, match=r"^n_bins: 4 bins over the 3 slices of .*a.nii.gz \(z"):
        build_cache(dataclasses.replace(base, z_from="mask", n_bins=4), quiet=True)
    with pytest.raises(DataError, match=r"^z_range: \[2, 16\] lies outside the 16 axial slices"):
        build_cache(dataclasses.replace(base, z_range=(2, 16)), quiet=True)


def test_volumes_pad_and_crop_with_the_valid_box(tmp_path, subjects_csv):
    csv = subjects_csv(2, lesion_subjects=(1,))
    recipe = CacheRecipe(
        out=str(tmp_path / "c"),
        sources=(str(csv),),
        kind="volumes",
        z_range=(2, 13),
        shape=(16, 20, 20),
        class_from="mask",
    )
    report = build_cache(recipe, quiet=True)
    m = report.manifest
    assert m["n_bins"] == 1 and m["item_shape"] == [1, 16, 20, 20] and m["n_classes"] == 2
    for i in range(2):
        a = shards_by_subject(report)[pseudonym(f"subject:s{i}")]
        # z: 12 slices padded to 16 -> rows 2..13; y, x: 24 cropped to 20 from index 2
        np.testing.assert_array_equal(a["valid_box"], [[2, 14, 0, 20, 0, 20]])
        ref = scaled(sitk_array(tmp_path / f"s{i}.nii.gz"))[2:14, 2:22, 2:22]
        np.testing.assert_allclose(a["image"][0, 0, 2:14], ref, atol=2e-6)
        assert (a["image"][0, 0, :2] == -1).all() and (a["image"][0, 0, 14:] == -1).all()
        mask = sitk_array(tmp_path / f"s{i}_mask.nii.gz")[2:14, 2:22, 2:22]
        np.testing.assert_array_equal(a["mask"][0, 0, 2:14], mask)
        assert a["class_id"].tolist() == [i] and a["token"].tolist() == [i]
        assert a["lesion_voxels"].tolist() == [18 * i]


def test_pairs_are_simulate_thick_of_the_thin_volume_per_channel(tmp_path, subjects_csv, tools):
    csv = subjects_csv(1, lesion_subjects=(0,))
    recipe = CacheRecipe(
        out=str(tmp_path / "c"),
        sources=(str(csv),),
        kind="pairs",
        z_range=(2, 13),
        size=24,
        in_plane="crop",
        thickness=4.0,
        profile="gaussian",
    )
    report = build_cache(recipe, quiet=True)
    (a,) = shards_by_subject(report).values()
    thin = scaled(sitk_array(tmp_path / "s0.nii.gz"))[2:14].astype(np.float32)
    np.testing.assert_allclose(a["thin"][0, 0], thin, atol=2e-6)
    g = dict(spacing=tools.SPACING, origin=(0.0, 0.0, 0.0), direction=np.eye(3))
    thick = simulate_thick(Volume(a["thin"][0, 0], **g), 4.0, profile="gaussian").array
    np.testing.assert_array_equal(a["thick"][0, 0], thick)
    assert a["thick"].shape == (1, 1, 6, 24, 24)  # floor((12 * 2 - 4) / 4) + 1 slabs
    lab = Volume(a["thin_label"][0, 0], **g)
    np.testing.assert_array_equal(a["thick_label"][0, 0], thick_mask(lab, 4.0).array)
    assert report.manifest["shards"][0]["spacing"] == [2.0, 1.0, 1.0]


def test_spacing_resamples_like_simpleitk(tmp_path, subjects_csv):
    csv = subjects_csv(1, lesion_subjects=(0,))
    # 16 x 24 x 24 at (2, 1, 1) mm -> (3, 1.5, 1.5) mm: floor((n - 1) s / t) + 1 = 11, 16, 16
    # (off the input grid, so nearest and linear differ on the mask)
    recipe = CacheRecipe(
        out=str(tmp_path / "c"),
        sources=(str(csv),),
        kind="volumes",
        spacing=(3.0, 1.5, 1.5),
        shape=(11, 16, 16),
    )
    (a,) = shards_by_subject(build_cache(recipe, quiet=True)).values()
    assert a["valid_box"].tolist() == [[0, 11, 0, 16, 0, 16]]

    def sitk_resample(path, how):
        image = sitk.ReadImage(str(path), sitk.sitkFloat32)
        out = sitk.Resample(
            image,
            [16, 16, 11],
            sitk.Transform(),
            how,
            image.GetOrigin(),
            [1.5, 1.5, 3.0],
            image.GetDirection(),
            0.0,
            sitk.sitkFloat32,
        )
        return sitk.GetArrayFromImage(out).astype(np.float64)

    ref = scaled(sitk_resample(tmp_path / "s0.nii.gz", sitk.sitkLinear))
    np.testing.assert_allclose(a["image"][0, 0], ref, atol=2e-6)
    mask = sitk_resample(tmp_path / "s0_mask.nii.gz", sitk.sitkNearestNeighbor)
    np.testing.assert_array_equal(a["mask"][0, 0], mask)


def test_orientation_comes_first_and_matches_simpleitk_dicomorient(tmp_path, subjects_csv):
    csv = subjects_csv(1, lesion_subjects=(0,))
    recipe = CacheRecipe(
        out=str(tmp_path / "c"),
        sources=(str(csv),),
        kind="volumes",
        orientation="RAS",
        shape=(16, 24, 24),
    )
    (a,) = shards_by_subject(build_cache(recipe, quiet=True)).values()
    for name, key in (("s0.nii.gz", "image"), ("s0_mask.nii.gz", "mask")):
        ras = sitk.DICOMOrient(sitk.ReadImage(str(tmp_path / name), sitk.sitkFloat32), "RAS")
        ref = sitk.GetArrayFromImage(ras).astype(np.float64)
        ref = scaled(ref) if key == "image" else ref
        np.testing.assert_allclose(a[key][0, 0], ref, atol=2e-6)
    raw = sitk_array(tmp_path / "s0_mask.nii.gz")
    assert not np.array_equal(raw, a["mask"][0, 0])  # LPS -> RAS flips x and y
