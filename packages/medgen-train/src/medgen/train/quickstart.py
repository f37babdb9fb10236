"""The quickstart: a joint image + white-matter-mask DDPM on MNI152 axial slices.

Data ship inside nilearn's package (no download). Pipeline: T1 + WM probability -> z_range
filter -> LOCAL z-bins -> slice cache -> token-conditioned MONAI UNet (eps prediction, cosine
schedule, Min-SNR-5, EMA with warm-up) -> DDIM 50 steps through medgen.cuda with x0 clipped
to the pixel range -> nearest-real PSNR/SSIM/Dice, x0-PSNR per timestep bucket, figures and
a report in the run directory.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from medgen.data import (
    Volume,
    axial_slices,
    build_or_load,
    config_hash,
    mni152_path,
    percentile_scale,
    read_nifti,
)
from medgen.data.cache import file_sha256
from medgen.models import DDPM, TokenConditionedUNet, ddim, schedules
from medgen.train import figures
from medgen.train.checkpoint import add_metrics
from medgen.train.config import save_yaml, to_dict
from medgen.train.evaluation import (
    bin_mean_reference,
    score_against_nearest_real,
)
from medgen.train.joint_diffusion import N_BUCKETS, train_joint
from medgen.train.progress import bars_disabled
from medgen.train.report import write_report
from medgen.train.settings import EngineSettings

CHANNELS = ("image", "mask")


@dataclass(frozen=True)
class QuickstartConfig:
    # data
    size: int = 32
    z_range: tuple[int, int] = (40, 139)
    n_bins: int = 10
    percentiles: tuple[float, float] = (0.5, 99.5)
    # model
    channels: tuple[int, ...] = (32, 64, 64)
    attention_levels: tuple[bool, ...] = (False, False, True)
    num_res_blocks: int = 1
    # diffusion
    schedule: str = "cosine"
    num_train_timesteps: int = 1000
    prediction: str = "epsilon"
    min_snr_gamma: float | None = 5.0
    # optimisation
    train_steps: int = 900
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 50
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    # sampling and evaluation
    sample_steps: int = 50
    samples_per_bin: int = 4
    clip_x0: float | None = 1.0
    diagnostics_every: int = 300
    log_every: int = 25
    # run
    seed: int = 0
    device: str = "auto"
    threads: int = 0  # 0: all cores
    cache_dir: str = ""  # "": ~/.cache/medgen/quickstart (or $MEDGEN_CACHE_DIR)


def _cache_root(cfg: QuickstartConfig) -> Path:
    if cfg.cache_dir:
        return Path(cfg.cache_dir)
    base = os.environ.get("MEDGEN_CACHE_DIR") or Path.home() / ".cache" / "medgen"
    return Path(base) / "quickstart"


def load_slices(cfg: QuickstartConfig):
    """MNI152 T1 + WM probability -> cached SliceSet. Returns (slices, manifest, reused)."""
    t1_path, wm_path = mni152_path("t1"), mni152_path("wm")
    cache_config = {
        "dataset": "MNI152-2009c-sym",
        "sources_sha256": {"t1": file_sha256(t1_path), "wm": file_sha256(wm_path)},
        "z_range": list(cfg.z_range),
        "n_bins": cfg.n_bins,
        "size": cfg.size,
        "percentiles": list(cfg.percentiles),
        "mask": "wm_probability > 0.5",
    }

    def build():
        t1, wm = read_nifti(t1_path, modality="MR"), read_nifti(wm_path, modality="MR")
        image = Volume(
            percentile_scale(t1.array, *cfg.percentiles),
            t1.spacing,
            t1.origin,
            t1.direction,
            t1.modality,
            t1.id,
        )
        # The "converted" template stores probabilities as uint8 with 255 = 1.0.
        prob = Volume(wm.array / 255.0, wm.spacing, wm.origin, wm.direction, wm.modality, wm.id)
        return axial_slices(image, cfg.z_range, cfg.n_bins, cfg.size, mask_probability=prob)

    directory = _cache_root(cfg) / config_hash(cache_config)[:16]
    return build_or_load(directory, cache_config, cfg.n_bins, build)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _forget_other_runs(out: Path, config: dict) -> None:
    """The engine resumes ``out/checkpoints/latest``: keep it only if an interrupted run with
    this very config wrote it; a finished or different run is started afresh."""
    latest = out / "checkpoints" / "latest"
    try:
        same = yaml.safe_load((latest / "config.yaml").read_text()) == config
        state = json.loads((latest / "state.json").read_text())
        if same and "data_position" in state and state["step"] < config["train_steps"]:
            return
    except (OSError, ValueError, KeyError, yaml.YAMLError):
        pass
    for name in ("checkpoints", "tensorboard"):
        shutil.rmtree(out / name, ignore_errors=True)
    for name in ("metrics.csv", "eval.csv"):
        (out / name).unlink(missing_ok=True)


def run_quickstart(cfg: QuickstartConfig, out: str | Path, quiet: bool = False) -> dict:
    """Run the whole job into ``out``; return the summary (also written as summary.json)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)  # noqa: NPY002 (seeds third-party code that uses it)
    no_bars = bars_disabled(quiet)
    device = pick_device(cfg.device)
    save_yaml(cfg, out / "config.yaml")
    timings = {}

    def say(msg: str) -> None:
        if not quiet:
            print(msg, flush=True)

    t0 = time.perf_counter()
    slices, manifest, reused = load_slices(cfg)
    timings["data_s"] = time.perf_counter() - t0
    say(
        f"data: {len(slices)} slices of {cfg.size}x{cfg.size} in {cfg.n_bins} bins "
        f"({'cache reused' if reused else 'cache built'}); per bin {manifest['counts_per_bin']}"
    )
    images = torch.from_numpy(slices.images)
    masks = torch.from_numpy(slices.masks).float() * 2 - 1
    data = torch.cat([images, masks], dim=1).to(device)
    tokens = torch.from_numpy(slices.token).to(device)

    num_tokens = cfg.n_bins * (int(slices.class_id.max()) + 1)
    model = TokenConditionedUNet(
        2, 2, 2, num_tokens, cfg.channels, cfg.attention_levels, cfg.num_res_blocks
    ).to(device)
    strategy = DDPM(schedules.make(cfg.schedule, cfg.num_train_timesteps), cfg.prediction)
    n_params = sum(p.numel() for p in model.parameters())
    say(
        f"model: MONAI DiffusionModelUNet {cfg.channels}, {n_params / 1e6:.2f} M parameters, "
        f"{num_tokens} tokens; {cfg.schedule} schedule, {cfg.prediction} prediction, "
        f"device {device}"
    )

    eval_idx = torch.linspace(0, len(slices) - 1, min(64, len(slices))).long().to(device)
    settings = EngineSettings(
        steps=cfg.train_steps,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        grad_clip=cfg.grad_clip,
        ema_decay=cfg.ema_decay,
        log_every=cfg.log_every,
        eval_every=cfg.diagnostics_every,
        seed=cfg.seed,
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    _forget_other_runs(out, to_dict(cfg))
    t0 = time.perf_counter()
    result, _ = train_joint(
        model,
        strategy,
        data,
        tokens,
        settings,
        out,
        gen,
        min_snr_gamma=cfg.min_snr_gamma,
        channel_names=CHANNELS,
        eval_data=(data[eval_idx], tokens[eval_idx]),
        config=to_dict(cfg),
        quiet=quiet,
    )
    diagnostics = [  # from eval.csv: a resumed run keeps the evaluations made before
        (int(r["step"]), [float(r[f"x0_psnr_t{k}"]) for k in range(N_BUCKETS)])
        for r in result.eval_rows
    ]
    timings["train_s"] = time.perf_counter() - t0

    # Sampling from the EMA weights: samples_per_bin per z-bin, class 0.
    t0 = time.perf_counter()
    ema_model = result.ema.model
    bins = list(range(cfg.n_bins))
    k = cfg.samples_per_bin
    sample_tokens = torch.tensor([b for b in bins for _ in range(k)], device=device)
    noise_gen = torch.Generator().manual_seed(cfg.seed + 1)
    x_T = torch.randn((len(sample_tokens), 2, cfg.size, cfg.size), generator=noise_gen)
    samples = ddim(
        ema_model,
        strategy,
        x_T.to(device),
        cfg.sample_steps,
        cond=sample_tokens,
        clip_x0=cfg.clip_x0,
        progress=None if no_bars is None else False,
    )
    samples = samples.clamp(-1, 1).cpu().numpy()
    timings["sample_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    gen_images, gen_masks = samples[:, 0], samples[:, 1] > 0
    gen_bins = sample_tokens.cpu().numpy() % cfg.n_bins
    real_images, real_masks = slices.images[:, 0], slices.masks[:, 0].astype(bool)
    scores = score_against_nearest_real(
        gen_images, gen_masks, gen_bins, real_images, real_masks, slices.z_bin
    )
    reference = bin_mean_reference(real_images, slices.z_bin)
    timings["evaluate_s"] = time.perf_counter() - t0

    final_rows = result.rows
    summary = {
        "ssim_mean": float(np.mean([s.ssim for s in scores])),
        "psnr_mean": float(np.mean([s.psnr for s in scores])),
        "dice_mean": float(np.mean([s.dice for s in scores])),
        "ssim_per_bin": [float(np.mean([s.ssim for s in scores if s.z_bin == b])) for b in bins],
        "dice_per_bin": [float(np.mean([s.dice for s in scores if s.z_bin == b])) for b in bins],
        "bin_mean_image_ssim_reference": reference,
        "x0_psnr_by_bucket": {str(step): v for step, v in diagnostics},
        "final_loss_image": final_rows[-1]["loss_image"],
        "final_loss_mask": final_rows[-1]["loss_mask"],
        "images_per_s": float(np.mean([r["images_per_s"] for r in final_rows])),
        "n_train_slices": len(slices),
        "n_samples": len(scores),
        "parameters": n_params,
        "timings_s": timings,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
    }
    t0 = time.perf_counter()
    ckpt = result.checkpoint
    add_metrics(ckpt, {k: summary[k] for k in ("ssim_mean", "psnr_mean", "dice_mean")})
    np.savez_compressed(
        out / "samples.npz", images=gen_images.astype(np.float32), masks=gen_masks, z_bin=gen_bins
    )

    firsts = [scores[b * k] for b in bins]
    figures.sample_grid(
        out / "samples.png",
        bins,
        [gen_images[b * k : (b + 1) * k] for b in bins],
        [gen_masks[b * k : (b + 1) * k] for b in bins],
        [real_images[s.nearest] for s in firsts],
        [real_masks[s.nearest] for s in firsts],
        row_notes=[
            f"SSIM {summary['ssim_per_bin'][b]:.2f}\nDice {summary['dice_per_bin'][b]:.2f}"
            for b in bins
        ],
    )
    figures.loss_curves(out / "curves.png", final_rows, CHANNELS)
    figures.x0_psnr_plot(out / "x0_psnr.png", diagnostics, cfg.num_train_timesteps)
    timings["write_s"] = time.perf_counter() - t0
    summary["checkpoint"] = str(ckpt.relative_to(out))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    write_report(out / "report.md", cfg, summary, manifest)
    say(
        f"nearest-real SSIM {summary['ssim_mean']:.3f}, PSNR {summary['psnr_mean']:.2f} dB, "
        f"mask Dice {summary['dice_mean']:.3f} over {len(scores)} samples "
        f"(bin-mean reference SSIM {reference:.3f}); report: {out / 'report.md'}"
    )
    return summary
