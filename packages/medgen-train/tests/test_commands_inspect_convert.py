"""``inspect`` and ``convert`` through the CLI's ``main`` (its error handling included)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import SimpleITK as sitk

from medgen.data.dicom import read_dicom, series_key
from medgen.data.synthetic.dicom import FAKE_PATIENT, ramp_volume, write_series
from medgen.train.cli import main

UID = "1.2.826.0.1.3680043.8.498.31337"


def run(argv, capsys):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def scan(tmp_path):
    """A CT series with every identifying field set, plus a README."""
    d = tmp_path / "case"
    write_series(d, ramp_volume(6, 12, 10), series_uid=UID, patient=FAKE_PATIENT)
    (d / "README.txt").write_text("exported")
    return d


def assert_no_phi(text):
    for value in [*FAKE_PATIENT.values(), "Doe", "Jane", UID]:
        assert value not in text, f"{value!r} leaked"


def test_inspect_human_output(scan, capsys):
    rc, out, err = run(["inspect", scan], capsys)
    assert rc == 0 and err == ""
    assert f"* {series_key(UID)}  CT" in out and "6 slices  12x10" in out
    assert "1 other file(s) ignored" in out
    assert "shape:       6 x 12 x 10 (z, y, x)" in out
    assert "spacing:     2.5, 0.7, 0.8 mm (z, y, x)" in out
    assert "orientation: LPS" in out and "modality:    CT" in out
    assert "min -1024" in out and "max -482" in out  # 100 * 5 + 3 * 11 + 9 - 1024
    assert "README.txt" in out  # the ignored file is a geometry/input warning
    assert_no_phi(out + err)


def test_inspect_json_and_no_patient_identifier_anywhere(scan, capsys):
    rc, out, err = run(["inspect", scan, "--json"], capsys)
    assert rc == 0
    info = json.loads(out)
    assert info["shape_zyx"] == [6, 12, 10] and info["orientation"] == "LPS"
    assert info["spacing_zyx_mm"] == [2.5, 0.7, 0.8] and info["modality"] == "CT"
    assert info["series"][0]["key"] == info["read"] == series_key(UID)
    assert info["intensity"]["min"] == -1024 and info["intensity"]["max"] == -482
    assert_no_phi(out + err)


def test_inspect_reports_geometry_warnings(tmp_path, capsys):
    offsets = [0, 2.5, 5, 10, 12.5]
    write_series(tmp_path / "gap", ramp_volume(5, 4, 4), offsets=offsets, series_uid=UID)
    rc, out, err = run(["inspect", tmp_path / "gap"], capsys)
    assert rc == 2 and "gap: about 1 missing slice" in err
    rc, out, err = run(["inspect", tmp_path / "gap", "--json", "--resample-irregular"], capsys)
    assert rc == 0
    info = json.loads(out)
    assert info["shape_zyx"][0] == 6
    assert any("gap" in w and series_key(UID) in w for w in info["warnings"])


def test_convert_dicom_zip_to_nifti_with_correct_geometry(scan, tmp_path, capsys):
    archive = tmp_path / "case.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(scan.iterdir()):
            zf.write(f, f"export/{f.name}")
    out_path = tmp_path / "out" / "case.nii.gz"
    out_path.parent.mkdir()
    rc, out, err = run(["convert", archive, out_path], capsys)
    assert rc == 0 and out.startswith(f"wrote {out_path}: 6 x 12 x 10 voxels")
    assert "README.txt" in err  # the ignored-file warning, as one line
    assert os.listdir(out_path.parent) == ["case.nii.gz"]  # no temp file left
    # re-read with SimpleITK itself, compare with SimpleITK's own DICOM reader
    image = sitk.ReadImage(str(out_path))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(scan)))
    ref = reader.Execute()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(ref))
    assert image.GetSpacing() == pytest.approx(ref.GetSpacing(), abs=1e-5)
    assert image.GetOrigin() == pytest.approx(ref.GetOrigin(), abs=1e-4)
    assert image.GetDirection() == pytest.approx(ref.GetDirection(), abs=1e-6)
    assert_no_phi(out + err)
    raw = sitk.ReadImage(str(out_path))
    assert_no_phi(" ".join(raw.GetMetaData(k) for k in raw.GetMetaDataKeys()))


def test_convert_with_orientation(scan, tmp_path, capsys):
    out_path = tmp_path / "ras.nii"
    rc, out, _ = run(["convert", scan, out_path, "--orient", "RAS"], capsys)
    assert rc == 0 and out.rstrip().endswith("RAS")
    image = sitk.ReadImage(str(out_path))
    with pytest.warns(UserWarning, match="README.txt"):
        vol = read_dicom(scan)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), vol.array[:, ::-1, ::-1])
    # same physical position of the first stored voxel of the LPS volume
    first = image.TransformIndexToPhysicalPoint((9, 11, 0))
    assert first == pytest.approx(vol.origin, abs=1e-4)


def test_inspect_nifti(scan, tmp_path, capsys):
    nii = tmp_path / "case.nii.gz"
    assert run(["convert", scan, nii], capsys)[0] == 0
    rc, out, err = run(["inspect", nii, "--json"], capsys)
    info = json.loads(out)
    assert rc == 0 and err == "" and info["format"] == "nifti" and info["series"] == []
    assert info["shape_zyx"] == [6, 12, 10] and info["spacing_zyx_mm"] == [2.5, 0.7, 0.8]
    assert info["orientation"] == "LPS" and info["warnings"] == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["inspect", "{tmp}/absent"], "absent: no such file or directory"),
        (["inspect", "{tmp}/scan.png"], r"scan.png: unsupported input (.png)"),
        (["convert", "{tmp}/empty", "{tmp}/o.nii.gz"], "no DICOM image series found"),
        (["convert", "{scan}", "{tmp}/o.mha"], "o.mha: output must end in .nii or .nii.gz"),
        (["convert", "{scan}", "{tmp}/nodir/o.nii"], "does not exist"),
        (["inspect", "{scan}", "--series", "0123456789abcdef"], "no series 0123456789abcdef"),
    ],
)
def test_bad_input_exits_2_with_one_line(scan, tmp_path, capsys, argv, message):
    (tmp_path / "scan.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (tmp_path / "empty").mkdir()
    argv = [a.format(tmp=tmp_path, scan=scan) for a in argv]
    rc, out, err = run(argv, capsys)
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("medgen-train: error: ")
    assert message in err
    assert not any(p.name.startswith(".o.") for p in tmp_path.iterdir())


def test_a_real_process_prints_no_traceback(tmp_path):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00" + b"\xff" * 64)
    proc = subprocess.run(
        [sys.executable, "-m", "medgen.train", "inspect", str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        line for line in proc.stderr.strip().splitlines() if "broken.nii.gz" in line
    ]
    assert "corrupt gzip" in proc.stderr
