"""TensorBoard scalars beside ``metrics.csv``; tensorboard is imported only when used."""

from __future__ import annotations

import math
from pathlib import Path

from medgen.train.errors import ConfigError


class TensorBoardLog:
    """Scalars (``train/*``, ``eval/*``) and evaluation images (``images/*``)."""

    def __init__(self, log_dir: str | Path, purge_step: int | None = None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise ConfigError(
                "training.tensorboard=true needs the 'tensorboard' package "
                "(pip install tensorboard), or set training.tensorboard=false"
            ) from exc
        # purge_step: a resumed run drops the events a killed run logged after its checkpoint
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def log(self, row: dict, step: int, prefix: str = "train") -> None:
        """Every finite number of ``row`` as ``prefix/key``."""
        for key, value in row.items():
            if key == "step" or not isinstance(value, int | float):
                continue
            if math.isfinite(value):
                self.writer.add_scalar(f"{prefix}/{key}", value, step)
        self.writer.flush()

    def images(self, images: dict, step: int) -> None:
        """Each (H, W) or (H, W, 3) image in [0, 1] as ``images/<name>``."""
        for name, image in images.items():
            formats = "HW" if image.ndim == 2 else "HWC"
            self.writer.add_image(f"images/{name}", image.clip(0, 1), step, dataformats=formats)
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.close()
