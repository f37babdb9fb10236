import gzip

import numpy as np
import pytest
import SimpleITK as sitk

from medgen.data import DataError, mni152_path, read_nifti

nib = pytest.importorskip("nibabel")


def test_mni_t1_matches_nibabel():
    """Independent reader: nibabel's array is (x, y, z) in RAS voxel order; ours is (z, y, x)."""
    path = mni152_path("t1")
    vol = read_nifti(path)
    ref = nib.load(str(path))
    np.testing.assert_array_equal(vol.array, np.asarray(ref.dataobj, np.float32).transpose(2, 1, 0))
    np.testing.assert_allclose(vol.spacing[::-1], ref.header.get_zooms()[:3])
    # nibabel's affine is RAS; ITK reports LPS: flip the first two physical axes.
    lps_affine = np.diag([-1, -1, 1, 1]) @ ref.affine
    np.testing.assert_allclose(vol.origin, lps_affine[:3, 3], atol=1e-4)
    # direction columns are the physical directions of the (z, y, x) array axes
    spacing_xyz = np.asarray(vol.spacing[::-1])
    np.testing.assert_allclose(vol.direction[:, ::-1] * spacing_xyz, lps_affine[:3, :3], atol=1e-4)
    assert vol.shape == (189, 233, 197)
    assert vol.array.dtype == np.float32
    assert len(vol.id) == 16 and "mni" not in vol.id


def test_missing_and_wrong_suffix(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_nifti(tmp_path / "absent.nii.gz")
    with pytest.raises(DataError, match="not a NIfTI file"):
        read_nifti(tmp_path / "scan.dcm")


def test_truncated_file_names_path(tmp_path):
    bad = tmp_path / "broken.nii.gz"
    data = mni152_path("wm").read_bytes()
    bad.write_bytes(data[:2000])
    with pytest.raises(DataError, match="broken.nii.gz"):
        read_nifti(bad)


def test_garbage_file(tmp_path):
    bad = tmp_path / "garbage.nii.gz"
    bad.write_bytes(gzip.compress(b"not a nifti header" * 50))
    with pytest.raises(DataError, match="garbage.nii.gz"):
        read_nifti(bad)


def test_4d_needs_index(tmp_path):
    arr = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)  # (t, z, y, x)
    img = sitk.GetImageFromArray(arr, isVector=False)
    path = tmp_path / "four.nii.gz"
    sitk.WriteImage(img, str(path))
    with pytest.raises(DataError, match="4D NIfTI with 2 volumes"):
        read_nifti(path)
    vol = read_nifti(path, volume_index=1)
    np.testing.assert_array_equal(vol.array, arr[1])
    with pytest.raises(DataError, match="volume_index 2"):
        read_nifti(path, volume_index=2)


def test_truncated_uncompressed_file(tmp_path):
    arr = np.ones((6, 8, 8), dtype=np.float32)
    path = tmp_path / "cut.nii"
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="cut.nii: truncated"):
        read_nifti(path)


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (root only): the place to run out of disk space."""
    import os
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path = tmp_path / "disk"
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(path)],
                          capture_output=True)  # fmt: skip
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)  # lazy: open handles


@pytest.mark.parametrize("name", ["scan.nii", "scan.nii.gz"])
def test_a_full_disk_never_replaces_a_good_file(small_disk, name):
    """SimpleITK only prints 'wrote only 0 of N bytes' and returns; the read-back catches it
    and the good file stays."""
    import numpy as np

    from medgen.data import DataError, Volume, read_nifti, write_nifti

    good = Volume(np.ones((4, 8, 8), np.float32), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
    target = write_nifti(good, small_disk / name)
    rng = np.random.default_rng(0)  # incompressible: 2 MiB do not fit, gzipped or not
    big = Volume(rng.random((8, 256, 256), dtype=np.float32), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0),
                 np.eye(3))  # fmt: skip
    with pytest.raises(DataError, match=name):
        write_nifti(big, target)
    assert np.array_equal(read_nifti(target).array, good.array)
    assert [p.name for p in small_disk.iterdir()] == [name]  # no temporary file left


def _nii(tmp_path, name="ok.nii", shape=(4, 5, 6)):
    import numpy as np
    import SimpleITK as sitk

    path = tmp_path / name
    sitk.WriteImage(sitk.GetImageFromArray(np.ones(shape, np.float32)), str(path))
    return path


def _patch(path, offset, fmt, value):
    import struct

    data = bytearray(path.read_bytes())
    struct.pack_into("<" + fmt, data, offset, *([value] if not isinstance(value, tuple) else value))
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(
    ("offset", "fmt", "value", "message"),
    [
        (344, "4s", b"xyz\0", "magic"),
        (40, "h", 0, "dim ["),
        (42, "h", 0, "sizes >= 1"),
        (70, "h", 17, "datatype 17 is not a NIfTI-1 datatype"),
        (72, "h", 16, "bitpix 16 does not match datatype 16"),
        (80, "f", 0.0, "voxel sizes must be positive"),
        (84, "f", float("nan"), "voxel sizes must be positive"),
        (112, "f", float("inf"), "scl_slope = inf"),
        (108, "f", 100.0, "vox_offset 100.0: a .nii file needs >= 352"),
        (252, "h", 7, "qform_code = 7"),
    ],
)
def test_header_fields_that_make_no_sense_are_refused_by_name(
    tmp_path, offset, fmt, value, message
):
    from medgen.data import DataError, read_nifti

    path = _patch(_nii(tmp_path), offset, fmt, value)
    with pytest.raises(DataError, match="ok.nii") as info:
        read_nifti(path)
    assert message in str(info.value)


def test_a_gzip_bomb_is_refused_before_it_is_inflated(tmp_path, monkeypatch):
    """A header promising far more than a small .nii.gz can hold, and a cap for large files."""
    import gzip

    from medgen.data import DataError, read_nifti

    plain = _patch(_nii(tmp_path), 42, "3h", (1024, 1024, 1024))  # 4 GiB of float32
    bomb = tmp_path / "bomb.nii.gz"
    bomb.write_bytes(gzip.compress(plain.read_bytes() + b"\0" * 2**20))
    with pytest.raises(DataError, match="bomb.nii.gz: the header promises .* compressed bytes"):
        read_nifti(bomb)
    good = _nii(tmp_path, "good.nii.gz")
    monkeypatch.setenv("MEDGEN_MAX_NIFTI_BYTES", "100")
    with pytest.raises(DataError, match="more than 100 bytes .MEDGEN_MAX_NIFTI_BYTES"):
        read_nifti(good)
    monkeypatch.delenv("MEDGEN_MAX_NIFTI_BYTES")
    assert read_nifti(good).shape == (4, 5, 6)


def test_simpleitk_refusals_carry_its_reason_not_its_source_location():
    from medgen.data.sitk_image import sitk_reason

    exc = RuntimeError(
        "Exception thrown in SimpleITK ImageFileReader_Execute: /src/sitkImageReaderBase.cxx:99:"
        '\nsitk::ERROR: Unable to determine ImageIO reader for "/tmp/x.nii"'
    )
    assert sitk_reason(exc) == 'Unable to determine ImageIO reader for "/tmp/x.nii"'
