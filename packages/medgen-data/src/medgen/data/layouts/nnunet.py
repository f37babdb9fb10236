"""nnU-Net v2 raw datasets: ``dataset.json`` + ``imagesTr/`` + ``labelsTr/`` (+ ``imagesTs/``).

```
Dataset001_Brain/
  dataset.json        {"channel_names": {"0": "T1", "1": "FLAIR"},
                       "labels": {"background": 0, "lesion": 1}, "numTraining": 4,
                       "file_ending": ".nii.gz"}
  imagesTr/CASE_0000.nii.gz, CASE_0001.nii.gz, ...   one file per channel (four-digit id)
  labelsTr/CASE.nii.gz                                 the label map of CASE
  imagesTs/...                                         optional, unlabelled
  splits_final.json                                    optional (see :mod:`.splits`)
```

Channel names become the modality names (a name given twice gets ``_<id>`` appended); label
values come from ``labels`` (a region's list of values counts each value). Everything is
checked before a subject is returned, and every problem is reported at once: a missing
channel file, a file whose name does not end in ``file_ending`` or does not parse, a channel
id not in ``channel_names``, a case without a label or a label without images (an extra case),
``numTraining`` against the cases found, channels (and the label) of one case on different
grids, and label values outside ``labels``.
"""

from __future__ import annotations

import re
from pathlib import Path

from medgen.data.cache.sources import Subject
from medgen.data.errors import DataError
from medgen.data.layouts.dataset import LayoutDataset
from medgen.data.layouts.description import DESCRIPTION, read_description, visible_files
from medgen.data.layouts.headers import grid, grid_mismatch, label_values
from medgen.data.layouts.problems import Problems
from medgen.data.layouts.splits import fold_splits

LAYOUT = "nnU-Net v2"
REQUIRED = ("channel_names", "labels", "numTraining", "file_ending")
CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def _channels(data: dict, path: Path, problems: Problems) -> dict[int, str]:
    raw = data["channel_names"]
    if not isinstance(raw, dict) or not raw:
        problems.add(path, f"channel_names: expected {{'0': 'T1', ...}}, got {raw!r}")
        return {}
    out: dict[int, str] = {}
    for key, name in raw.items():
        if not str(key).isdigit() or not isinstance(name, str) or not name:
            problems.add(path, f"channel_names: entry {key!r}: {name!r} is not 'id': 'name'")
            continue
        out[int(key)] = name
    names = list(out.values())
    return {c: n if names.count(n) == 1 else f"{n}_{c}" for c, n in sorted(out.items())}


def parse_labels(raw, path: Path, problems: Problems) -> dict[str, tuple[int, ...]]:
    """``labels`` of nnU-Net v2 (name -> value or list of values) as name -> values."""
    if not isinstance(raw, dict) or not raw:
        problems.add(path, f"labels: expected {{'background': 0, ...}}, got {raw!r}")
        return {}
    out: dict[str, tuple[int, ...]] = {}
    for name, value in raw.items():
        values = value if isinstance(value, list | tuple) else [value]
        if not values or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            problems.add(path, f"labels: {name!r}: {value!r} is not an integer or a list of them")
            continue
        out[str(name)] = tuple(int(v) for v in values)
    return out


def _scan(folder: Path, ending: str, problems: Problems, channels: bool) -> dict[str, dict]:
    """``{case: {channel id: path}}`` (``channels``) or ``{case: {None: path}}``."""
    found: dict[str, dict] = {}
    for path in visible_files(folder):
        if not path.name.endswith(ending):
            problems.add(path, f"does not end in file_ending {ending!r} of {DESCRIPTION}")
            continue
        stem = path.name[: -len(ending)]
        if channels:
            m = CHANNEL_FILE.match(stem)
            if m is None:
                problems.add(path, f"not named CASE_XXXX{ending} (a four-digit channel id)")
                continue
            found.setdefault(m["case"], {})[int(m["channel"])] = path
        else:
            found.setdefault(stem, {})[None] = path
    return found


def _case_problems(case, files, label, channels, labels, problems) -> None:
    """Geometry of one case's channels and label, and its label values."""
    try:
        grids = {c: grid(p) for c, p in files.items()}
        ref_channel = min(grids)
        ref = grids[ref_channel]
        for c, g in grids.items():
            diff = grid_mismatch(ref, g)
            if diff:
                problems.add(files[c], f"channel {c} of case {case!r} is not on the grid of "
                                       f"channel {ref_channel} ({diff})")  # fmt: skip
        diff = grid_mismatch(ref, grid(label))
        if diff:
            problems.add(label, f"label of case {case!r} is not on its images' grid ({diff})")
        values = label_values(label)
        bad = [v for v in values if v not in labels]
        if bad:
            shown = ", ".join(f"{v:g}" for v in bad[:5])
            problems.add(label, f"label value {shown} not in the labels {sorted(labels)} of "
                                f"{DESCRIPTION}")  # fmt: skip
    except DataError as exc:
        problems.add(files.get(0, label), str(exc).split(": ", 1)[-1])


def read_nnunet(root: str | Path, fold: int = 0, check_files: bool = True) -> LayoutDataset:
    """Read and check the nnU-Net v2 raw dataset at ``root`` (see the module docstring).

    ``check_files``: also read every header and label file (geometry, label values)."""
    root = Path(root)
    path = root / DESCRIPTION
    data = read_description(root)
    problems = Problems(path, LAYOUT)
    for key in REQUIRED:
        if key not in data:
            problems.add(path, f"no {key!r} key; nnU-Net v2 needs {', '.join(REQUIRED)}")
    problems.raise_if_any()
    ending = data["file_ending"]
    if not isinstance(ending, str) or not ending.startswith("."):
        problems.add(path, f"file_ending: expected '.nii.gz' or similar, got {ending!r}")
        problems.raise_if_any()
    channels = _channels(data, path, problems)
    labels = parse_labels(data["labels"], path, problems)
    values = {v for vs in labels.values() for v in vs}
    if labels and 0 not in values:
        problems.add(path, "labels: no label has value 0 (background)")
    images = _scan(root / "imagesTr", ending, problems, channels=True)
    label_files = {c: f[None] for c, f in _scan(root / "labelsTr", ending, problems, False).items()}
    if not images and not label_files:
        problems.add(root / "imagesTr", f"no training image named CASE_0000{ending}")
    for case, files in sorted(images.items()):
        for c in sorted(set(files) - set(channels)):
            problems.add(files[c], f"channel {c} is not in channel_names {sorted(channels)}")
        for c in sorted(set(channels) - set(files)):
            missing = root / "imagesTr" / f"{case}_{c:04d}{ending}"
            problems.add(missing, f"missing: channel {c} ({channels[c]!r}) of case {case!r}")
        if case not in label_files:
            problems.add(root / "labelsTr" / f"{case}{ending}", f"missing: label of case {case!r}")
    for case in sorted(set(label_files) - set(images)):
        problems.add(label_files[case], f"extra case {case!r}: no image in imagesTr")
    cases = sorted(set(images) & set(label_files))
    n, found = data["numTraining"], len(set(images) | set(label_files))
    if n != found:
        problems.add(path, f"numTraining is {n!r}, imagesTr/labelsTr hold {found} cases")
    if check_files:
        for case in cases:
            files = {c: p for c, p in images[case].items() if c in channels}
            if len(files) == len(channels):
                _case_problems(case, files, label_files[case], channels, values, problems)
    splits = fold_splits(root, fold, set(cases), problems)
    test = _scan(root / "imagesTs", ending, problems, channels=True)
    problems.raise_if_any()
    subjects = [
        Subject(
            case,
            {channels[c]: images[case][c] for c in sorted(channels)},
            label_files[case],
            split=splits.get(case, ""),
            where=str(images[case][min(channels)]),
        )
        for case in cases
    ]
    test_subjects = [
        Subject(case, {channels[c]: f[c] for c in sorted(channels) if c in f}, where=str(f[min(f)]))
        for case, f in sorted(test.items())
    ]
    return LayoutDataset(
        "nnunet", root, subjects, tuple(channels[c] for c in sorted(channels)), labels,
        test_subjects, path,
    )  # fmt: skip
