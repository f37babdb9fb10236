import json

import numpy as np
import pytest

from medgen.data import (
    CacheError,
    DataError,
    Volume,
    axial_slices,
    build_or_load,
    load_cache,
    quantize_z,
    write_cache,
)


def synthetic_volume(depth=30, side=24):
    """A ball whose radius varies with z, background -1."""
    z, y, x = np.mgrid[:depth, :side, :side].astype(np.float32)
    r = np.sqrt((y - side / 2) ** 2 + (x - side / 2) ** 2)
    radius = 3 + 6 * np.sin(np.pi * z / depth)
    img = np.where(r < radius, 0.5, -1.0).astype(np.float32)
    prob = np.clip((radius - r) / 3, 0, 1).astype(np.float32)
    geom = dict(spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=np.eye(3))
    return Volume(img, id="synthetic", **geom), Volume(prob, id="synthetic", **geom)


def test_axial_slices_filter_then_bin():
    img, prob = synthetic_volume()
    s = axial_slices(img, (5, 24), 4, 16, mask_probability=prob, class_id=1)
    assert len(s) == 20
    np.testing.assert_array_equal(s.z_index, np.arange(5, 25))
    np.testing.assert_array_equal(s.z_bin, [quantize_z(z, (5, 24), 4) for z in range(5, 25)])
    np.testing.assert_array_equal(s.token, s.z_bin + 4)
    assert s.images.shape == (20, 1, 16, 16) and s.images.dtype == np.float32
    assert s.masks.shape == (20, 1, 16, 16) and set(np.unique(s.masks)) <= {0, 1}
    assert s.images.min() >= -1 and s.images.max() <= 1
    assert s.counts_per_bin(4) == [5, 5, 5, 5]
    # the mask follows the ball: larger in the middle slices than at the ends
    area = s.masks.sum(axis=(1, 2, 3))
    assert area[10] > area[0] and area[10] > area[-1]


def test_axial_slices_errors():
    img, prob = synthetic_volume()
    with pytest.raises(DataError, match="z_range"):
        axial_slices(img, (5, 40), 4, 16)
    bad = Volume(prob.array * 2, prob.spacing, prob.origin, prob.direction, id="x")
    with pytest.raises(DataError, match=r"outside \[0, 1\]"):
        axial_slices(img, (5, 24), 4, 16, mask_probability=bad)


def test_cache_roundtrip_reuse_and_rebuild(tmp_path):
    img, prob = synthetic_volume()
    calls = []

    def build():
        calls.append(1)
        return axial_slices(img, (5, 24), 4, 16, mask_probability=prob)

    cfg = {"z_range": [5, 24], "n_bins": 4, "size": 16}
    a, manifest, reused = build_or_load(tmp_path, cfg, 4, build)
    assert not reused and len(calls) == 1
    b, _, reused = build_or_load(tmp_path, cfg, 4, build)
    assert reused and len(calls) == 1
    np.testing.assert_array_equal(a.images, b.images)
    assert manifest["counts_per_bin"] == [5, 5, 5, 5]
    assert manifest["shapes"]["images"] == [20, 1, 16, 16]
    _, _, reused = build_or_load(tmp_path, {**cfg, "size": 8}, 4, build)
    assert not reused and len(calls) == 2
    assert not list(tmp_path.glob(".*tmp*")), "temporary files left behind"


def test_cache_without_manifest_is_incomplete(tmp_path):
    img, _ = synthetic_volume()
    write_cache(tmp_path, axial_slices(img, (0, 9), 2, 8), {"k": 1}, 2)
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(CacheError, match="incomplete"):
        load_cache(tmp_path)


def test_cache_detects_tampering(tmp_path):
    img, _ = synthetic_volume()
    s = axial_slices(img, (0, 9), 2, 8)
    write_cache(tmp_path, s, {"k": 1}, 2)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["array_sha256"]["images"] = "0" * 64
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CacheError, match="hash mismatch for images"):
        load_cache(tmp_path)
