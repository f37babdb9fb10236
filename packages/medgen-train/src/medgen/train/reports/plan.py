"""``plan.md`` and ``plan.png``: a dataset fingerprint and its proposal, for a person.

The figure (matplotlib, Agg backend) has four histograms: voxel spacing per axis, cropped
shape per axis, pooled foreground intensities per channel, lesion volumes (log10 mm^3).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

AXES = ("z", "y", "x")


def plan_figure(path: Path, fp) -> None:
    """Write the four histograms of fingerprint ``fp`` to PNG ``path``."""
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.2))
    spacing, shape = fp.column("spacing"), fp.column("shape_after_crop")
    for i, name in enumerate(AXES):
        axes[0].hist(spacing[:, i], bins=10, alpha=0.6, label=name)
        axes[1].hist(shape[:, i], bins=10, alpha=0.6, label=name)
    axes[0].set_title("spacing (mm)")
    axes[1].set_title("shape after crop (voxels)")
    for c in fp.channels:
        values = np.concatenate([case.samples[c] for case in fp.cases if case.samples[c].size])
        axes[2].hist(values, bins=50, alpha=0.6, label=c)
    axes[2].set_title("foreground intensity")
    sizes = fp.lesion_sizes()
    if sizes.size:
        axes[3].hist(np.log10(sizes), bins=15, color="tab:red")
    axes[3].set_title(f"lesion volume, log10 mm^3 (n={sizes.size})")
    for ax in axes[:3]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _row(values: np.ndarray) -> str:
    return " x ".join(f"{v:g}" for v in values)


def plan_markdown(fp, proposal, files: dict[str, str]) -> str:
    """The Markdown summary of fingerprint ``fp`` and ``proposal``."""
    spacing, shape = fp.column("spacing"), fp.column("shape_after_crop")
    lines = [
        f"# Plan for {fp.root}",
        "",
        f"{fp.layout} layout, {len(fp.cases)} labelled cases ({fp.n_test} unlabelled test "
        f"cases left out), channels {', '.join(fp.channels)}, labels "
        + ", ".join(f"{k} {v}" for k, v in fp.labels.items()),
        "",
        "| | min | median | max |",
        "|---|---|---|---|",
        f"| spacing (mm, z x y x x) | {_row(spacing.min(0))} | {_row(np.median(spacing, 0))} | "
        f"{_row(spacing.max(0))} |",
        f"| shape after crop | {_row(shape.min(0))} | {_row(np.median(shape, 0))} | "
        f"{_row(shape.max(0))} |",
        "",
        "| channel | foreground mean | std | p0.5 | p99.5 |",
        "|---|---|---|---|---|",
    ]
    for c in fp.channels:
        s = fp.intensity[c]
        lines.append(f"| {c} | {s['mean']:.4g} | {s['std']:.4g} | {s['percentile_00_5']:.4g} | "
                     f"{s['percentile_99_5']:.4g} |")  # fmt: skip
    sizes = fp.lesion_sizes()
    if sizes.size:
        q = np.percentile(sizes, (5, 50, 95))
        lines += ["", f"{sizes.size} lesions (connected components of label > 0): volume p5 "
                      f"{q[0]:.0f}, median {q[1]:.0f}, p95 {q[2]:.0f} mm^3"]  # fmt: skip
    counts: dict[str, int] = {}
    for case in fp.cases:
        for k, n in case.label_voxels.items():
            counts[k] = counts.get(k, 0) + n
    lines += ["", "Voxels per label value: " + ", ".join(f"{k}: {n}" for k, n in counts.items())]
    lines += ["", f"## Proposal: {proposal.kind}, target spacing {proposal.spacing} mm", ""]
    lines += [f"- {n}" for n in proposal.notes]
    lines += [f"- memory estimate {k}: {v:g} GiB" for k, v in proposal.memory_gib.items()]
    lines += ["", "Files: " + ", ".join(f"`{k}` ({v})" for k, v in files.items()), "",
              "![histograms](plan.png)", ""]  # fmt: skip
    return "\n".join(lines)
