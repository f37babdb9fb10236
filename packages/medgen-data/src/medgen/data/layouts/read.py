"""``read_layout``: a :class:`~medgen.data.layouts.source.LayoutSource` -> its dataset."""

from __future__ import annotations

from pathlib import Path

from medgen.data.layouts.dataset import LayoutDataset
from medgen.data.layouts.detect import detect_layout
from medgen.data.layouts.source import LayoutSource


def read_layout(source: LayoutSource | dict, check_files: bool = True) -> LayoutDataset:
    """The dataset ``source`` names, read by its layout (``auto``: detected) and checked."""
    if isinstance(source, dict):
        source = LayoutSource(**source)
    source.check()
    root = Path(source.root)
    layout = detect_layout(root) if source.layout == "auto" else source.layout
    if layout == "nnunet":
        from medgen.data.layouts.nnunet import read_nnunet

        return read_nnunet(root, source.fold, check_files)
    if layout == "decathlon":
        from medgen.data.layouts.decathlon import read_decathlon

        return read_decathlon(root, source.fold, check_files)
    from medgen.data.layouts.bids import read_bids

    return read_bids(root, source.suffixes, source.mask_suffix)
