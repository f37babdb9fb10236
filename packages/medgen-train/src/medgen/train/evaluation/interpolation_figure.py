"""``interpolation.png``: thick -> thin results where the slice axis is visible. For each item
a coronal and a sagittal cut through the middle of the volume (slice axis vertical):
ground truth | linear | cubic | model | |model - truth|, every panel on one grey scale
(images on [-1, 1]; the absolute error on [0, 2], the same width)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

COLUMNS = ("truth", "linear", "cubic", "model")


def cuts(volume: np.ndarray) -> dict[str, np.ndarray]:
    """The coronal (``[:, H // 2, :]``) and sagittal (``[:, :, W // 2]``) cuts of a
    ``(D, H, W)`` volume: 2D images whose rows run along the slice axis."""
    v = np.asarray(volume)
    return {"coronal": v[:, v.shape[1] // 2, :], "sagittal": v[:, :, v.shape[2] // 2]}


def interpolation_figure(path: str | Path, rows: list[dict], aspect: float = 1.0) -> None:
    """Write the figure for ``rows`` (each: ``label``, and ``truth``, ``linear``, ``cubic``,
    ``model`` as ``(D, H, W)`` arrays of the real thin slices); ``aspect``: the thin spacing over
    the in-plane spacing (how tall a slice is drawn)."""
    heads = [*COLUMNS, "|model - truth|"]
    n = 2 * len(rows)
    tall = max(r["truth"].shape[0] * aspect / max(r["truth"].shape[1:]) for r in rows)
    size = (1.5 * len(heads), (1.5 * min(max(tall, 0.2), 2.0) + 0.25) * n)
    fig, axes = plt.subplots(n, len(heads), figsize=size, squeeze=False)
    for r, row in enumerate(rows):
        views = {k: cuts(row[k]) for k in COLUMNS}
        for p, plane in enumerate(("coronal", "sagittal")):
            ax_row = axes[2 * r + p]
            panels = [views[k][plane] for k in COLUMNS]
            panels.append(np.abs(views["model"][plane] - views["truth"][plane]))
            for c, (ax, image) in enumerate(zip(ax_row, panels, strict=True)):
                lo, hi = (0.0, 2.0) if c == len(COLUMNS) else (-1.0, 1.0)
                ax.imshow(image, cmap="gray", vmin=lo, vmax=hi, aspect=aspect,
                          interpolation="nearest")  # fmt: skip
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0 and p == 0:
                    ax.set_title(heads[c], fontsize=7)
            ax_row[0].set_ylabel(f"{row['label']}\n{plane}", fontsize=6)
    fig.tight_layout(pad=0.3)
    fig.savefig(path, dpi=110)
    plt.close(fig)
