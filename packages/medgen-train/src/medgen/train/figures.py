"""Figures for a run directory (PNG, matplotlib's Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def _show(ax, image: np.ndarray, mask: np.ndarray | None = None, title: str = "") -> None:
    ax.imshow(image, cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
    if mask is not None and mask.any():
        overlay = np.zeros((*mask.shape, 4))
        overlay[mask.astype(bool)] = (1.0, 0.2, 0.2, 0.45)
        ax.imshow(overlay, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=7)


def sample_grid(
    path: str | Path,
    bins: list[int],
    generated: list[np.ndarray],
    generated_masks: list[np.ndarray],
    real: list[np.ndarray],
    real_masks: list[np.ndarray],
    row_notes: list[str] | None = None,
) -> None:
    """One row per z-bin: generated images, the first with its generated mask overlaid, and
    the nearest real slice of that bin with its real mask.

    ``generated[i]`` is (k, H, W) for bin ``bins[i]``; ``real[i]`` is (H, W).
    """
    k = generated[0].shape[0]
    cols = k + 2
    fig, axes = plt.subplots(len(bins), cols, figsize=(1.3 * cols, 1.35 * len(bins)), squeeze=False)
    for r, b in enumerate(bins):
        for c in range(k):
            _show(axes[r, c], generated[r][c], title="generated" if r == 0 else "")
        _show(
            axes[r, k],
            generated[r][0],
            generated_masks[r][0],
            title="gen + gen mask" if r == 0 else "",
        )
        _show(axes[r, k + 1], real[r], real_masks[r], title="real + mask" if r == 0 else "")
        note = f"bin {b}" + (f"\n{row_notes[r]}" if row_notes else "")
        axes[r, 0].set_ylabel(note, fontsize=7)
    fig.tight_layout(pad=0.3)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def loss_curves(path: str | Path, rows: list[dict], channels: tuple[str, ...]) -> None:
    """Training loss per channel (log scale) and the learning rate against step."""
    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name in channels:
        ax.plot(steps, [r[f"loss_{name}"] for r in rows], label=f"{name} loss")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("weighted MSE")
    ax.grid(alpha=0.3)
    lr_ax = ax.twinx()
    lr_ax.plot(steps, [r["lr"] for r in rows], color="gray", ls="--", lw=1, label="lr")
    lr_ax.set_ylabel("learning rate")
    lines = ax.get_legend_handles_labels()
    lr_lines = lr_ax.get_legend_handles_labels()
    ax.legend(lines[0] + lr_lines[0], lines[1] + lr_lines[1], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def x0_psnr_plot(
    path: str | Path, history: list[tuple[int, list[float]]], num_train_timesteps: int
) -> None:
    """x0-prediction PSNR per timestep bucket, one line per evaluation step."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    n = len(history[0][1])
    centers = [(k + 0.5) * num_train_timesteps / n for k in range(n)]
    cmap = plt.get_cmap("viridis")
    for i, (step, values) in enumerate(history):
        ax.plot(
            centers,
            values,
            marker="o",
            ms=3,
            color=cmap(i / max(1, len(history) - 1)),
            label=f"step {step}",
        )
    ax.set_xlabel("timestep t (bucket centre)")
    ax.set_ylabel("x0-prediction PSNR (dB)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
