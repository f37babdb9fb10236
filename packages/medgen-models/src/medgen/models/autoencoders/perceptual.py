"""LPIPS-style perceptual loss on a VGG16 backbone read from a local weights file; 2.5D for volumes.

Zhang et al. 2018 (LPIPS): for each tapped layer l, features are unit-normalised over channels,
their squared difference is (optionally) weighted per channel by a learned 1x1 head and summed
over channels, averaged over space; the distance is the sum over layers.

The backbone is built here with torchvision's VGG16 ``features`` layout (keys
``features.0.weight`` ... ``features.28.bias``; torchvision itself cannot be a dependency), so
torchvision's ``vgg16-397923af.pth`` loads as is (its ``classifier.*`` keys are ignored), and
lpips' linear heads (``vgg.pth`` from the lpips package, keys ``lin0.model.1.weight`` ...)
load as ``heads``. Weights come from local paths only: a missing path is a one-line error
naming it and how to obtain the file; nothing is downloaded.

Inputs are in [-1, 1] (MedGen's intensity convention) with 1 or 3 channels (1 is repeated to
3) and LPIPS' input scaling layer is applied. Volumes (``spatial_dims=3``): a fraction of the
slices of each of the three planes is sampled (seeded ``torch.Generator``); the loss is the
mean over the three planes of the mean 2D loss over that plane's slices and the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from medgen.models.autoencoders.weights import WeightsError, load_into, read_state_dict

VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
LPIPS_TAPS = (3, 8, 15, 22, 29)  # torchvision vgg16.features indices of relu1_2 ... relu5_3
LPIPS_CHANNELS = (64, 128, 256, 512, 512)
# LPIPS' ScalingLayer: (x - shift) / scale for inputs in [-1, 1]
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
VGG_HINT = (
    "the VGG16 backbone weights are torchvision's vgg16-397923af.pth (ImageNet; obtain it "
    "once with torchvision on a networked machine, e.g. torchvision.models.vgg16(weights="
    "'IMAGENET1K_V1'), then copy the file from ~/.cache/torch/hub/checkpoints/) and pass its path"
)
HEADS_HINT = (
    "the LPIPS linear heads are lpips' weights/v0.1/vgg.pth (pip package lpips, or "
    "github.com/richzhang/PerceptualSimilarity); pass its path, or heads=None for unit weights"
)


def vgg16_features(num_layers: int = 5) -> nn.Sequential:
    """torchvision's VGG16 ``features`` up to the ReLU of LPIPS layer ``num_layers`` (same indices)."""
    layers: list[nn.Module] = []
    c_in = 3
    for v in VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(c_in, int(v), kernel_size=3, padding=1), nn.ReLU()]
            c_in = int(v)
    return nn.Sequential(*layers[: LPIPS_TAPS[num_layers - 1] + 1])


def sample_slices(
    sizes: Sequence[int], fraction: float, generator: torch.Generator | None = None
) -> list[torch.Tensor]:
    """Sorted slice indices per plane: ``max(1, round(fraction * n))`` of each axis's ``n``."""
    if not 0 < fraction <= 1:
        raise ValueError(f"slice_fraction must be in (0, 1], got {fraction}")
    out = []
    for n in sizes:
        k = max(1, round(fraction * int(n)))
        out.append(torch.randperm(int(n), generator=generator)[:k].sort().values)
    return out


class PerceptualLoss(nn.Module):
    """LPIPS-style distance on VGG16 from ``weights`` (and optional lpips ``heads``), frozen.

    ``num_layers`` (1-5) LPIPS layers are tapped; ``spatial_dims=3`` makes it 2.5D with
    ``slice_fraction`` of each plane's slices (``seed`` seeds the sampling generator, which
    advances with each call). ``forward(x, y)`` returns the batch mean (``reduction="mean"``)
    or the per-sample distances (``"none"``).
    """

    def __init__(
        self,
        weights: str | Path,
        heads: str | Path | None = None,
        spatial_dims: int = 2,
        num_layers: int = 5,
        slice_fraction: float = 0.25,
        seed: int = 0,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"PerceptualLoss: spatial_dims must be 2 or 3, got {spatial_dims}")
        if not 1 <= num_layers <= len(LPIPS_TAPS):
            raise ValueError(f"PerceptualLoss: num_layers must be in [1, 5], got {num_layers}")
        if reduction not in ("mean", "none"):
            raise ValueError(
                f"PerceptualLoss: reduction must be 'mean' or 'none', got {reduction!r}"
            )
        sample_slices([1], slice_fraction)  # validates the fraction
        self.spatial_dims = spatial_dims
        self.num_layers = num_layers
        self.slice_fraction = float(slice_fraction)
        self.reduction = reduction
        self.generator = torch.Generator().manual_seed(int(seed))
        self.features = vgg16_features(num_layers)
        state = read_state_dict(weights, VGG_HINT)
        feats = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
        feats = {k: v for k, v in feats.items() if int(k.split(".")[0]) < len(self.features)}
        if not feats:
            raise WeightsError(
                f"weights file {weights}: no torchvision VGG16 'features.N.weight' keys "
                f"(found e.g. {list(state)[:3]}); {VGG_HINT}"
            )
        load_into(self.features, feats, weights)
        self.heads = None
        if heads is not None:
            self.heads = nn.ModuleList(
                nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in LPIPS_CHANNELS[:num_layers]
            )
            hstate = read_state_dict(heads, HEADS_HINT)
            mapped = {
                f"{i}.weight": hstate[f"lin{i}.model.1.weight"]
                for i in range(num_layers)
                if f"lin{i}.model.1.weight" in hstate
            }
            load_into(self.heads, mapped, heads)
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> PerceptualLoss:
        """Always in eval mode (a frozen metric network)."""
        return super().train(False)

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] != 3:
            raise ValueError(f"PerceptualLoss: expected 1 or 3 channels, got {x.shape[1]}")
        h = (x - self.shift) / self.scale
        taps = []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in LPIPS_TAPS:
                taps.append(h)
        return taps

    def distance2d(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample LPIPS distance (B,) of two (B, C, H, W) batches."""
        if x.shape != y.shape or x.ndim != 4:
            raise ValueError(
                f"PerceptualLoss: expected two equal (B, C, H, W) shapes, got "
                f"{tuple(x.shape)} and {tuple(y.shape)}"
            )
        total = x.new_zeros(x.shape[0])
        for i, (fx, fy) in enumerate(zip(self._taps(x), self._taps(y), strict=True)):
            nx = fx / (fx.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            ny = fy / (fy.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            d = (nx - ny).pow(2)
            d = self.heads[i](d) if self.heads is not None else d.sum(1, keepdim=True)
            total = total + d.mean(dim=(1, 2, 3))
        return total

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The distance of ``x`` to ``y`` (2D batches, or 3D volumes through sampled slices)."""
        if self.spatial_dims == 2:
            per_sample = self.distance2d(x, y)
        else:
            if x.shape != y.shape or x.ndim != 5:
                raise ValueError(
                    f"PerceptualLoss (3D): expected two equal (B, C, D, H, W) shapes, got "
                    f"{tuple(x.shape)} and {tuple(y.shape)}"
                )
            picks = sample_slices(x.shape[2:], self.slice_fraction, generator or self.generator)
            planes = []
            for axis, idx in enumerate(picks):
                dim = 2 + axis
                xs = x.index_select(dim, idx.to(x.device)).movedim(dim, 1)  # (B, k, C, ., .)
                ys = y.index_select(dim, idx.to(y.device)).movedim(dim, 1)
                b, k = xs.shape[:2]
                d = self.distance2d(xs.flatten(0, 1), ys.flatten(0, 1)).view(b, k)
                planes.append(d.mean(1))
            per_sample = torch.stack(planes).mean(0)
        return per_sample.mean() if self.reduction == "mean" else per_sample
