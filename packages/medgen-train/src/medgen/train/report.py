"""``report.md``: the run's figures and numbers in one page."""

from __future__ import annotations

from pathlib import Path

from medgen.train.config import to_dict


def _fmt(values: list[float]) -> str:
    return " | ".join(f"{v:.2f}" for v in values)


def write_report(path: str | Path, cfg, summary: dict, manifest: dict) -> None:
    c = to_dict(cfg)
    buckets = summary["x0_psnr_by_bucket"]
    last_step = max(buckets, key=int) if buckets else None
    t = summary["timings_s"]
    lines = [
        "# MedGen quickstart report",
        "",
        "Joint image + white-matter-mask DDPM on axial slices of the MNI152 2009c T1 template "
        f"(z_range {tuple(c['z_range'])}, {c['n_bins']} local z-bins, {c['size']}x{c['size']}).",
        "",
        "## Result",
        "",
        "| metric (vs nearest real slice of the same z-bin) | value |",
        "|---|---|",
        f"| SSIM, mean over {summary['n_samples']} samples | {summary['ssim_mean']:.3f} |",
        f"| PSNR (dB) | {summary['psnr_mean']:.2f} |",
        f"| mask Dice | {summary['dice_mean']:.3f} |",
        f"| reference: SSIM of each bin's mean image | "
        f"{summary['bin_mean_image_ssim_reference']:.3f} |",
        "",
        f"SSIM per bin: {_fmt(summary['ssim_per_bin'])}",
        "",
        f"Dice per bin: {_fmt(summary['dice_per_bin'])}",
        "",
        "![samples](samples.png)",
        "",
        "Each row is one z-bin: generated images, the first with its generated mask (red), and "
        "the nearest real slice of that bin with its real mask.",
        "",
        "## Training",
        "",
        f"{c['train_steps']} steps, batch {c['batch_size']}, AdamW lr {c['lr']} "
        f"(warm-up {c['warmup_steps']}, cosine), EMA {c['ema_decay']} with warm-up, "
        f"{c['schedule']} schedule, {c['prediction']} prediction, Min-SNR-gamma "
        f"{c['min_snr_gamma']}; {summary['parameters'] / 1e6:.2f} M parameters; "
        f"{summary['images_per_s']:.0f} images/s on {summary['device']} "
        f"({summary['torch_threads']} threads).",
        "",
        "![curves](curves.png)",
        "",
        "## x0-prediction PSNR per timestep bucket (EMA weights)",
        "",
    ]
    if last_step is not None:
        n = len(buckets[last_step])
        T = c["num_train_timesteps"]
        lines += [
            "| step | " + " | ".join(f"t<{(k + 1) * T // n}" for k in range(n)) + " |",
            "|---" * (n + 1) + "|",
            *[f"| {s} | {_fmt(v)} |" for s, v in buckets.items()],
            "",
            "![x0 psnr](x0_psnr.png)",
            "",
        ]
    lines += [
        "## Data",
        "",
        f"{manifest['n_slices']} slices; per bin {manifest['counts_per_bin']}; "
        f"white-matter fraction {manifest['mask_fraction']:.3f}; cache config hash "
        f"`{manifest['config_hash'][:16]}`.",
        "",
        "## Time (s)",
        "",
        " | ".join(f"{k.removesuffix('_s')} {v:.1f}" for k, v in t.items()),
        "",
        f"Samples: DDIM {c['sample_steps']} steps (trailing), eta 0, x0 clipped to "
        f"[-{c['clip_x0']}, {c['clip_x0']}]. Checkpoint: `{summary.get('checkpoint', '')}`.",
        "",
    ]
    Path(path).write_text("\n".join(lines))
