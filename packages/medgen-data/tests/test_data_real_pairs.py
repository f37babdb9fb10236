"""Real thick / thin pairs: a subject table's ``thick`` column in a pairs cache.

The thick series are made with ``simulate_thick`` from the thin raw volume and written with a
KNOWN geometry (first slab centre c_0 along the slice axis, spacing S), so a real-pairs cache
must reproduce the simulated cache exactly; in-plane shifts / other spacings are checked
against a SimpleITK resampling done here; centres against ``np.interp``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from medgen.data import (
    CacheDataset,
    CacheRecipe,
    DataError,
    PairVolumes,
    Volume,
    build_cache,
    open_shard,
    pseudonym,
    simulate_thick,
    thick_mask,
    thick_to_thin,
    window,
    write_nifti,
)
from medgen.data.cache.shards import MANIFEST, SHARDS, write_shard
from medgen.data.sitk_image import to_sitk
from medgen.data.slicing.thick import slab_centres
from medgen.data.slicing.thin_grid import centres_to_thin, positions_from_centres
from medgen.data.synthetic.dicom import write_series

DEPTH, SIDE, S_THIN = 20, 16, 1.0
SPACING = (S_THIN, 0.9, 1.1)
ORIGIN = (12.0, -7.0, 3.5)
THICKNESS, THICK_SPACING = 4.0, 3.0
WINDOW = "soft_tissue"  # [-160, 240] HU: the values below stay inside, so windowing is linear


def _thin(seed: int = 0, direction=None) -> Volume:
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.arange(n) for n in (DEPTH, SIDE, SIDE)), indexing="ij")
    hu = 40 + 80 * np.sin(z / 3.0) + 4 * y - 3 * x + rng.normal(0, 10, z.shape)
    hu[:, :3, :] = -150  # a dark band: "fit" crops it away
    hu = np.clip(hu, -150, 230).astype(np.float32)
    return Volume(hu, SPACING, ORIGIN, np.eye(3) if direction is None else np.asarray(direction))


def _thick(thin: Volume) -> Volume:
    return simulate_thick(thin, THICKNESS, THICK_SPACING)


def _table(root: Path, rows: list[list[str]], thick: bool = True, mask: bool = False) -> Path:
    path = root / "subjects.csv"
    header = ["subject", "image"] + (["thick"] if thick else []) + (["mask"] if mask else [])
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _recipe(root: Path, table: Path, name: str, **kw) -> CacheRecipe:
    fields = dict(
        out=str(root / name),
        kind="pairs",
        sources=(str(table),),
        window=WINDOW,
        size=SIDE,
        in_plane="crop",
        thickness=THICKNESS,
        thick_spacing=THICK_SPACING,
    )
    return CacheRecipe(**{**fields, **kw})


def _build(root: Path, rows, name: str, thick: bool = True, mask: bool = False, **kw) -> Path:
    build_cache(_recipe(root, _table(root, rows, thick, mask), name, **kw), quiet=True)
    return root / name


# ---------------------------------------------------------------- thin_grid: positions, centres


def test_centres_to_thin_linear_is_np_interp():
    rng = np.random.default_rng(1)
    centres = np.cumsum(rng.uniform(0.7, 4.0, 6)) - 2.0  # uneven, first one before slice 0
    thick = rng.normal(size=(2, 6, 3, 4))
    n, s = 17, 0.8
    got = centres_to_thin(thick, n, s, centres, "linear")
    x = s * np.arange(n)
    want = np.apply_along_axis(lambda v: np.interp(x, centres, v), 1, thick)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    u = positions_from_centres(n, s, centres)
    np.testing.assert_allclose(u, np.interp(x, centres, np.arange(6.0)), atol=0)


def test_centres_to_thin_uniform_equals_recipe_geometry():
    rng = np.random.default_rng(2)
    n, s = 23, 1.0
    centres = slab_centres(n, s, THICKNESS, THICK_SPACING)
    thick = rng.normal(size=(1, len(centres), 2, 2))
    for kind in ("linear", "cubic"):
        np.testing.assert_allclose(
            centres_to_thin(thick, n, s, centres, kind),
            thick_to_thin(thick, n, s, THICKNESS, THICK_SPACING, kind),
            atol=1e-12,
        )
    with pytest.raises(DataError, match="cubic.*evenly spaced"):
        centres_to_thin(thick, n, s, centres + np.linspace(0, 0.1, len(centres)) ** 2, "cubic")
    with pytest.raises(DataError, match="strictly increasing"):
        positions_from_centres(n, s, centres[::-1])


# ------------------------------------------------------------------- real thick == simulated


@pytest.mark.parametrize(
    ("in_plane", "scaling"),
    [
        ("crop", {}),
        ("fit", {}),
        ("crop", {"window": "", "percentiles": (0.0, 100.0)}),
        ("crop", {"spacing": (1.0, 1.8, 2.2), "size": 8}),  # recipe resampling: 16 -> 8 in-plane
    ],
)
def test_real_thick_reproduces_simulated_cache(tmp_path, in_plane, scaling):
    """percentiles (0, 100) never clip: scaling commutes with the slab average, so the thick
    series must be scaled with the THIN image's percentile values to match."""
    thin = _thin()
    write_nifti(thin, tmp_path / "a.nii.gz")
    write_nifti(_thick(thin), tmp_path / "a_thick.nii.gz")
    labels = np.zeros(thin.shape, np.float32)
    labels[8:11, 6:10, 5:9] = 1  # z 8..10: thick slabs (nearest thin 1, 4, 7, 10, ..) hit 10
    write_nifti(Volume(labels, SPACING, ORIGIN, np.eye(3)), tmp_path / "a_m.nii.gz")
    kw = {"in_plane": in_plane, "size": 12 if in_plane == "fit" else SIDE, **scaling}
    sim = _build(tmp_path, [["a", "a.nii.gz", "a_m.nii.gz"]], "sim", False, True, **kw)
    row = ["a", "a.nii.gz", "a_thick.nii.gz", "a_m.nii.gz"]
    real = _build(tmp_path, [row], "real", mask=True, **kw)
    a, b = CacheDataset(sim, None), CacheDataset(real, None)
    assert a[0]["thick_label"].sum() > 0
    np.testing.assert_array_equal(a[0]["thick_label"], b[0]["thick_label"])
    thin_label = Volume(b[0]["thin_label"][0].numpy(), SPACING, ORIGIN, np.eye(3))
    nearest = thick_mask(thin_label, THICKNESS, THICK_SPACING).array
    np.testing.assert_array_equal(b[0]["thick_label"][0], nearest)
    np.testing.assert_allclose(a.stored(0, "thick_z"), b.stored(0, "thick_z"), atol=1e-6)
    np.testing.assert_allclose(b.stored(0, "thick_z"), slab_centres(DEPTH, 1.0, 4.0, 3.0))
    np.testing.assert_allclose(a[0]["thick"], b[0]["thick"], atol=2e-6)
    for prior in ("linear", "cubic"):
        pa, pb = PairVolumes(a, prior=prior)[0], PairVolumes(b, prior=prior)[0]
        np.testing.assert_allclose(pa["image"], pb["image"], atol=0)
        np.testing.assert_allclose(pa["thick"], pb["thick"], atol=2e-6)


def test_mixed_table_and_z_range_keep_thick_slices_inside(tmp_path):
    """One subject with a real series, one simulated; z_range keeps thin slices [3, 16]: the
    real centres are re-based to slice 3 and only those inside the kept extent stay."""
    for sid, seed in (("a", 0), ("b", 1)):
        write_nifti(_thin(seed), tmp_path / f"{sid}.nii.gz")
    write_nifti(_thick(_thin(0)), tmp_path / "a_thick.nii.gz")
    rows = [["a", "a.nii.gz", "a_thick.nii.gz"], ["b", "b.nii.gz", ""]]
    cache = _build(tmp_path, rows, "mixed", z_range=(3, 16))
    ds = CacheDataset(cache, None)
    by_subject = dict(zip(ds.subjects(), range(len(ds)), strict=True))
    i_a, i_b = by_subject[pseudonym("subject:a")], by_subject[pseudonym("subject:b")]
    full = slab_centres(DEPTH, 1.0, THICKNESS, THICK_SPACING) - 3.0
    kept = full[(full >= -0.5) & (full <= 13.5)]
    np.testing.assert_allclose(ds.stored(i_a, "thick_z"), kept)
    np.testing.assert_allclose(ds.stored(i_b, "thick_z"), slab_centres(14, 1.0, 4.0, 3.0))
    expected = window(_thick(_thin(0)).array, preset=WINDOW)[(full >= -0.5) & (full <= 13.5)]
    np.testing.assert_allclose(ds[i_a]["thick"][0], expected, atol=2e-6)
    item = PairVolumes(ds)[i_a]
    x = np.arange(14.0)
    want = np.apply_along_axis(lambda v: np.interp(x, kept, v), 0, expected)
    np.testing.assert_allclose(item["thick"][0], want, atol=2e-6)


# ------------------------------------------------------------------------- in-plane resampling


def test_in_plane_shift_and_spacing_are_resampled_onto_the_thin_grid(tmp_path):
    thin = _thin()
    write_nifti(thin, tmp_path / "a.nii.gz")
    sim = _thick(thin)
    # another in-plane grid: coarser, shifted by a fraction of a voxel, a different size
    coarse = sitk.Resample(
        to_sitk(sim),
        [13, 14, sim.shape[0]],
        sitk.Transform(),
        sitk.sitkLinear,
        [sim.origin[0], sim.origin[1] - 0.55, sim.origin[2] + 0.37],  # in-plane (LPS y, z)
        [1.3, 1.2, sim.spacing[0]],
        to_sitk(sim).GetDirection(),
        -150.0,
        sitk.sitkFloat32,
    )
    sitk.WriteImage(coarse, str(tmp_path / "a_thick.nii.gz"))
    cache = _build(tmp_path, [["a", "a.nii.gz", "a_thick.nii.gz"]], "shifted")
    got = CacheDataset(cache, None)[0]["thick"][0].numpy()
    # reference: one 3D SimpleITK resampling onto (thin in-plane grid) x (the thick slices)
    back = sitk.Resample(
        sitk.ReadImage(str(tmp_path / "a_thick.nii.gz"), sitk.sitkFloat32),
        [SIDE, SIDE, sim.shape[0]],
        sitk.Transform(),
        sitk.sitkLinear,
        list(sim.origin),
        [SPACING[2], SPACING[1], sim.spacing[0]],
        to_sitk(sim).GetDirection(),
        float(sitk.GetArrayFromImage(coarse).min()),
        sitk.sitkFloat32,
    )
    want = window(sitk.GetArrayFromImage(back), preset=WINDOW)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert not np.allclose(got, window(sim.array, preset=WINDOW), atol=1e-2)  # it did move


def test_reversed_slice_order_is_flipped(tmp_path):
    thin = _thin()
    write_nifti(thin, tmp_path / "a.nii.gz")
    sim = _thick(thin)
    d = np.eye(3)
    d[:, 0] *= -1
    last = np.asarray(sim.origin) + np.eye(3)[:, 0] * sim.spacing[0] * (sim.shape[0] - 1)
    rev = Volume(sim.array[::-1].copy(), sim.spacing, tuple(last), d)
    write_nifti(rev, tmp_path / "a_thick.nii.gz")
    cache = _build(tmp_path, [["a", "a.nii.gz", "a_thick.nii.gz"]], "rev")
    ds = CacheDataset(cache, None)
    np.testing.assert_allclose(ds.stored(0, "thick_z"), slab_centres(DEPTH, 1.0, 4.0, 3.0))
    np.testing.assert_allclose(ds[0]["thick"][0], window(sim.array, preset=WINDOW), atol=2e-6)


def test_dicom_thick_series(tmp_path):
    """Thin NIfTI, thick written as a DICOM series (int16 HU + intercept): the same frame."""
    perm = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # DICOM axial axes
    thin = _thin(direction=perm)
    write_nifti(thin, tmp_path / "a.nii.gz")
    sim = _thick(thin)
    stored = np.rint(sim.array + 1024).astype(np.int16)
    write_series(
        tmp_path / "a_thick",
        stored,
        spacing=(THICK_SPACING, SPACING[1], SPACING[2]),
        origin=sim.origin,
        intercept=-1024.0,
    )
    cache = _build(tmp_path, [["a", "a.nii.gz", "a_thick"]], "dicom")
    ds = CacheDataset(cache, None)
    np.testing.assert_allclose(ds.stored(0, "thick_z"), slab_centres(DEPTH, 1.0, 4.0, 3.0), 1e-5)
    want = window(stored.astype(np.float32) - 1024, preset=WINDOW)
    np.testing.assert_allclose(ds[0]["thick"][0], want, atol=1e-5)


# ---------------------------------------------------------------------------------- refusals


def _refused(tmp_path, thick: Volume, match: str, **kw):
    write_nifti(_thin(), tmp_path / "a.nii.gz")
    write_nifti(thick, tmp_path / "a_thick.nii.gz")
    with pytest.raises(DataError, match=match) as err:
        _build(tmp_path, [["a", "a.nii.gz", "a_thick.nii.gz"]], "bad", **kw)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "bad" / MANIFEST).exists()
    return str(err.value)


def test_tilted_thick_series_is_refused(tmp_path):
    sim = _thick(_thin())
    angle = np.deg2rad(5.0)  # cosine 0.9962 < 0.999
    c, s = np.cos(angle), np.sin(angle)
    tilt = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    message = _refused(tmp_path, Volume(sim.array, sim.spacing, sim.origin, tilt), "not parallel")
    assert "subject 'a'" in message and "a_thick.nii.gz" in message


def test_slightly_tilted_within_tolerance_is_accepted(tmp_path):
    """A 1 degree tilt (cosine 0.99985): each centre is where the tilted plane crosses the thin
    slice axis at the thin field of view's centre, found here with SimpleITK's own index map."""
    sim = _thick(_thin())
    angle = np.deg2rad(1.0)
    c, s = np.cos(angle), np.sin(angle)
    tilt = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    write_nifti(_thin(), tmp_path / "a.nii.gz")
    write_nifti(Volume(sim.array, sim.spacing, sim.origin, tilt), tmp_path / "a_thick.nii.gz")
    cache = _build(tmp_path, [["a", "a.nii.gz", "a_thick.nii.gz"]], "ok")
    ds = CacheDataset(cache, None)
    assert ds[0]["thick"].shape[1] == sim.shape[0]
    image = sitk.ReadImage(str(tmp_path / "a_thick.nii.gz"))
    centre = np.asarray(ORIGIN) + np.array([0.0, 7.5 * SPACING[1], 7.5 * SPACING[2]])

    def index(z: float) -> float:  # continuous slice index of the thin axis point at z mm
        point = centre + z * np.array([1.0, 0.0, 0.0])
        return image.TransformPhysicalPointToContinuousIndex(point.tolist())[2]

    i0, i1 = index(0.0), index(1.0)
    want = (np.arange(sim.shape[0]) - i0) / (i1 - i0)
    np.testing.assert_allclose(ds.stored(0, "thick_z"), want, atol=1e-4)
    assert np.abs(want - slab_centres(DEPTH, 1.0, 4.0, 3.0)).max() > 0.05  # the tilt counts


def test_non_overlapping_thick_series_is_refused(tmp_path):
    sim = _thick(_thin())
    far = (sim.origin[0] + 100.0, *sim.origin[1:])  # 100 mm along the slice axis
    message = _refused(tmp_path, Volume(sim.array, sim.spacing, far, np.eye(3)), "no thick slice")
    assert "subject 'a'" in message and "a_thick.nii.gz" in message


def test_thick_column_needs_kind_pairs(tmp_path):
    message = _refused(tmp_path, _thick(_thin()), "column 'thick'", kind="slices", n_bins=2)
    assert "subjects.csv" in message and "pairs" in message


def test_thick_column_needs_one_modality(tmp_path):
    thin = _thin()
    for name in ("a_ct", "a_ce"):
        write_nifti(thin, tmp_path / f"{name}.nii.gz")
    write_nifti(_thick(thin), tmp_path / "a_thick.nii.gz")
    table = tmp_path / "two.csv"
    table.write_text(
        "subject,image,modality,thick\n"
        "a,a_ct.nii.gz,ct,a_thick.nii.gz\na,a_ce.nii.gz,ce,a_thick.nii.gz\n"
    )
    with pytest.raises(DataError, match=r"two\.csv: column 'thick'.*one modality") as err:
        build_cache(_recipe(tmp_path, table, "two"), quiet=True)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "two" / MANIFEST).exists()


def test_thick_series_is_part_of_the_shard_key(tmp_path):
    """Another thick file for the same thin image must rebuild the shard, not reuse it."""
    thin = _thin()
    write_nifti(thin, tmp_path / "a.nii.gz")
    write_nifti(_thick(thin), tmp_path / "a_thick.nii.gz")
    rows = [["a", "a.nii.gz", "a_thick.nii.gz"]]
    recipe = _recipe(tmp_path, _table(tmp_path, rows), "key")
    first = build_cache(recipe, quiet=True)
    write_nifti(
        simulate_thick(thin, THICKNESS, THICK_SPACING, "gaussian"), tmp_path / "a_thick.nii.gz"
    )
    second = build_cache(recipe, quiet=True)
    assert second.built and second.built != first.built and not second.reused


# --------------------------------------------------------------------------------- old caches


def _rewrite_shard(cache: Path, edit) -> None:
    """Replace the single shard's arrays by ``edit(arrays)`` (sidecar and manifest updated)."""
    manifest = json.loads((cache / MANIFEST).read_text())
    entry = manifest["shards"][0]
    arrays = edit({k: np.array(v) for k, v in open_shard(cache, entry).items()})
    skip = ("sha256", "bytes", "shapes", "dtypes", "file", "n_items", "split")
    side = write_shard(
        cache / SHARDS, entry["file"], arrays, {k: v for k, v in entry.items() if k not in skip}
    )
    manifest["shards"][0] = {**side, "split": entry["split"]}
    (cache / MANIFEST).write_text(json.dumps(manifest))


def test_cache_without_thick_z_falls_back_to_the_recipe_geometry(tmp_path):
    write_nifti(_thin(), tmp_path / "a.nii.gz")
    cache = _build(tmp_path, [["a", "a.nii.gz"]], "old", thick=False)
    new = PairVolumes(CacheDataset(cache, None), prior="cubic")[0]["thick"]
    # as a cache built before thick_z existed
    _rewrite_shard(cache, lambda arrays: {k: v for k, v in arrays.items() if k != "thick_z"})
    old = CacheDataset(cache, None)
    assert old.stored(0, "thick_z") is None
    pairs = PairVolumes(old, prior="cubic")
    got = pairs[0]["thick"]
    raw = pairs.raw(0)
    want = thick_to_thin(raw["thick"], DEPTH, 1.0, THICKNESS, THICK_SPACING, "cubic")
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_allclose(got, new, atol=1e-6)
    np.testing.assert_allclose(raw["thick_z"], slab_centres(DEPTH, 1.0, 4.0, 3.0))


def test_uneven_centres_linear_only(tmp_path):
    """Readers refuse uneven series today; a shard holding uneven centres still reads with
    prior linear (np.interp) and refuses cubic in one line naming the subject."""
    write_nifti(_thin(), tmp_path / "a.nii.gz")
    cache = _build(tmp_path, [["a", "a.nii.gz"]], "uneven", thick=False)
    uneven = slab_centres(DEPTH, 1.0, 4.0, 3.0) + np.array([0, 0.4, 0, -0.3, 0, 0.2])

    def edit(arrays):
        return {**arrays, "thick_z": uneven[None]}

    _rewrite_shard(cache, edit)
    ds = CacheDataset(cache, None)
    item = PairVolumes(ds, prior="linear")[0]
    thick = ds[0]["thick"][0].numpy()
    want = np.apply_along_axis(lambda v: np.interp(np.arange(20.0), uneven, v), 0, thick)
    np.testing.assert_allclose(item["thick"][0], want, atol=2e-6)
    with pytest.raises(DataError, match=f"subject {pseudonym('subject:a')}.*cubic") as err:
        PairVolumes(ds, prior="cubic")[0]
    assert "\n" not in str(err.value)
