"""Which layout a dataset folder is in, from what it holds.

* ``dataset.json`` with ``channel_names`` (or ``file_ending``): nnU-Net v2;
* ``dataset.json`` with ``modality`` or ``training``: Medical Segmentation Decathlon;
* ``dataset_description.json``: BIDS.
"""

from __future__ import annotations

from pathlib import Path

from medgen.data.errors import DataError
from medgen.data.layouts.description import DESCRIPTION, read_description


def detect_layout(root: str | Path) -> str:
    """``"nnunet"``, ``"decathlon"`` or ``"bids"`` for the folder ``root``; else a DataError."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such dataset folder")
    if (root / DESCRIPTION).is_file():
        data = read_description(root)
        if "channel_names" in data or "file_ending" in data:
            return "nnunet"
        if "modality" in data or "training" in data:
            return "decathlon"
        raise DataError(
            f"{root / DESCRIPTION}: neither nnU-Net v2 (channel_names, file_ending) nor "
            "Decathlon (modality, training); name the layout"
        )
    if (root / "dataset_description.json").is_file():
        return "bids"
    raise DataError(
        f"{root}: no {DESCRIPTION} (nnU-Net v2, Decathlon) nor dataset_description.json (BIDS); "
        "give the layout's folder, or list the scans in a CSV table"
    )
