"""LPIPS (Zhang et al. 2018) of each sample against its nearest real item, from local weights.

The distance is :class:`medgen.models.autoencoders.perceptual.PerceptualLoss` (VGG16
``features`` from torchvision's ``vgg16-397923af.pth``, optionally lpips' linear heads
``vgg.pth``; nothing is downloaded): the spec is ``VGG16_WEIGHTS[,HEADS]``. Without heads every
channel of a tapped layer weighs 1 (not the published LPIPS numbers: the protocol says which).
Each image channel is compared as its own grayscale image and the distances are averaged over
channels; volumes go through PerceptualLoss' 2.5D route (a seeded quarter of the slices of
each plane). Weights sha256 and settings are recorded with the numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from medgen.train.evaluation.features import sha256

SLICE_FRACTION = 0.25
BATCH = 16


class LPIPS:
    """An LPIPS distance built from ``spec`` (``VGG16_WEIGHTS[,HEADS]``) for 2D or 3D images;
    a missing or unfitting weights file raises one ``ValueError`` naming it."""

    def __init__(self, spec: str, spatial_dims: int, seed: int = 0) -> None:
        from medgen.models.autoencoders.perceptual import PerceptualLoss

        weights, _, heads = spec.partition(",")
        if not weights:
            raise ValueError(f"{spec!r}: expected VGG16_WEIGHTS[,HEADS] (local files)")
        self.net = PerceptualLoss(
            weights,
            heads or None,
            spatial_dims=spatial_dims,
            slice_fraction=SLICE_FRACTION,
            seed=seed,
            reduction="none",
        )
        self.protocol = {
            "implementation": "medgen.models.autoencoders.perceptual.PerceptualLoss (VGG16)",
            "weights": weights,
            "weights_sha256": sha256(Path(weights)),
            "heads": heads or None,
            "heads_sha256": sha256(Path(heads)) if heads else None,
            "note": None
            if heads
            else "no lpips heads: unit channel weights, not comparable with published LPIPS",
            "channels": "each image channel as a grayscale image, averaged",
            "volumes": f"2.5D: {SLICE_FRACTION:g} of each plane's slices, seed {seed}",
        }

    @torch.no_grad()
    def distances(self, x, y) -> np.ndarray:
        """(N,) distances of the pairs ``(x[i], y[i])``, (N, C, *spatial) arrays in [-1, 1]."""
        x = torch.as_tensor(np.asarray(x, np.float32))
        y = torch.as_tensor(np.asarray(y, np.float32))
        out = []
        for s in range(0, len(x), BATCH):
            xs, ys = x[s : s + BATCH], y[s : s + BATCH]
            per_channel = [self.net(xs[:, c : c + 1], ys[:, c : c + 1]) for c in range(x.shape[1])]
            out.append(torch.stack(per_channel).mean(0))
        return torch.cat(out).double().numpy()


def lpips_nearest(metric: LPIPS, images, ref_images, nearest, indices) -> dict:
    """LPIPS of each sample against its nearest real item (``ref_images[nearest[i]]``): mean,
    std, n, the per-sample values with the samples' ``indices``, and the protocol."""
    values = metric.distances(images, np.asarray(ref_images)[np.asarray(nearest)])
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "n": len(values),
        "per_sample": [
            {"index": int(i), "lpips": float(v)} for i, v in zip(indices, values, strict=True)
        ],
        "protocol": metric.protocol,
    }
