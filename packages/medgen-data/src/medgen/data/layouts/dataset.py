"""``LayoutDataset``: what a layout reader found in a dataset folder."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from medgen.data.cache.sources import Subject


@dataclass(frozen=True)
class LayoutDataset:
    """A dataset folder read by its layout.

    ``subjects``: the labelled (training) cases, each with its channels by name, its label
    file and, where the layout fixes one (nnU-Net's ``splits_final.json``), its split;
    ``channels``: the channel names in the layout's order; ``labels``: label name -> the
    values it covers (a region lists several); ``test``: cases without labels (``imagesTs``),
    which a cache (masks for every subject or none) leaves out.
    """

    layout: str
    root: Path
    subjects: list[Subject]
    channels: tuple[str, ...]
    labels: dict[str, tuple[int, ...]]
    test: list[Subject] = field(default_factory=list)
    description: Path | None = None

    @property
    def label_values(self) -> tuple[int, ...]:
        """Every label value the layout declares (sorted, 0 included)."""
        return tuple(sorted({0, *(v for vs in self.labels.values() for v in vs)}))
