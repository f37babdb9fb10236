"""nnU-Net's ``splits_final.json``: a list of folds ``{"train": [cases], "val": [cases]}``.

Honoured by the nnU-Net and Decathlon readers when the file is in the dataset folder (nnU-Net
writes it to its preprocessed folder; copy it beside ``dataset.json``): the chosen fold's
``val`` cases form the val split and its ``train`` cases the train split; cases the fold does
not name get a generated split. A case the file names that the dataset does not have, a fold
beyond the list, or a case in both lists is a problem.
"""

from __future__ import annotations

import json
from pathlib import Path

from medgen.data.layouts.problems import Problems

SPLITS_FILE = "splits_final.json"


def fold_splits(root: Path, fold: int, cases: set[str], problems: Problems) -> dict[str, str]:
    """``{case: "train" | "val"}`` from ``root/splits_final.json`` (absent: ``{}``)."""
    path = root / SPLITS_FILE
    if not path.is_file():
        return {}
    try:
        folds = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        problems.add(path, f"not readable JSON ({exc})")
        return {}
    if not isinstance(folds, list) or not all(isinstance(f, dict) for f in folds):
        problems.add(path, 'expected a list of folds {"train": [...], "val": [...]}')
        return {}
    if fold >= len(folds):
        problems.add(path, f"fold {fold} asked for, the file has {len(folds)} folds")
        return {}
    out: dict[str, str] = {}
    for split in ("train", "val"):
        for case in folds[fold].get(split, []):
            if case not in cases:
                problems.add(path, f"fold {fold} {split} case {case!r} is not in the dataset")
            elif case in out:
                problems.add(path, f"fold {fold}: case {case!r} is in both train and val")
            else:
                out[case] = split
    return out
