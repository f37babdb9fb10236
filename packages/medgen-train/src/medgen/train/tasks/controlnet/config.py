"""The ``task:`` section of ``task.kind: controlnet``: which trained diffusion run to steer,
with which control maps, and how the branch is trained.

The strategy, space, channels, loss and evaluation are the base run's (its ``task:``
section); the network is the base's (its ``model:`` section: leave this run's ``model:`` at
its defaults, or give exactly the base's values). ``control`` names the maps the branch sees:
``mask`` (the lesion mask in [-1, 1]), ``labels`` (the integer label map as bit channels, as
MAISI encodes up to 256 labels in 8 channels) or image channels of the cache (a prior image).
``roi_labels`` / ``roi_weight``: MAISI's ROI-weighted loss, voxels of those labels weighted
``roi_weight`` times the rest. ``contrastive_weight``: MAISI-v2's region-specific contrastive
term (a second prediction with the ROI labels replaced by background in the control map,
pushed at least ``contrastive_margin`` apart (mean squared difference) inside the ROI and kept
equal outside it).
"""

from __future__ import annotations

from dataclasses import dataclass

from medgen.train.config.schema import setting
from medgen.train.errors import ConfigError


@dataclass(frozen=True)
class ControlNetConfig:
    """A ControlNet branch trained over a frozen diffusion run."""

    kind: str = "controlnet"
    base: str = ""  # the fit run directory of the diffusion model to steer
    checkpoint: str = "best"  # which of its checkpoints: latest | best | step_N
    control: tuple[str, ...] = ("mask",)  # maps the branch sees: mask, labels, image channels
    embedding_width: int = setting(16, min=1)  # first width of the control-map embedding
    scale: float = setting(1.0, gt=0)  # MONAI's conditioning_scale
    copy_base: bool = True  # initialise the branch from the base's encoder (MAISI, ControlNet)
    roi_labels: tuple[int, ...] = ()  # labels of the region of interest
    roi_weight: float = setting(1.0, gt=0)  # loss weight of ROI voxels relative to the rest
    contrastive_weight: float = setting(0.0, min=0)  # MAISI-v2 region contrastive term
    contrastive_margin: float = setting(0.1, gt=0)

    def validate(self) -> None:
        """A base named; ROI settings that need ROI labels have them."""
        if not self.base:
            raise ConfigError("base: name the fit run directory of the diffusion model to steer")
        if not self.control:
            raise ConfigError("control: name at least one map for the branch (mask, labels, ...)")
        if len(set(self.control)) != len(self.control):
            raise ConfigError(f"control: duplicate names in {list(self.control)}")
        bad = [v for v in self.roi_labels if not 0 < v <= 255]
        if bad:
            raise ConfigError(f"roi_labels: expected labels in 1..255, got {bad}")
        for key, off in (("roi_weight", 1.0), ("contrastive_weight", 0.0)):
            if getattr(self, key) != off and not self.roi_labels:
                raise ConfigError(f"{key}: {getattr(self, key)} needs task.roi_labels (e.g. 1)")
        if self.contrastive_weight and not {"mask", "labels"} & set(self.control):
            raise ConfigError(
                "contrastive_weight: the contrastive term replaces ROI labels in the control "
                "map, so task.control must include mask or labels"
            )
