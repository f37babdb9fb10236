"""Validation of an autoencoder on held-out items: reconstruction quality and figures.

The EMA autoencoder (the raw one without EMA) reconstructs each item deterministically,
``decode(encode(x))`` (what a latent diffusion model's samples go through). Reported:
``l1``; ``psnr`` (data range 2: images in [-1, 1]) and ``ssim`` through MONAI's metrics (2D
and 3D; the window chosen for the item size, :func:`ssim_kernel`); ``ms_ssim`` by the evaluation
suite's :func:`medgen.train.evaluation.msssim.ms_ssim` (one MS-SSIM in MedGen: scales and window
from :func:`~medgen.train.evaluation.msssim.msssim_settings`, recorded in
:attr:`AutoencoderEvaluator.msssim_protocol`; left out when the items are too small for it);
``lpips`` with ``task.loss.perceptual_weights``; for a VQ-VAE the codebook ``perplexity``,
``usage`` and ``dead_codes`` of the held-out items' codes; in ``seg_mode`` ``dice`` and
``iou`` of the thresholded mask (and ``l1`` of the probabilities). Rank 0 adds the figure
``reconstructions``: input | reconstruction | per-pixel |error| heat map, one row per item.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from monai.metrics import PSNRMetric, SSIMMetric
from torch.utils.data import default_collate

from medgen.models.autoencoders import dice_score, iou_score
from medgen.models.autoencoders.vq import codebook_stats
from medgen.train.engine.batches import to_device
from medgen.train.engine.evaluators import Evaluation
from medgen.train.evaluation.msssim import MSSSIMSettings, ms_ssim, msssim_settings
from medgen.train.tasks.autoencoder.model import AUTOENCODER, PERCEPTUAL, AutoencoderModel

DATA_RANGE = 2.0  # images in [-1, 1]


def ssim_kernel(shape) -> int:
    """SSIM window for items of spatial ``shape``: MONAI's 11-pixel Gaussian window, or the
    largest odd window that fits the smallest axis."""
    size = min(int(s) for s in shape)
    return min(11, size if size % 2 else size - 1)


class AutoencoderEvaluator:
    """Reconstruction metrics on ``task.eval_samples`` held-out items (evenly spaced), each
    rank scoring its share."""

    def __init__(self, model: AutoencoderModel, dataset, batch_size: int, device) -> None:
        self.model, self.dataset, self.device = model, dataset, device
        self.batch_size = batch_size
        n = min(model.cfg.eval_samples, len(dataset))
        self.items = np.unique(np.linspace(0, len(dataset) - 1, n).round().astype(int)).tolist()
        spatial = tuple(int(n) for n in model.description.shape)
        dims = model.description.spatial_dims
        self.psnr = PSNRMetric(max_val=DATA_RANGE, reduction="none")
        self.ssim = SSIMMetric(dims, data_range=DATA_RANGE, win_size=ssim_kernel(spatial),
                               reduction="none")  # fmt: skip
        try:  # the evaluation suite's MS-SSIM settings, or none when the items are too small
            self.msssim_settings: MSSSIMSettings | None = msssim_settings(spatial)
        except ValueError:
            self.msssim_settings = None

    @property
    def msssim_protocol(self) -> dict | None:
        """What ``ms_ssim`` depends on (scales, window, weights); None when not reported."""
        return None if self.msssim_settings is None else self.msssim_settings.protocol()

    def metric_names(self) -> tuple[str, ...]:
        """What :meth:`evaluate` reports."""
        cfg = self.model.cfg
        if cfg.seg_mode:
            return ("l1", "dice", "iou")
        names = ["l1", "psnr", "ssim"] + (["ms_ssim"] if self.msssim_settings is not None else [])
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
            if self.msssim_settings is not None:
                scores = ms_ssim(out.cpu(), x.cpu(), data_range=DATA_RANGE,
                                 settings=self.msssim_settings)  # fmt: skip
                add("ms_ssim", torch.from_numpy(scores))
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
