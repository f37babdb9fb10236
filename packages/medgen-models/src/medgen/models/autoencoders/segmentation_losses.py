"""Losses and metrics of a mask autoencoder (DC-AE seg mode): BCE + Dice + boundary; Dice, IoU.

- :class:`SegmentationLoss`: ``bce * BCE-with-logits + dice * MONAI DiceLoss(sigmoid) +
  boundary * boundary loss``, returned with its parts;
- :func:`boundary_loss`: Kervadec et al. 2019 ("Boundary loss for highly unbalanced
  segmentation"): mean of ``sigmoid(logits) * phi`` with ``phi`` the signed distance map of the
  target (negative inside, positive outside, :func:`signed_distance_map`, scipy's exact
  Euclidean distance transform, in voxels or in mm with ``spacing``);
- :func:`dice_score` / :func:`iou_score`: MONAI's ``compute_dice`` / ``compute_iou`` of the
  thresholded prediction, per sample and channel; two empty masks score 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from monai.metrics.meandice import compute_dice
from monai.metrics.meaniou import compute_iou
from torch import nn


def signed_distance_map(
    target: torch.Tensor, spacing: Sequence[float] | None = None
) -> torch.Tensor:
    """Per (sample, channel): ``dist_to_fg * (1 - t) - (dist_to_bg - 1) * t``, float32.

    Outside the mask: the distance to the nearest foreground voxel (> 0); inside: minus the
    distance to the nearest background voxel, plus 1 (so boundary voxels are 0, Kervadec et
    al.'s ``one_hot2dist``). A channel with no foreground (or no background) maps to zeros.
    """
    from scipy.ndimage import distance_transform_edt  # imported here: scipy is slow to import

    t = target.detach().cpu().numpy() > 0.5
    out = np.zeros(t.shape, dtype=np.float32)
    for idx in np.ndindex(*t.shape[:2]):
        pos = t[idx]
        if pos.any() and not pos.all():
            neg = ~pos
            out[idx] = (
                distance_transform_edt(neg, sampling=spacing) * neg
                - (distance_transform_edt(pos, sampling=spacing) - 1) * pos
            )
    return torch.from_numpy(out).to(target.device)


def boundary_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    spacing: Sequence[float] | None = None,
    distance: torch.Tensor | None = None,
) -> torch.Tensor:
    """Kervadec et al.'s boundary loss: mean of ``sigmoid(logits) * signed distance``.

    ``distance`` may be precomputed (:func:`signed_distance_map`, e.g. in the data pipeline).
    """
    if logits.shape != target.shape:
        raise ValueError(
            f"boundary_loss: logits {tuple(logits.shape)} and target {tuple(target.shape)} differ"
        )
    phi = signed_distance_map(target, spacing) if distance is None else distance
    return (torch.sigmoid(logits) * phi.to(logits.dtype)).mean()


class SegmentationLoss(nn.Module):
    """``bce * BCE + dice * Dice + boundary * Kervadec boundary loss`` on logits and {0, 1} targets.

    ``forward`` returns ``{"loss", "bce", "dice", "boundary"}``. The boundary term is computed
    (scipy, on the CPU) only when its weight is non-zero.
    """

    def __init__(
        self,
        bce: float = 1.0,
        dice: float = 1.0,
        boundary: float = 0.0,
        spacing: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        for name, w in (("bce", bce), ("dice", dice), ("boundary", boundary)):
            if not w >= 0:
                raise ValueError(f"SegmentationLoss: weight {name} must be >= 0, got {w}")
        self.weights = {"bce": float(bce), "dice": float(dice), "boundary": float(boundary)}
        self.spacing = None if spacing is None else tuple(float(s) for s in spacing)
        self.dice_loss = DiceLoss(sigmoid=True)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """The weighted sum and its parts."""
        if logits.shape != target.shape:
            raise ValueError(
                f"SegmentationLoss: logits {tuple(logits.shape)} and target "
                f"{tuple(target.shape)} differ"
            )
        target = target.to(logits.dtype)
        parts = {
            "bce": F.binary_cross_entropy_with_logits(logits, target),
            "dice": self.dice_loss(logits, target),
        }
        if self.weights["boundary"] > 0:
            parts["boundary"] = boundary_loss(logits, target, self.spacing)
        else:
            parts["boundary"] = logits.new_zeros(())
        parts["loss"] = sum(self.weights[k] * parts[k] for k in ("bce", "dice", "boundary"))
        return parts


def _binary(pred: torch.Tensor, target: torch.Tensor, threshold: float, logits: bool):
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    p = torch.sigmoid(pred) if logits else pred
    return (p > threshold).float(), (target > 0.5).float()


def dice_score(
    pred: torch.Tensor, target: torch.Tensor, threshold: float = 0.5, logits: bool = False
) -> torch.Tensor:
    """Dice ``2|P∩T| / (|P| + |T|)`` per (sample, channel) of the thresholded prediction."""
    p, t = _binary(pred, target, threshold, logits)
    return compute_dice(p, t, include_background=True, ignore_empty=False)


def iou_score(
    pred: torch.Tensor, target: torch.Tensor, threshold: float = 0.5, logits: bool = False
) -> torch.Tensor:
    """IoU ``|P∩T| / |P∪T|`` per (sample, channel) of the thresholded prediction."""
    p, t = _binary(pred, target, threshold, logits)
    return compute_iou(p, t, include_background=True, ignore_empty=False)
