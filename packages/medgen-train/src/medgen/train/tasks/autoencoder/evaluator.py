"""Validation of an autoencoder on held-out items: reconstruction quality and figures.

The EMA autoencoder (the raw one without EMA) reconstructs each item deterministically,
``decode(encode(x))`` (what a latent diffusion model's samples go through). Reported:
``l1``; ``psnr`` (data range 2: images in [-1, 1]), ``ssim`` and ``ms_ssim`` through MONAI's
metrics (2D and 3D; kernel and scales chosen for the item size, :func:`ssim_settings`);
``lpips`` with ``task.loss.perceptual_weights``; for a VQ-VAE the codebook ``perplexity``,
``usage`` and ``dead_codes`` of the held-out items' codes; in ``seg_mode`` ``dice`` and
``iou`` of the thresholded mask (and ``l1`` of the probabilities). Rank 0 adds the figure
``reconstructions``: input | reconstruction | per-pixel |error| heat map, one row per item.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from monai.metrics import MultiScaleSSIMMetric, PSNRMetric, SSIMMetric
from torch.utils.data import default_collate

from medgen.models.autoencoders import dice_score, iou_score
from medgen.models.autoencoders.vq import codebook_stats
from medgen.train.engine.batches import to_device
from medgen.train.engine.evaluators import Evaluation
from medgen.train.tasks.autoencoder.model import AUTOENCODER, PERCEPTUAL, AutoencoderModel

DATA_RANGE = 2.0  # images in [-1, 1]
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003, five scales


def ssim_settings(shape) -> dict:
    """Kernel sizes and MS-SSIM scales valid for items of spatial ``shape``.

    SSIM: MONAI's 11-pixel Gaussian window, or the largest odd window that fits the smallest
    axis. MS-SSIM: as many of Wang et al.'s five scales as fit, the first ``n`` weights
    renormalised to sum to 1, with the largest odd window (<= 11) that MONAI accepts at that
    many scales (it requires ``size // (n - 1) ** 2 > kernel - 1`` on every axis); e.g. 64 x 64:
    5 scales, window 3; 32 x 32: 4 scales, window 3; 16 x 16: 3 scales, window 3.
    """
    size = min(int(s) for s in shape)
    ssim_kernel = min(11, size if size % 2 else size - 1)
    for n in range(5, 1, -1):
        limit = size // (n - 1) ** 2  # kernel - 1 < limit
        kernel = min(11, limit if limit % 2 else limit - 1)
        if kernel >= 3:
            w = MS_SSIM_WEIGHTS[:n]
            return {
                "ssim_kernel": ssim_kernel,
                "ms_ssim_kernel": kernel,
                "ms_ssim_weights": tuple(v / sum(w) for v in w),
            }
    return {"ssim_kernel": ssim_kernel, "ms_ssim_kernel": None, "ms_ssim_weights": ()}


class AutoencoderEvaluator:
    """Reconstruction metrics on ``task.eval_samples`` held-out items (evenly spaced), each
    rank scoring its share."""

    def __init__(self, model: AutoencoderModel, dataset, batch_size: int, device) -> None:
        self.model, self.dataset, self.device = model, dataset, device
        self.batch_size = batch_size
        n = min(model.cfg.eval_samples, len(dataset))
        self.items = np.unique(np.linspace(0, len(dataset) - 1, n).round().astype(int)).tolist()
        self.settings = ssim_settings(model.description.shape)
        dims = model.description.spatial_dims
        s = self.settings
        self.psnr = PSNRMetric(max_val=DATA_RANGE, reduction="none")
        self.ssim = SSIMMetric(dims, data_range=DATA_RANGE, win_size=s["ssim_kernel"],
                               reduction="none")  # fmt: skip
        self.ms_ssim = None
        if s["ms_ssim_kernel"] is not None:
            self.ms_ssim = MultiScaleSSIMMetric(
                dims, data_range=DATA_RANGE, kernel_size=s["ms_ssim_kernel"],
                weights=s["ms_ssim_weights"], reduction="none",
            )  # fmt: skip

    def metric_names(self) -> tuple[str, ...]:
        """What :meth:`evaluate` reports."""
        cfg = self.model.cfg
        if cfg.seg_mode:
            return ("l1", "dice", "iou")
        names = ["l1", "psnr", "ssim"] + (["ms_ssim"] if self.ms_ssim is not None else [])
        if self.model.perceptual is not None:
            names.append("lpips")
        if cfg.network.kind == "vq":
            names += ["perplexity", "usage", "dead_codes"]
        return tuple(names)

    def _batch(self, chunk: list[int]) -> torch.Tensor:
        batch = to_device(default_collate([self.dataset[i] for i in chunk]), self.device)
        return self.model.inputs(batch).float()

    @staticmethod
    def network(modules, ema):
        """The autoencoder scored: its EMA copy when there is one."""
        return ema.get(AUTOENCODER, modules[AUTOENCODER])

    @torch.no_grad()
    def evaluate(self, modules, ema, step: int, ctx) -> Evaluation:
        """This rank's sums of per-item metrics; rank 0 adds the reconstruction figure."""
        net = self.network(modules, ema)
        sums: dict[str, tuple[float, float]] = {}

        def add(key: str, values: torch.Tensor) -> None:
            s, c = sums.get(key, (0.0, 0.0))
            v = values.detach().double().flatten()
            sums[key] = (s + float(v.sum()), c + v.numel())

        mine = self.items[ctx.rank :: ctx.world_size]
        codes = []
        for start in range(0, len(mine), self.batch_size):
            x = self._batch(mine[start : start + self.batch_size])
            out = net.decode(net.encode(x)).float()
            if self.model.cfg.seg_mode:
                target = (x > 0).float()
                add("l1", (torch.sigmoid(out) - target).abs().flatten(1).mean(1))
                add("dice", dice_score(out, target, logits=True).mean(1))
                add("iou", iou_score(out, target, logits=True).mean(1))
                continue
            add("l1", (out - x).abs().flatten(1).mean(1))
            add("psnr", self.psnr(out, x))
            add("ssim", self.ssim(out, x))
            if self.ms_ssim is not None:
                add("ms_ssim", self.ms_ssim(out, x))
            if PERCEPTUAL in modules:
                g = torch.Generator().manual_seed(step)  # the same slices for every item set
                per = [modules[PERCEPTUAL](out[:, c : c + 1], x[:, c : c + 1], g)
                       for c in range(x.shape[1])]  # fmt: skip
                add("lpips", torch.stack(per).mean(0))
            if hasattr(net, "indices"):
                codes.append(net.indices(x).flatten())
        if codes:  # codebook statistics of this rank's held-out codes
            stats = codebook_stats(torch.cat(codes), net.num_embeddings)
            for k in ("perplexity", "usage", "dead_codes"):
                sums[k] = (stats[k], 1.0)
        images = {}
        if ctx.is_main:
            images["reconstructions"] = self.figure(net)
        return Evaluation(sums, images)

    def figure(self, net) -> np.ndarray:
        """Input | reconstruction | |error| of the first ``eval_images`` items (channel 0; a
        volume's middle axial slice), as an RGB array in [0, 1]."""
        import matplotlib.image as mpimg

        from medgen.train.evaluation.figures import reconstruction_figure

        chunk = self.items[: self.model.cfg.eval_images]
        x = self._batch(chunk)
        out = self.as_image(net.decode(net.encode(x)).float())
        buffer = io.BytesIO()
        labels = [f"item {i}" for i in chunk]
        reconstruction_figure(buffer, x[:, 0].cpu().numpy(), out[:, 0].cpu().numpy(), labels)
        buffer.seek(0)
        return np.asarray(mpimg.imread(buffer, format="png"))[..., :3]

    def as_image(self, output: torch.Tensor) -> torch.Tensor:
        """The output in [-1, 1] terms (seg mode: logits -> 2p - 1)."""
        return torch.sigmoid(output) * 2 - 1 if self.model.cfg.seg_mode else output
