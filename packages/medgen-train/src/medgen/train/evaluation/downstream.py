"""Downstream utility of generated data: does it help a segmentation network?

A MONAI ``SegResNet`` or ``UNet`` (2D or 3D from the data) is trained from the same seed on
real, synthetic, or real + synthetic (image, mask) items with MONAI's ``DiceCELoss`` (one
sigmoid foreground channel, batch Dice, a plain AdamW loop), then scored on held-out *real* items: the
Dice of each test item's thresholded prediction (``sigmoid >= threshold``) against its real
mask, 1.0 when both are empty and 0.0 when only one is (the convention of
:func:`medgen.train.evaluation.metrics.dice`, and of MONAI's ``DiceMetric`` with
``ignore_empty=False``). Intervals: percentile and BCa bootstrap over test items
(:func:`medgen.train.evaluation.bootstrap.bootstrap_ci`); a mode's gain over ``real`` is the
paired bootstrap of the per-item differences on the same test items.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from monai.losses import DiceCELoss
from monai.networks.nets import SegResNet, UNet
from torch.utils.data import Dataset

from medgen.train.evaluation.bootstrap import bootstrap_ci
from medgen.train.evaluation.metrics import dice

LEVEL = 0.95


class ArrayItems(Dataset):
    """(image, mask) items from arrays: images ``(N, C, *S)``, masks ``(N, *S)`` (foreground
    where > 0: a generated mask channel in [-1, 1] is thresholded at 0, 0 / 1 masks stay)."""

    def __init__(self, images: np.ndarray, masks: np.ndarray) -> None:
        if len(images) != len(masks) or images.shape[2:] != masks.shape[1:]:
            raise ValueError(
                f"images {list(images.shape)} and masks {list(masks.shape)} do not pair up"
            )
        self.images = np.asarray(images, np.float32)
        self.masks = np.asarray(masks) > 0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = torch.from_numpy(self.images[i].copy())
        return image, torch.from_numpy(self.masks[i][None].astype(np.float32))


class CacheItems(Dataset):
    """(image, mask) items of a :class:`medgen.data.CacheDataset` with masks (foreground where
    the label is > 0)."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        item = self.dataset[i]
        return item["image"].float(), (item["mask"] > 0).float()


def build_network(
    name: str, spatial_dims: int, in_channels: int, widths: Sequence[int], num_res_blocks: int
) -> torch.nn.Module:
    """MONAI ``SegResNet`` (``init_filters`` = widths[0], doubling per level) or ``UNet``
    (``channels`` = widths, stride 2) with one output channel (foreground logits)."""
    levels = len(widths)
    if name == "segresnet":
        return SegResNet(
            spatial_dims=spatial_dims,
            init_filters=int(widths[0]),
            in_channels=in_channels,
            out_channels=1,
            blocks_down=(max(1, num_res_blocks),) * levels,
            blocks_up=(1,) * (levels - 1),
        )
    if name == "unet":
        return UNet(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=1,
            channels=tuple(int(w) for w in widths),
            strides=(2,) * (levels - 1),
            num_res_units=num_res_blocks,
        )
    raise ValueError(f"network: expected segresnet or unet, got {name!r}")


def batch_order(n: int, steps: int, batch_size: int, seed: int) -> np.ndarray:
    """``(steps, batch_size)`` item indices: seeded epoch permutations of ``range(n)`` read
    one after another (every item once per epoch; a batch may span two epochs)."""
    rng = np.random.default_rng(seed)
    need = steps * batch_size
    epochs = [rng.permutation(n) for _ in range(-(-need // n))]
    return np.concatenate(epochs)[:need].reshape(steps, batch_size)


def _batch(dataset: Dataset, indices, device) -> tuple[torch.Tensor, torch.Tensor]:
    pairs = [dataset[int(i)] for i in indices]
    images = torch.stack([p[0] for p in pairs]).to(device)
    return images, torch.stack([p[1] for p in pairs]).to(device)


def train_segmenter(
    net: torch.nn.Module,
    dataset: Dataset,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    device: torch.device,
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train ``net`` in place for ``steps`` AdamW steps of ``DiceCELoss(sigmoid=True,
    batch=True)`` (Dice over the whole batch, as nnU-Net's batch Dice: a lesion-free item alone
    does not pull towards empty predictions); batches from :func:`batch_order`. Returns the loss
    of every step."""
    loss_fn = DiceCELoss(sigmoid=True, batch=True)
    optim = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    net.to(device).train()
    losses = []
    for step, indices in enumerate(batch_order(len(dataset), steps, batch_size, seed)):
        images, masks = _batch(dataset, indices, device)
        loss = loss_fn(net(images), masks)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"step {step}: the segmentation loss is {float(loss)}")
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(step, losses[-1])
    return losses


def binarize(logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """Foreground where ``sigmoid(logits) >= threshold``."""
    return torch.sigmoid(logits.float()) >= threshold


@torch.no_grad()
def predict_masks(
    net: torch.nn.Module, dataset: Dataset, batch_size: int, threshold: float, device
) -> np.ndarray:
    """Binary predictions ``(N, *S)`` for every item of ``dataset``, in order."""
    net.to(device).eval()
    out = []
    for start in range(0, len(dataset), batch_size):
        images, _ = _batch(dataset, range(start, min(start + batch_size, len(dataset))), device)
        out.append(binarize(net(images), threshold)[:, 0].cpu().numpy())
    return np.concatenate(out)


def per_item_dice(predicted: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Dice of each predicted mask with its reference (both ``(N, *S)``)."""
    if predicted.shape != reference.shape:
        raise ValueError(f"predictions {predicted.shape} vs references {reference.shape}")
    return np.array([dice(p, r) for p, r in zip(predicted, reference, strict=True)])


def item_interval(
    values: np.ndarray, n_boot: int, seed: int, groups: np.ndarray | None = None
) -> dict | None:
    """Mean of ``values`` (one per test item) with its 95% percentile and BCa intervals: the
    items resampled with replacement (``bootstrap_ci`` with a one-item dummy second sample),
    or, with ``groups`` (a subject per item), whole subjects (the cluster bootstrap: a
    subject's correlated slices stay together). None for fewer than 2 items or subjects."""
    values = np.asarray(values, np.float64)
    if groups is None:
        members = [np.array([i]) for i in range(len(values))]
    else:
        labels = np.asarray(groups)
        members = [np.flatnonzero(labels == g) for g in dict.fromkeys(labels.tolist())]
    if len(members) < 2:
        return None

    def mean_of(idx: np.ndarray, _: np.ndarray) -> float:
        return float(values[np.concatenate([members[i] for i in idx])].mean())

    ci = bootstrap_ci(mean_of, len(members), 1, n_boot=n_boot, level=LEVEL, seed=seed,
                      estimate=float(values.mean()))  # fmt: skip
    keep = ("estimate", "percentile", "bca", "boot_std", "level", "n_boot", "seed")
    unit = "test items" if groups is None else "test subjects"
    return {k: ci[k] for k in keep} | {"n": len(values), "n_resampled": len(members),
                                       "resampled": unit}  # fmt: skip


def _ci_text(ci: dict | None, key: str = "bca") -> str:
    if ci is None:
        return "n/a"
    lo, hi = ci[key] if ci.get(key) else (float("nan"),) * 2
    return f"{ci['estimate']:.3f} [{lo:.3f}, {hi:.3f}]"


def downstream_markdown(result: dict) -> str:
    """``downstream.md``: one row per mode, then the protocol."""
    p = result["protocol"]
    lines = [
        "# Downstream segmentation utility",
        "",
        f"Held-out real test data: `{p['test']['data']}` ({p['test']['n_items']} items of "
        f"{p['test']['n_subjects']} subject{'s' if p['test']['n_subjects'] != 1 else ''}, "
        f"{p['test']['n_lesion_items']} with foreground).",
        "",
        "| mode | N train (real + synthetic) | Dice [95% CI] | Dice, items with foreground "
        "[95% CI] | Dice - real [95% CI] |",
        "|---|---|---|---|---|",
    ]
    for mode, r in result["modes"].items():
        n = f"{r['n_train_real'] + r['n_train_synthetic']} ({r['n_train_real']} + "
        n += f"{r['n_train_synthetic']})"
        gain = _ci_text(r.get("dice_minus_real")) if mode != "real" else "-"
        lines.append(
            f"| {mode} | {n} | {_ci_text(r['dice'])} | {_ci_text(r['dice_foreground'])} | {gain} |"
        )
    lines += [
        "",
        f"Intervals: BCa, {p['bootstrap']} bootstrap replicates over test {p['resample']} (seed "
        f"{p['seed']}; percentile intervals in downstream.json). Dice per item: "
        f"{p['dice']}.",
        "",
        f"Protocol: MONAI {p['network']['name']} ({p['network']['spatial_dims']}D, widths "
        f"{p['network']['widths']}, {p['network']['parameters']:,} parameters), "
        f"{p['loss']}, AdamW lr {p['lr']:g}, {p['steps']} steps of batch {p['batch_size']}, "
        f"seed {p['seed']}, threshold {p['threshold']:g} on the sigmoid; device "
        f"{p['device']}.",
    ]
    for key in ("real", "synthetic"):
        if p.get(key):
            d = p[key]
            lines.append(f"- {key}: `{d['data']}` ({d['n_items']} items; {d['hash_name']} "
                         f"{d['sha256'][:16]})")  # fmt: skip
    lines.append(f"- test: `{p['test']['data']}` (manifest sha256 {p['test']['sha256'][:16]})")
    return "\n".join(lines) + "\n"
