"""Locate the MNI152 2009c template that ships inside nilearn's package data.

Only files are read: nilearn's fetchers (which download) are never called, and nilearn itself
is not imported (its import is slow and pulls in scikit-learn).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from medgen.data.errors import DataError

MNI152_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}


def mni152_path(kind: str = "t1") -> Path:
    """Path of the MNI152 2009 template file ``kind`` in {"t1", "gm", "wm"}."""
    if kind not in MNI152_FILES:
        raise ValueError(f"unknown MNI152 file {kind!r}; known: {sorted(MNI152_FILES)}")
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "the MNI152 template ships with nilearn, which is not installed: "
            "pip install 'medgen-data[templates]'"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    path = path / MNI152_FILES[kind]
    if not path.is_file():
        raise DataError(f"{path}: MNI152 {kind} template missing from the nilearn install")
    return path
