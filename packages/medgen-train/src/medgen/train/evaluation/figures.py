"""Figures for runs, samples and evaluations (PNG, matplotlib's Agg backend: no display).

Volumes are shown by their middle axial slice. Images are in [-1, 1]; masks overlay in red;
per-pixel absolute errors in [0, 2] as a heat map (``magma``) on one scale per figure.
"""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

BUCKET = re.compile(r"^loss_bucket\d+$")


def middle_slice(a: np.ndarray) -> np.ndarray:
    """A 2D view: the array itself, or the middle axial slice of a volume."""
    a = np.asarray(a)
    return a[a.shape[0] // 2] if a.ndim == 3 else a


def _show(ax, image: np.ndarray, mask: np.ndarray | None = None, title: str = "") -> None:
    ax.imshow(middle_slice(image), cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
    if mask is not None:
        m = middle_slice(mask).astype(bool)
        if m.any():
            overlay = np.zeros((*m.shape, 4))
            overlay[m] = (1.0, 0.2, 0.2, 0.45)
            ax.imshow(overlay, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=7)


def sample_grid(path: str | Path, rows: list[dict]) -> None:
    """One row per conditioning: its generated images (``images`` (k, *spatial)), the first
    with its generated mask (``masks``) overlaid when there is one, and optionally the nearest
    real item (``real``, ``real_mask``); ``label`` names the row, ``note`` adds scores."""
    k = max(len(r["images"]) for r in rows)
    has_mask = any(r.get("masks") is not None for r in rows)
    has_real = any(r.get("real") is not None for r in rows)
    cols = k + int(has_mask) + int(has_real)
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.3 * cols, 1.35 * len(rows)), squeeze=False)
    for i, r in enumerate(rows):
        top = i == 0
        for c in range(cols):
            axes[i, c].axis("off")
        for c, image in enumerate(r["images"]):
            axes[i, c].axis("on")
            _show(axes[i, c], image, title="generated" if top else "")
        c = k
        if has_mask:
            axes[i, c].axis("on")
            if r.get("masks") is not None:
                _show(axes[i, c], r["images"][0], r["masks"][0], "gen + gen mask" if top else "")
            c += 1
        if has_real and r.get("real") is not None:
            axes[i, c].axis("on")
            _show(axes[i, c], r["real"], r.get("real_mask"), "nearest real" if top else "")
        label = r["label"] + (f"\n{r['note']}" if r.get("note") else "")
        axes[i, 0].axis("on")
        axes[i, 0].set_ylabel(label, fontsize=7)
    fig.tight_layout(pad=0.3)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def loss_curves(path: str | Path, rows: list[dict], eval_rows: list[dict] = ()) -> None:
    """Training loss (total and per channel, log scale), the learning rate, and the
    validation losses when evaluations ran."""
    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    keys = [k for k in rows[0] if k.startswith("loss") and not BUCKET.match(k)]
    for key in keys:
        ax.plot(steps, [r[key] for r in rows], label=key, lw=1.2)
    for key in [k for k in (eval_rows[0] if eval_rows else {}) if k.startswith("val_loss")]:
        ax.plot([r["step"] for r in eval_rows], [r[key] for r in eval_rows], "o--", ms=3,
                label=key)  # fmt: skip
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("weighted loss")
    ax.grid(alpha=0.3)
    lr_keys = [k for k in rows[0] if k == "lr" or k.startswith("lr_")]
    lr_ax = ax.twinx()
    for key in lr_keys:
        lr_ax.plot(steps, [r[key] for r in rows], color="gray", ls=":", lw=1, label=key)
    lr_ax.set_ylabel("learning rate")
    lines = ax.get_legend_handles_labels()
    lr_lines = lr_ax.get_legend_handles_labels()
    ax.legend(lines[0] + lr_lines[0], lines[1] + lr_lines[1], fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def x0_psnr_plot(path: str | Path, eval_rows: list[dict], t_max: float) -> None:
    """x0-prediction PSNR per timestep bucket, one line per evaluation."""
    buckets = sorted(
        (int(k.removeprefix("x0_psnr_t")) for k in eval_rows[0] if k.startswith("x0_psnr_t")),
    )
    n = len(buckets)
    centers = [(k + 0.5) * t_max / n for k in buckets]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    cmap = plt.get_cmap("viridis")
    for i, r in enumerate(eval_rows):
        ax.plot(
            centers,
            [r[f"x0_psnr_t{k}"] for k in buckets],
            marker="o",
            ms=3,
            color=cmap(i / max(1, len(eval_rows) - 1)),
            label=f"step {r['step']}",
        )
    ax.set_xlabel("timestep t (bucket centre)")
    ax.set_ylabel("x0-prediction PSNR (dB)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def abs_error(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The per-pixel absolute error ``|a - b|`` of two images' 2D views (middle slices)."""
    a, b = middle_slice(a), middle_slice(b)
    if a.shape != b.shape:
        raise ValueError(f"error map of images of shapes {a.shape} and {b.shape}")
    return np.abs(a.astype(np.float64) - b.astype(np.float64))


def error_maps(
    path: str | Path, rows: list[dict], titles: tuple[str, str] = ("generated", "nearest real")
) -> list[np.ndarray]:
    """One row per pair: image ``a``, image ``b`` (``titles``) and the heat map of
    ``|a - b|`` per pixel, all rows on one colour scale (the colour bar); ``label`` names the
    row. Returns the error maps drawn."""
    errors = [abs_error(r["a"], r["b"]) for r in rows]
    vmax = max(max(float(e.max()) for e in errors), 1e-6)
    fig, axes = plt.subplots(len(rows), 3, figsize=(5.0, 1.45 * len(rows) + 0.3),
                             squeeze=False, layout="constrained")  # fmt: skip
    heat = None
    for i, (r, err) in enumerate(zip(rows, errors, strict=True)):
        top = i == 0
        _show(axes[i, 0], r["a"], title=titles[0] if top else "")
        _show(axes[i, 1], r["b"], title=titles[1] if top else "")
        heat = axes[i, 2].imshow(err, cmap="magma", vmin=0, vmax=vmax, interpolation="nearest")
        axes[i, 2].set_xticks([])
        axes[i, 2].set_yticks([])
        if top:
            axes[i, 2].set_title("|error| per pixel", fontsize=7)
        axes[i, 0].set_ylabel(r["label"], fontsize=6)
    bar = fig.colorbar(heat, ax=axes[:, 2].tolist(), shrink=min(1.0, 3 / len(rows)))
    bar.ax.tick_params(labelsize=6)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return errors


def reconstruction_figure(
    path: str | Path, inputs: np.ndarray, reconstructions: np.ndarray, labels: list[str]
) -> list[np.ndarray]:
    """Inputs (N, *spatial), their reconstructions (an autoencoder's decode(encode(x)), an
    x0 prediction) and the per-pixel error heat maps, one row per item."""
    rows = [{"a": x, "b": y, "label": lab}
            for x, y, lab in zip(inputs, reconstructions, labels, strict=True)]  # fmt: skip
    return error_maps(path, rows, titles=("input", "reconstruction"))


def worst_samples(scores: list, k: int) -> list:
    """The ``k`` samples with the lowest nearest-real SSIM, lowest first (ties: lower index)."""
    return sorted(scores, key=lambda s: (s.ssim, s.index))[:k]


def evaluation_figures(
    directory: Path, scores: list, images: np.ndarray, ref_images: np.ndarray, k: int = 8
) -> dict[str, Path]:
    """``errors.png`` (an even spread of the samples) and ``worst.png`` (the ``k`` lowest
    nearest-real SSIM): each sample's channel 0, its nearest real item's, and their error map,
    labelled with index, z-bin, class and SSIM. Returns {name: path}."""

    def rows(chosen):
        return [
            {
                "a": images[s.index, 0],
                "b": ref_images[s.nearest, 0],
                "label": f"#{s.index} bin {s.z_bin} class {s.class_id}\nSSIM {s.ssim:.2f}",
            }
            for s in chosen
        ]

    out = {"errors": Path(directory) / "errors.png", "worst": Path(directory) / "worst.png"}
    error_maps(out["errors"], rows(scores[:: max(1, len(scores) // k)][:k]))
    error_maps(out["worst"], rows(worst_samples(scores, k)))
    return out


def trajectory_figure(
    path: str | Path, frames: np.ndarray, steps: np.ndarray, times: np.ndarray, labels: list[str]
) -> None:
    """Denoising trajectories: one row per sample, its x0 prediction (channel 0) after each
    captured sampler step (``frames`` (K, F, *spatial), ``steps`` / ``times`` (F,))."""
    k, f = frames.shape[:2]
    fig, axes = plt.subplots(k, f, figsize=(1.2 * f, 1.25 * k + 0.2), squeeze=False)
    for i in range(k):
        for j in range(f):
            title = f"step {int(steps[j]) + 1}\nt={float(times[j]):.3g}" if i == 0 else ""
            _show(axes[i, j], frames[i, j], title=title)
        axes[i, 0].set_ylabel(labels[i], fontsize=6)
    fig.tight_layout(pad=0.3)
    fig.savefig(path, dpi=110)
    plt.close(fig)
