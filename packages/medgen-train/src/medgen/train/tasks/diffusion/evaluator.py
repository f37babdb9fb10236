"""The ``diffusion`` task's validation: the loss and the x0-prediction PSNR per timestep
bucket on held-out items (the JS-DDPM health check: high at small t, falling smoothly)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import default_collate

from medgen.train.engine.batches import to_device
from medgen.train.engine.evaluators import Evaluation
from medgen.train.latents.space import data_x0
from medgen.train.tasks.diffusion.task import DiffusionModel


class DiffusionEvaluator:
    """Validation loss and x0-prediction PSNR per timestep bucket on held-out items, computed
    on every rank over its share of the items, from the EMA weights when there are any."""

    def __init__(self, model: DiffusionModel, dataset, batch_size: int, device) -> None:
        self.model, self.dataset, self.device = model, dataset, device
        self.batch_size = batch_size
        n = min(model.cfg.eval_samples, len(dataset))
        self.items = np.unique(np.linspace(0, len(dataset) - 1, n).round().astype(int)).tolist()

    def metric_names(self) -> tuple[str, ...]:
        """What :meth:`summarize` reports."""
        groups = [f"val_loss_{g}" for g in self.model.layout.latent_groups(self.model.space)]
        buckets = [f"x0_psnr_t{k}" for k in range(self.model.cfg.eval_buckets)]
        return ("val_loss", *groups, *buckets)

    def _draw(self, item: int, bucket: int | None) -> tuple[torch.Generator, object]:
        code = 0 if bucket is None else bucket + 1
        seed = np.random.SeedSequence([self.model.cfg.eval_seed, item, code]).generate_state(1)
        g = torch.Generator().manual_seed(int(seed[0]))
        s = self.model.strategy
        if bucket is None:
            return g, s.sample_timesteps(1, g)
        n = self.model.cfg.eval_buckets
        if s.kind == "ddpm":  # the t with floor(t n / T) == bucket, as bucket() assigns them
            T = s.num_train_timesteps
            lo, hi = -(-bucket * T // n), -(-(bucket + 1) * T // n)
            return g, torch.randint(lo, hi, (1,), generator=g)
        u = torch.rand((1,), generator=g, dtype=torch.float64)
        return g, ((bucket + u) / n).clamp(max=1.0).float()

    def _noise(self, chunk: list[int], bucket: int | None, like: torch.Tensor):
        draws = [self._draw(i, bucket) for i in chunk]
        t = torch.cat([d[1] for d in draws]).to(self.device)
        noise = torch.cat([torch.randn((1, *like.shape[1:]), generator=g) for g, _ in draws])
        return t, noise.to(like)

    def _x0_prediction(self, net, batch, x0, cond, chunk, bucket: int) -> torch.Tensor:
        """The clipped x0 prediction of the image channels, in data space."""
        m = self.model
        t, noise = self._noise(chunk, bucket, x0)
        x_t = m.strategy.add_noise(x0, noise, t)
        out = net(x_t, m.strategy.model_time(t).to(self.device), cond)
        pred = m.space.decode(m.strategy.predict_x0(x_t, out, t))[:, m.layout.image_indices()]
        if m.cfg.clip_x0 is not None:
            pred = pred.clamp(-m.cfg.clip_x0, m.cfg.clip_x0)
        return pred

    def _batch(self, chunk: list[int]):
        batch = to_device(default_collate([self.dataset[i] for i in chunk]), self.device)
        x0, valid = self.model.encode(batch)
        return batch, x0, valid, self.model.conditioning(batch)

    @torch.no_grad()
    def evaluate(self, modules, ema, step: int, ctx) -> Evaluation:
        """This rank's sums of losses and squared x0 errors; rank 0 adds an image."""
        m = self.model
        net = m.evaluated_network(modules, ema)
        sums: dict[str, tuple[float, float]] = {}

        def add(key: str, total: float, count: float) -> None:
            s, c = sums.get(key, (0.0, 0.0))
            sums[key] = (s + total, c + count)

        mine = self.items[ctx.rank :: ctx.world_size]
        for start in range(0, len(mine), self.batch_size):
            chunk = mine[start : start + self.batch_size]
            batch, x0, valid, cond = self._batch(chunk)
            t, noise = self._noise(chunk, None, x0)  # fixed per item: evaluations compare
            losses, per_sample = m.losses(net, batch, t, noise, x0, valid, cond)
            add("val_loss", float(per_sample.sum()), len(chunk))
            for name in m.layout.latent_groups(m.space):
                add(f"val_loss_{name}", float(losses[name]) * len(chunk), len(chunk))
            truth = data_x0(m.space, m.layout, batch)[:, m.layout.image_indices()].float()
            weight = batch.get("valid")
            for k in range(m.cfg.eval_buckets):
                err = (self._x0_prediction(net, batch, x0, cond, chunk, k).float() - truth) ** 2
                w = weight.expand_as(err).float() if weight is not None else torch.ones_like(err)
                add(f"x0_mse_t{k}", float((err * w).sum()), float(w.sum()))
        images = {}
        if ctx.is_main:
            images["x0_predictions"] = self._image(net)
        return Evaluation(sums, images)

    def _image(self, net) -> np.ndarray:
        """Real image channel 0 of the first held-out items, then the x0 predictions at an
        early, a middle and the last timestep bucket (one column each)."""
        m = self.model
        chunk = self.items[:4]
        batch, x0, _, cond = self._batch(chunk)
        n = m.cfg.eval_buckets
        columns = [data_x0(m.space, m.layout, batch)[:, m.layout.image_indices()[0]]]
        for k in (1, n // 2, n - 1):
            columns.append(self._x0_prediction(net, batch, x0, cond, chunk, k)[:, 0])
        return _grid([c.detach().float().cpu() for c in columns])

    def summarize(self, means: dict[str, float]) -> dict[str, float]:
        """Mean squared errors (data range [-1, 1]) as PSNR in dB."""
        out = {k: v for k, v in means.items() if not k.startswith("x0_mse_")}
        for k in range(self.model.cfg.eval_buckets):
            mse = means.get(f"x0_mse_t{k}", math.nan)
            out[f"x0_psnr_t{k}"] = 10 * math.log10(4.0 / max(mse, 1e-12)) if mse == mse else mse
        return out


def _grid(columns: list[torch.Tensor]) -> np.ndarray:
    """Columns of (n, *spatial) images in [-1, 1] side by side -> (H, W) in [0, 1]; volumes
    show their middle axial slice."""
    cols = []
    for c in columns:
        a = c.numpy()
        if a.ndim == 4:
            a = a[:, a.shape[1] // 2]
        cols.append(np.concatenate(list(a), axis=0))
    return (np.concatenate(cols, axis=1) + 1) / 2
