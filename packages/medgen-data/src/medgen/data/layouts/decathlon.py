"""Medical Segmentation Decathlon datasets: ``dataset.json`` listing the cases, 4D images.

```
Task01_BrainTumour/
  dataset.json   {"modality": {"0": "FLAIR", "1": "T1w"},
                  "labels": {"0": "background", "1": "edema"}, "numTraining": 4,
                  "training": [{"image": "./imagesTr/BRATS_001.nii.gz",
                                "label": "./labelsTr/BRATS_001.nii.gz"}, ...],
                  "test": ["./imagesTs/BRATS_485.nii.gz", ...]}
  imagesTr/BRATS_001.nii.gz   one file per case; several modalities: a 4D file, one volume each
  labelsTr/BRATS_001.nii.gz
```

Each modality of a 4D image becomes a channel (the volume of that index); a 3D image needs a
single modality. Checked, with every problem reported at once: a listed file that is missing,
an image in ``imagesTr`` that ``training`` does not list (an extra case), ``numTraining``,
the volume count against ``modality``, the label's grid against its image's, label values
outside ``labels``. ``splits_final.json`` beside ``dataset.json`` is honoured as for nnU-Net.
"""

from __future__ import annotations

from pathlib import Path

from medgen.data.cache.sources import Subject, subject_name
from medgen.data.errors import DataError
from medgen.data.layouts.dataset import LayoutDataset
from medgen.data.layouts.description import DESCRIPTION, read_description, visible_files
from medgen.data.layouts.headers import grid, grid_mismatch, label_values
from medgen.data.layouts.problems import Problems
from medgen.data.layouts.splits import fold_splits

LAYOUT = "Decathlon"
REQUIRED = ("modality", "labels", "training")


def _modalities(raw, path: Path, problems: Problems) -> dict[int, str]:
    if not isinstance(raw, dict) or not raw or not all(str(k).isdigit() for k in raw):
        problems.add(path, f"modality: expected {{'0': 'FLAIR', ...}}, got {raw!r}")
        return {}
    names = [str(v) for v in raw.values()]
    return {
        int(k): str(v) if names.count(str(v)) == 1 else f"{v}_{k}"
        for k, v in sorted(raw.items(), key=lambda kv: int(kv[0]))
    }


def _labels(raw, path: Path, problems: Problems) -> dict[str, tuple[int, ...]]:
    if not isinstance(raw, dict) or not raw or not all(str(k).isdigit() for k in raw):
        problems.add(path, f"labels: expected {{'0': 'background', ...}}, got {raw!r}")
        return {}
    return {str(name): (int(value),) for value, name in raw.items()}


def _entry_path(root: Path, entry, key: str, i: int, problems: Problems) -> Path | None:
    where = root / DESCRIPTION
    if not isinstance(entry, dict) or not isinstance(entry.get(key), str):
        problems.add(where, f"training[{i}]: expected {{'image': PATH, 'label': PATH}}")
        return None
    path = (root / entry[key]).resolve()
    if not path.is_file():
        problems.add(root / entry[key], f"missing: the {key} of training[{i}]")
        return None
    return path


def _case(image, label, case, modalities, values, problems) -> None:
    try:
        g, lg = grid(image), grid(label)
    except DataError as exc:
        problems.add(image, str(exc).split(": ", 1)[-1])
        return
    if g.volumes != len(modalities):
        problems.add(image, f"{g.volumes} volume(s); modality in {DESCRIPTION} lists "
                            f"{len(modalities)} ({', '.join(modalities.values())})")  # fmt: skip
    diff = grid_mismatch(g, lg)
    if diff:
        problems.add(label, f"label of case {case!r} is not on its image's grid ({diff})")
    bad = [v for v in label_values(label) if v not in values]
    if bad:
        shown = ", ".join(f"{v:g}" for v in bad[:5])
        problems.add(label, f"label value {shown} not in the labels {sorted(values)} of "
                            f"{DESCRIPTION}")  # fmt: skip


def read_decathlon(root: str | Path, fold: int = 0, check_files: bool = True) -> LayoutDataset:
    """Read and check the Decathlon dataset at ``root`` (see the module docstring)."""
    root = Path(root)
    path = root / DESCRIPTION
    data = read_description(root)
    problems = Problems(path, LAYOUT)
    for key in REQUIRED:
        if key not in data:
            problems.add(
                path, f"no {key!r} key; a Decathlon dataset.json has {', '.join(REQUIRED)}"
            )
    problems.raise_if_any()
    modalities = _modalities(data["modality"], path, problems)
    labels = _labels(data["labels"], path, problems)
    values = {v for vs in labels.values() for v in vs}
    training = data["training"] if isinstance(data["training"], list) else []
    if not training:
        problems.add(path, "training: expected a non-empty list of {image, label}")
    cases: dict[str, tuple[Path, Path]] = {}
    listed = {(root / e["image"]).resolve() for e in training
              if isinstance(e, dict) and isinstance(e.get("image"), str)}  # fmt: skip
    for i, entry in enumerate(training):
        image = _entry_path(root, entry, "image", i, problems)
        label = _entry_path(root, entry, "label", i, problems)
        if image is not None and label is not None:
            case = subject_name(image)
            if case in cases:
                problems.add(image, f"training[{i}]: case {case!r} is listed twice")
            cases[case] = (image, label)
    for extra in visible_files(root / "imagesTr"):
        if extra.resolve() not in listed and extra.name.endswith((".nii", ".nii.gz")):
            problems.add(extra, f"extra case: not listed under training in {DESCRIPTION}")
    n = data.get("numTraining", len(training))
    if n != len(training):
        problems.add(path, f"numTraining is {n!r}, training lists {len(training)} cases")
    if check_files and modalities:
        for case, (image, label) in sorted(cases.items()):
            _case(image, label, case, modalities, values, problems)
    splits = fold_splits(root, fold, set(cases), problems)
    problems.raise_if_any()
    four_d = len(modalities) > 1
    subjects = [
        Subject(
            case,
            {name: image for name in modalities.values()},
            label,
            split=splits.get(case, ""),
            where=str(image),
            volumes={name: c for c, name in modalities.items()} if four_d else {},
        )
        for case, (image, label) in sorted(cases.items())
    ]
    return LayoutDataset("decathlon", root, subjects, tuple(modalities.values()), labels, [], path)
