"""Train-vs-validation KID during training: an overfitting signal.

At every ``N``-th evaluation (``task.overfit_kid_every: N``, i.e. every
``training.eval_every x N`` steps, and at the last step; 0 turns it off, the default) the
evaluator draws ``task.overfit_kid_samples`` samples from the EMA network with a short sampler
(``task.overfit_kid_steps`` steps of the run's ``sample`` sampler, fixed seed
``task.eval_seed``) and computes, on ``task.overfit_kid_features`` features (an extractor spec
of :mod:`medgen.train.evaluation.features`; ``random:0`` by default: relative use only),

- ``kid_train``: KID of the samples against as many training items (evenly spaced),
- ``kid_val``: KID of the samples against as many validation items,
- ``kid_gap = kid_val - kid_train``: grows when the samples drift toward the training items
  (memorisation) rather than the distribution both splits come from.

KID is :func:`medgen.train.evaluation.distribution.kid` (unbiased polynomial MMD^2, the mean
over ``KID_SUBSETS`` subsets of up to ``KID_SUBSET_SIZE``, seed 0); the real items' features
are extracted once. Rank 0 computes; the other ranks report nothing for these keys. At the
evaluations in between, the keys are absent (empty cells in ``eval.csv``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import default_collate

from medgen.train.engine.evaluators import Evaluation
from medgen.train.errors import SamplingError
from medgen.train.evaluation.distribution import kid

KID_SUBSETS = 10
KID_SUBSET_SIZE = 1000
NAMES = ("kid_train", "kid_val", "kid_gap")


def train_val_kid(
    gen,
    train,
    val,
    *,
    subsets: int = KID_SUBSETS,
    subset_size: int = KID_SUBSET_SIZE,
    seed: int = 0,
) -> dict[str, float]:
    """``kid_train``, ``kid_val`` and ``kid_gap`` of generated features (N, d) against
    training and validation features."""
    kw = dict(subsets=subsets, subset_size=subset_size, seed=seed)
    k_train = kid(gen, train, **kw)["mean"]
    k_val = kid(gen, val, **kw)["mean"]
    return {"kid_train": k_train, "kid_val": k_val, "kid_gap": k_val - k_train}


class OverfitKID:
    """The train-vs-validation KID evaluator (see the module docstring).

    ``generate(modules, ema) -> (n, C, *spatial)`` images draws the samples; ``train_items()`` /
    ``val_items()`` return the real images; ``extractor`` is an
    :class:`medgen.train.evaluation.features.Extractor`. It runs when ``step`` is a multiple
    of ``eval_every x every`` (every evaluation when ``eval_every`` is 0) or ``last_step``."""

    def __init__(
        self,
        generate: Callable,
        train_items: Callable,
        val_items: Callable,
        extractor,
        *,
        every: int,
        eval_every: int,
        last_step: int,
    ) -> None:
        self.generate, self.extractor = generate, extractor
        self._items = {"train": train_items, "val": val_items}
        self._features: dict[str, np.ndarray] = {}
        self.every, self.eval_every, self.last_step = every, eval_every, last_step

    def metric_names(self) -> tuple[str, ...]:
        """``kid_train``, ``kid_val``, ``kid_gap``."""
        return NAMES

    def due(self, step: int) -> bool:
        """Whether this evaluation computes the KIDs."""
        period = self.eval_every * self.every
        return period == 0 or step % period == 0 or step == self.last_step

    def features(self, images: np.ndarray) -> np.ndarray:
        """(N, d) features: the extractor's rows, 2.5D planes side by side."""
        out = self.extractor.extract(images)
        return np.concatenate([v.reshape(len(images), -1) for v in out.values()], axis=1)

    def real(self, split: str) -> np.ndarray:
        """Features of the ``split`` items (extracted once)."""
        if split not in self._features:
            self._features[split] = self.features(self._items[split]())
        return self._features[split]

    def evaluate(self, modules, ema, step: int, ctx) -> Evaluation:
        """Rank 0: ``(value, 1)`` per KID; other ranks ``(0, 0)``; nothing when not due."""
        if not self.due(step):
            return Evaluation()
        if not ctx.is_main:
            return Evaluation({k: (0.0, 0.0) for k in NAMES})
        try:
            gen = self.features(self.generate(modules, ema))
        except SamplingError:  # non-finite samples: the KIDs are NaN in eval.csv, not skipped
            return Evaluation({k: (float("nan"), 1.0) for k in NAMES})
        values = train_val_kid(gen, self.real("train"), self.real("val"))
        return Evaluation({k: (v, 1.0) for k, v in values.items()})


def _images(model, dataset, n: int) -> Callable[[], np.ndarray]:
    """A loader of ``n`` evenly spaced items' image channels (N, C, *spatial)."""

    def load() -> np.ndarray:
        idx = np.unique(np.linspace(0, len(dataset) - 1, min(n, len(dataset))).round().astype(int))
        batch = default_collate([dataset[int(i)] for i in idx])
        return model.layout.x0(batch)[:, model.layout.image_indices()].float().numpy()

    return load


def diffusion_overfit_kid(ctx, model, sample: Callable) -> OverfitKID | None:
    """The evaluator of a diffusion task's ``task.overfit_kid_*`` keys (None when off); one
    ConfigError naming the key when it cannot run. ``sample(network, n, settings)`` is the
    task's sampler: ``n`` samples (n, C, *spatial) of ``model`` with ``network`` in place of its
    own, drawn with the ``sample`` section ``settings`` (the evaluation layer imports no task)."""
    from medgen.train.errors import ConfigError
    from medgen.train.evaluation.features import Extractor, FeatureError

    cfg = ctx.config.task
    if not cfg.overfit_kid_every:
        return None
    if ctx.eval_dataset is None:
        raise ConfigError(
            f"task.overfit_kid_every: {cfg.overfit_kid_every} compares training and validation "
            "items, but there is no validation split (set data.eval_split)"
        )
    if model.layout.priors or model.layout.control:
        raise ConfigError(
            "task.overfit_kid_every: not available for runs conditioned on prior or control "
            "channels (set task.overfit_kid_every=0)"
        )
    try:
        extractor = Extractor(cfg.overfit_kid_features)
    except FeatureError as exc:
        raise ConfigError(f"task.overfit_kid_features: {exc}") from None
    n = cfg.overfit_kid_samples
    settings = dataclasses.replace(
        ctx.config.sample, steps=cfg.overfit_kid_steps, guidance=None, seed=cfg.eval_seed
    )

    @torch.no_grad()
    def generate(modules, ema) -> np.ndarray:
        x = sample(model.evaluated_network(modules, ema), n, settings)
        return x[:, model.layout.image_indices()]

    t = ctx.config.training
    return OverfitKID(
        generate,
        _images(model, ctx.train_dataset, n),
        _images(model, ctx.eval_dataset, n),
        extractor,
        every=cfg.overfit_kid_every,
        eval_every=t.eval_every,
        last_step=t.steps,
    )
