"""The dataset fingerprint and the proposal: closed forms (nnU-Net's anisotropy rule, the
memory estimate, intensities and lesion volumes of a built case) and nnU-Net v2's own
fingerprint extraction run on the same nnU-Net folder."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from medgen.data import (
    LayoutSource,
    Subject,
    Volume,
    read_layout,
    read_volume,
    write_layout_dataset,
    write_nifti,
)
from medgen.data.layouts.dataset import LayoutDataset
from medgen.data.planning.fingerprint import fingerprint
from medgen.data.planning.proposal import propose, target_spacing, unet_memory_gib

pytest.importorskip("scipy", reason="the fingerprint needs scipy (medgen-data[layouts])")


def test_target_spacing_is_nnunets_rule():
    iso = np.array([[5.0, 1, 1], [4, 1, 1], [6, 1, 1], [5, 1, 1], [5, 1, 1]])
    flat = np.array([[20.0, 200, 200]] * 5)  # few slices: the rule fires
    assert target_spacing(iso, flat) == pytest.approx([4.4, 1, 1])  # 10th percentile of z
    deep = np.array([[100.0, 200, 200]] * 5)  # enough slices: the median stays
    assert target_spacing(iso, deep) == pytest.approx([5, 1, 1])
    low = np.array([[0.5, 1, 1]] * 3 + [[5.0, 1, 1]] * 7)  # 10th percentile below in-plane
    assert target_spacing(low, np.array([[20.0, 200, 200]] * 10)) == pytest.approx(
        [1.00001, 1, 1], abs=1e-9
    )


def test_memory_estimate_closed_form():
    # (16, 16), batch 1, channels 32/64/64 at 1, 1/4, 1/16 of the pixels; 128 bytes each
    assert unet_memory_gib((16, 16), 1) == pytest.approx(
        (256 * 32 + 64 * 64 + 16 * 64) * 128 / 2**30
    )
    assert unet_memory_gib((16, 16, 16), 2) == pytest.approx(
        2 * (4096 * 32 + 512 * 64 + 64 * 64) * 128 / 2**30
    )


def test_case_fingerprint_closed_forms(tmp_path):
    spacing = (2.0, 1.0, 0.5)
    image = np.zeros((10, 12, 14), np.float32)
    image[2:8, 3:10, 1:13] = 50.0  # the non-zero box: 6 x 7 x 12
    label = np.zeros_like(image)
    label[3:5, 4:6, 2:4] = 1  # a 2x2x2 lesion (8 voxels) ...
    label[6, 8, 10] = 2  # ... and a single voxel of label 2, not touching it
    image[label > 0] = 80.0
    grid = dict(spacing=spacing, origin=(0.0, 0.0, 0.0), direction=np.eye(3))
    write_nifti(Volume(image, **grid), tmp_path / "img.nii.gz")
    write_nifti(Volume(label, **grid), tmp_path / "lab.nii.gz")
    subject = Subject("c1", {"MR": tmp_path / "img.nii.gz"}, tmp_path / "lab.nii.gz")
    ds = LayoutDataset("nnunet", tmp_path, [subject], ("MR",), {"background": (0,), "a": (1,)})
    fp = fingerprint(ds, samples=1000)
    case = fp.cases[0]
    assert case.shape == [10, 12, 14] and case.spacing == list(spacing)
    assert case.shape_after_crop == [6, 7, 12]
    assert case.label_voxels == {"0": 10 * 12 * 14 - 9, "1": 8, "2": 1}
    assert sorted(case.lesions_mm3) == [1.0, 8.0]  # voxel volume 1 mm^3
    stats = case.intensity["MR"]
    assert stats["mean"] == 80.0 and stats["std"] == 0.0 and stats["percentile_99_5"] == 80.0
    assert case.samples["MR"].shape == (1000,) and fp.intensity["MR"]["mean"] == 80.0
    assert case.lesion_per_slice and sum(case.lesion_per_slice) == 9


NNUNET = r"""
import json, sys
from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import (
    DatasetFingerprintExtractor)
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import (
    ExperimentPlanner)
e = DatasetFingerprintExtractor(1, num_processes=1)
e.num_foreground_voxels_for_intensitystats = int(sys.argv[1])
e.show_progress_bar = False
fp = e.run(overwrite_existing=True)
target = ExperimentPlanner(1).determine_fullres_target_spacing()
json.dump({"spacings": [list(map(float, s)) for s in fp["spacings"]],
           "shapes": [list(map(int, s)) for s in fp["shapes_after_crop"]],
           "intensity": fp["foreground_intensity_properties_per_channel"],
           "target": [float(t) for t in target]}, sys.stdout)
"""


def test_fingerprint_agrees_with_nnunetv2(tmp_path):
    pytest.importorskip("nnunetv2", reason="the comparison needs nnunetv2 (medgen-data[test])")
    root = write_layout_dataset(tmp_path / "raw" / "Dataset001_Demo", "nnunet", 4, spacing_mm=8.0)
    for c in (0, 1):  # zero a slab of case 2 in both channels: nnU-Net crops it away
        path = root / "imagesTr" / f"brain_002_{c:04d}.nii.gz"
        vol = read_volume(path)
        array = vol.array.copy()
        array[:3] = 0
        write_nifti(Volume(array, vol.spacing, vol.origin, vol.direction), path)
    samples = 40000
    ours = fingerprint(read_layout(LayoutSource(root=str(root))), samples=samples)
    env = {
        **os.environ,
        "nnUNet_raw": str(tmp_path / "raw"),
        "nnUNet_preprocessed": str(tmp_path / "pre"),
        "nnUNet_results": str(tmp_path / "res"),
    }
    done = subprocess.run([sys.executable, "-c", NNUNET, str(samples)], capture_output=True,
                          text=True, env=env, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    theirs = json.loads(done.stdout.strip().splitlines()[-1])
    assert ours.column("spacing").tolist() == theirs["spacings"]
    assert ours.column("shape_after_crop").astype(int).tolist() == theirs["shapes"]
    assert theirs["shapes"][1][0] < ours.cases[1].shape[0]  # the crop did something
    spacing = target_spacing(ours.column("spacing"), ours.column("shape_after_crop"))
    assert spacing.tolist() == pytest.approx(theirs["target"], rel=1e-9)
    for i, channel in enumerate(ours.channels):
        mine, nn = ours.intensity[channel], theirs["intensity"][str(i)]
        for key in ("mean", "std", "median", "min", "max", "percentile_00_5", "percentile_99_5"):
            assert mine[key] == pytest.approx(nn[key], rel=1e-5, abs=1e-4), (channel, key)


def test_proposal_of_the_demo_dataset(tmp_path):
    root = write_layout_dataset(tmp_path / "nn", "nnunet", 4, spacing_mm=8.0)
    fp = fingerprint(read_layout(LayoutSource(root=str(root))), samples=10000)
    p = propose(fp)
    # spacings 8, 12, 16, 8 mm along z: the median 10 (not anisotropic enough for the rule)
    assert p.spacing == [10.0, 8.0, 8.0] and not p.anisotropic
    assert p.kind == "volumes" and p.recipe["modalities"] == ["T1", "T2"]
    assert p.recipe["labels"] == [0, 1] and p.recipe["class_from"] == "mask"
    assert p.recipe["percentiles"] == [0.5, 99.5] and "window" not in p.recipe
    assert all(s % 16 == 0 for s in p.recipe["shape"])
