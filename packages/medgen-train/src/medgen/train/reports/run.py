"""``report.md`` of a run: what was trained on what, the curves, the x0 diagnostic, samples and
their evaluation, on one page (figures in ``RUN/report/``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from medgen.data.cache.atomic import atomic_write_bytes
from medgen.train.engine.metrics_log import read_rows
from medgen.train.evaluation import figures
from medgen.train.reports.evaluation import evaluation_table
from medgen.train.runs import TrainedRun


def _fmt(values) -> str:
    return " | ".join(f"{v:.2f}" for v in values)


def _describe_task(run: TrainedRun) -> list[str]:
    cfg, d = run.config, run.description
    task = cfg.task
    lines = [f"- task: `{task.kind}`"]
    strategy = getattr(task, "strategy", None)
    if strategy is not None:
        what = f"`{strategy.kind}`"
        if strategy.kind == "ddpm":
            s = strategy.schedule
            what += (
                f", {strategy.prediction} prediction, {s.kind} schedule (T = "
                f"{s.num_train_timesteps}{', zero terminal SNR' if s.zero_terminal_snr else ''}"
                f"), Min-SNR-gamma {strategy.min_snr_gamma}"
            )
        else:
            what += f", shift {strategy.shift}, {strategy.t_sampling} t"
        lines.append(f"- strategy: {what}; space `{task.space.kind}`")
        lines.append(
            f"- generates {', '.join(task.generate)}"
            + (f" given {', '.join(task.priors)}" if task.priors else "")
            + (" ; z-bin x class tokens" if task.tokens else "")
        )
    lines.append(f"- network: `{cfg.model.kind}` {json.dumps(_model_summary(cfg.model))}")
    lines.append(
        f"- data: `{d.cache}` ({d.kind}, channels {', '.join(d.channels)}"
        f"{' + mask' if d.has_mask else ''}, shape {d.shape}, spacing {d.spacing} mm, "
        f"{d.n_bins} z-bins x {d.n_classes} classes); split sizes "
        + ", ".join(f"{k} {v.get('n_items')}" for k, v in d.splits.items())
    )
    t = cfg.training
    lines.append(
        f"- training: {t.steps} steps of batch {t.batch_size} x {t.grad_accum} accumulation, "
        f"{t.optimizer} lr {t.lr:g} ({t.lr_schedule}, warm-up {t.warmup_steps}), grad clip "
        f"{t.grad_clip}, EMA {t.ema_decay}, amp {t.amp}, seed {t.seed}"
    )
    return lines


def _model_summary(model_cfg) -> dict:
    from dataclasses import asdict

    return {k: v for k, v in asdict(model_cfg).items() if k != "kind"}


def write_run_report(
    run_dir: str | Path,
    samples: str | Path | None = None,
    timings: dict | None = None,
    title: str = "MedGen run report",
) -> Path:
    """Write ``RUN/report.md`` (and its figures); returns its path."""
    run_dir = Path(run_dir)
    run = TrainedRun.open(run_dir)
    rows = read_rows(run_dir / "metrics.csv")
    eval_rows = read_rows(run_dir / "eval.csv")
    fig_dir = run_dir / "report"
    fig_dir.mkdir(exist_ok=True)
    lines = [f"# {title}", "", f"Run `{run_dir}`, checkpoint `{run.checkpoint.name}`.", ""]
    lines += [*_describe_task(run), ""]
    if rows:
        figures.loss_curves(fig_dir / "curves.png", rows, eval_rows)
        last = rows[-1]
        ips = sum(r["images_per_s"] for r in rows) / len(rows)
        lines += [
            "## Training",
            "",
            f"Final loss {last.get('loss', float('nan')):.4f} at step {last['step']}; "
            f"{ips:.0f} images/s on average; {last['skipped_updates']} skipped updates, "
            f"{last.get('rollbacks', 0)} rollbacks; peak "
            f"memory {last['peak_mem_mb']:.0f} MB.",
            "",
            "![curves](report/curves.png)",
            "",
        ]
    psnr_keys = [k for k in (eval_rows[0] if eval_rows else {}) if k.startswith("x0_psnr_t")]
    if psnr_keys:
        strategy = getattr(run.config.task, "strategy", None)
        schedule = getattr(strategy, "schedule", None)
        t_max = schedule.num_train_timesteps if schedule is not None else 1.0
        figures.x0_psnr_plot(fig_dir / "x0_psnr.png", eval_rows, t_max)
        n = len(psnr_keys)
        lines += [
            f"## x0-prediction PSNR per timestep bucket (EMA weights, split "
            f"`{run.config.data.eval_split}`)",
            "",
            "| step | val loss | " + " | ".join(f"t{k}" for k in range(n)) + " |",
            "|---" * (n + 2) + "|",
            *[
                f"| {r['step']} | {r.get('val_loss', float('nan')):.4f} | "
                f"{_fmt([r[f'x0_psnr_t{k}'] for k in range(n)])} |"
                for r in eval_rows
            ],
            "",
            "A healthy model is high at small t and falls smoothly towards large t; a low or "
            "negative value at small t means prediction and schedule disagree.",
            "",
            "![x0 psnr](report/x0_psnr.png)",
            "",
        ]
    if samples is not None:
        samples = Path(samples)
        rel = os.path.relpath(samples, run_dir)
        manifest = json.loads((samples / "manifest.json").read_text())
        s = manifest["settings"]
        lines += [
            "## Samples",
            "",
            f"{manifest['n']} samples from `{manifest['checkpoint']}` ({manifest['weights']} "
            f"weights), {s['sampler']} with {s['steps']} steps, seed {s['seed']}: "
            f"{manifest['seconds_per_sample']:.2f} s per sample on {manifest['device']}.",
            "",
            f"![samples]({rel}/grid.png)",
            "",
        ]
        evaluation = samples / "evaluation" / "evaluation.json"
        if evaluation.is_file():
            result = json.loads(evaluation.read_text())
            lines += [
                "## Evaluation against the nearest real item",
                "",
                f"Reference `{result['reference']}` ({result['n_reference']} items); "
                f"bin-mean reference SSIM {result['bin_mean_reference_ssim']:.3f}; "
                f"{result['speckle_rule']} counts as speckled.",
                "",
                *evaluation_table(result),
                "",
                f"![nearest]({rel}/evaluation/nearest.png)",
                "",
            ]
    if timings:
        lines += [
            "## Time (s)",
            "",
            " | ".join(f"{k} {v:.1f}" for k, v in timings.items()),
            "",
        ]
    path = run_dir / "report.md"
    atomic_write_bytes(path, "\n".join(lines).encode())
    return path
