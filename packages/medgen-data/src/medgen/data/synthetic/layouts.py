"""The demo subjects written as nnU-Net v2, Decathlon or BIDS datasets (to try ``plan`` and a
layout source on).

Each case is a demo subject of :mod:`.phantoms` (the MNI152 template deformed, 1-3 synthetic
lesions, the label map marking them) with two channels: ``T1`` (the demo image) and ``T2``
(the same anatomy with inverted grey/white contrast inside the head, lesions bright). Case ``i`` is resampled
to a slice spacing of ``spacing_mm * (1, 1.5, 2)[i % 3]`` so the spacings differ between
cases, as in real data. Layouts:

* ``nnunet``: ``dataset.json`` (channel_names, labels, numTraining, file_ending),
  ``imagesTr/brain_00I_000C.nii.gz``, ``labelsTr/brain_00I.nii.gz``;
* ``decathlon``: ``dataset.json`` (modality, labels, training, test), one 4D image per case
  (a volume per channel), ``labelsTr/``;
* ``bids``: ``sub-0I/anat/sub-0I_T1w.nii.gz`` and ``_T2w``, the last subject with two sessions,
  masks in ``derivatives/lesions/sub-0I/anat/sub-0I_desc-lesion_mask.nii.gz``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medgen.data.errors import DataError
from medgen.data.nifti import write_nifti
from medgen.data.resample import resample
from medgen.data.sitk_image import to_sitk
from medgen.data.synthetic.phantoms import load_template, subject_image
from medgen.data.volume import Volume

LAYOUTS = ("nnunet", "decathlon", "bids")
CHANNELS = ("T1", "T2")
SLICE_FACTORS = (1.0, 1.5, 2.0)


def demo_case(template: Volume, brain: np.ndarray, index: int, seed: int):
    """``(T1, T2, label)`` Volumes of demo case ``index`` on its own grid."""
    image, mask = subject_image(template, brain, index, lesions=index % 4 != 3, seed=seed)
    head = image > 0.05 * float(image.max())
    level = float(np.percentile(image[head], 99))
    t2 = np.where(head, np.clip(1.2 * level - image, 0.0, None), 0.0)
    t2 = np.where(mask > 0, 1.1 * level, t2).astype(np.float32)  # lesions bright in T2 too
    grid = dict(spacing=template.spacing, origin=template.origin, direction=template.direction)
    vols = [Volume(a.astype(np.float32), **grid) for a in (image, t2, mask.astype(np.float32))]
    s = template.spacing
    spacing = (s[0] * SLICE_FACTORS[index % len(SLICE_FACTORS)], s[1], s[2])
    return [resample(v, spacing, interpolation="nearest" if i == 2 else "linear")
            for i, v in enumerate(vols)]  # fmt: skip


def _json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def _write_4d(channels: list[Volume], path: Path) -> None:
    images = [to_sitk(v) for v in channels]
    sitk.WriteImage(sitk.JoinSeries(images), str(path), useCompression=True)


def write_layout_dataset(
    out_dir: str | Path,
    layout: str,
    n_subjects: int = 4,
    *,
    spacing_mm: float = 4.0,
    seed: int = 0,
) -> Path:
    """Write ``n_subjects`` demo cases as a ``layout`` dataset in ``out_dir``; return it."""
    if layout not in LAYOUTS:
        raise DataError(f"layout: expected one of {', '.join(LAYOUTS)}, got {layout!r}")
    if int(n_subjects) != n_subjects or n_subjects < 2:
        raise DataError(f"n_subjects: expected an integer >= 2, got {n_subjects!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    template, brain = load_template(spacing_mm)
    cases = [demo_case(template, brain, i, seed) for i in range(n_subjects)]
    labels = {"background": 0, "lesion": 1}
    if layout == "nnunet":
        for folder in ("imagesTr", "labelsTr"):
            (out / folder).mkdir(exist_ok=True)
        for i, (t1, t2, mask) in enumerate(cases):
            case = f"brain_{i + 1:03d}"
            for c, vol in enumerate((t1, t2)):
                write_nifti(vol, out / "imagesTr" / f"{case}_{c:04d}.nii.gz")
            write_nifti(mask, out / "labelsTr" / f"{case}.nii.gz")
        _json(out / "dataset.json", {
            "name": "MedGenDemo", "channel_names": dict(enumerate(CHANNELS)), "labels": labels,
            "numTraining": n_subjects, "file_ending": ".nii.gz",
        })  # fmt: skip
    elif layout == "decathlon":
        for folder in ("imagesTr", "labelsTr", "imagesTs"):
            (out / folder).mkdir(exist_ok=True)
        training = []
        for i, (t1, t2, mask) in enumerate(cases):
            name = f"BRAIN_{i + 1:03d}.nii.gz"
            _write_4d([t1, t2], out / "imagesTr" / name)
            write_nifti(mask, out / "labelsTr" / name)
            training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
        _json(out / "dataset.json", {
            "name": "MedGenDemo", "modality": dict(enumerate(CHANNELS)),
            "labels": {str(v): k for k, v in labels.items()}, "numTraining": n_subjects,
            "numTest": 0, "training": training, "test": [],
        })  # fmt: skip
    else:
        _json(out / "dataset_description.json", {"Name": "MedGenDemo", "BIDSVersion": "1.9.0"})
        deriv = out / "derivatives" / "lesions"
        deriv.mkdir(parents=True, exist_ok=True)
        _json(deriv / "dataset_description.json", {
            "Name": "lesions", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
            "GeneratedBy": [{"Name": "medgen-demo"}],
        })  # fmt: skip
        n_sub = n_subjects - 1  # the last subject has two sessions
        for i, (t1, t2, mask) in enumerate(cases):
            sub = f"sub-{min(i, n_sub - 1) + 1:02d}"
            ses = f"ses-{i - n_sub + 2}" if i >= n_sub - 1 else ""
            stem = f"{sub}_{ses}" if ses else sub
            rel = Path(sub) / ses / "anat" if ses else Path(sub) / "anat"
            (out / rel).mkdir(parents=True, exist_ok=True)
            (deriv / rel).mkdir(parents=True, exist_ok=True)
            write_nifti(t1, out / rel / f"{stem}_T1w.nii.gz")
            write_nifti(t2, out / rel / f"{stem}_T2w.nii.gz")
            write_nifti(mask, deriv / rel / f"{stem}_desc-lesion_mask.nii.gz")
    return out
