"""A run's report: what was trained on what, the curves, the x0 diagnostic, the last
validation images, samples, their trajectories and their evaluation, on one page, written as
``report.md`` (figures in ``RUN/report/``) and as the self-contained ``report.html`` (figures
embedded). With a TensorBoard events directory, the figures go there too (``images/report/*``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from medgen.data.cache.atomic import atomic_write_bytes
from medgen.train.engine.metrics_log import read_rows
from medgen.train.evaluation import figures
from medgen.train.reports.document import Document, Figure
from medgen.train.reports.evaluation_blocks import evaluation_blocks, samples_blocks
from medgen.train.runs import TrainedRun


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
    network = getattr(task, "network", None) or cfg.model  # an autoencoder's is in its task
    lines.append(f"- network: `{network.kind}` {json.dumps(_model_summary(network))}")
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


def _training(doc: Document, rows: list[dict], eval_rows: list[dict], fig_dir: Path) -> None:
    figures.loss_curves(fig_dir / "curves.png", rows, eval_rows)
    last = rows[-1]
    ips = sum(r["images_per_s"] for r in rows) / len(rows)
    doc.heading("Training")
    if "loss" in last:
        final = f"Final loss {last['loss']:.4f}"
    else:  # several objectives (a GAN): each objective's loss and its terms
        terms = [f"{k} {v:.4f}" for k, v in last.items()
                 if k.startswith("loss_") and not k.startswith("loss_bucket")]  # fmt: skip
        final = "Final losses " + ", ".join(terms)
    doc.text(
        f"{final} at step {last['step']}; "
        f"{ips:.0f} images/s on average; {last['skipped_updates']} skipped updates, "
        f"{last.get('rollbacks', 0)} rollbacks; peak memory {last['peak_mem_mb']:.0f} MB."
    )
    doc.figure(fig_dir / "curves.png", "Loss curves (train and validation) and the learning rate",
               "report/curves.png")  # fmt: skip


def _x0_psnr(doc: Document, run: TrainedRun, eval_rows: list[dict], fig_dir: Path) -> None:
    n = len([k for k in eval_rows[0] if k.startswith("x0_psnr_t")])
    strategy = getattr(run.config.task, "strategy", None)
    schedule = getattr(strategy, "schedule", None)
    t_max = schedule.num_train_timesteps if schedule is not None else 1.0
    figures.x0_psnr_plot(fig_dir / "x0_psnr.png", eval_rows, t_max)
    doc.heading(
        f"x0-prediction PSNR per timestep bucket (EMA weights, split "
        f"`{run.config.data.eval_split}`)"
    )
    doc.table(
        ["step", "val loss", *(f"t{k}" for k in range(n))],
        [[str(r["step"]), f"{r.get('val_loss', float('nan')):.4f}",
          *(f"{r[f'x0_psnr_t{k}']:.2f}" for k in range(n))] for r in eval_rows],
    )  # fmt: skip
    doc.text(
        "A healthy model is high at small t and falls smoothly towards large t; a low or "
        "negative value at small t means prediction and schedule disagree."
    )
    doc.figure(fig_dir / "x0_psnr.png", "x0-prediction PSNR per timestep bucket",
               "report/x0_psnr.png")  # fmt: skip


def _validation_images(doc: Document, run_dir: Path) -> None:
    """The images of the last evaluation (``eval/step_N/*.png``: x0 predictions,
    reconstructions)."""
    steps = sorted(p for p in (run_dir / "eval").glob("step_*") if p.is_dir())
    pngs = sorted(steps[-1].glob("*.png")) if steps else []
    if pngs:
        doc.heading(f"Validation images at {steps[-1].name.replace('_', ' ')}")
        for png in pngs:
            doc.figure(png, png.stem.replace("_", " "), os.path.relpath(png, run_dir))


def _samples(doc: Document, run_dir: Path, samples: Path) -> None:
    rel = os.path.relpath(samples, run_dir)
    manifest = json.loads((samples / "manifest.json").read_text())
    s = manifest["settings"]
    doc.heading("Samples")
    doc.text(
        f"{manifest['n']} samples from `{manifest['checkpoint']}` ({manifest['weights']} "
        f"weights), {s['sampler']} with {s['steps']} steps, seed {s['seed']}: "
        f"{manifest['seconds_per_sample']:.2f} s per sample on {manifest['device']}."
    )
    doc.extend(samples_blocks(samples, f"{rel}/"))
    evaluation = samples / "evaluation" / "evaluation.json"
    if evaluation.is_file():
        result = json.loads(evaluation.read_text())
        doc.heading("Evaluation against the nearest real item")
        doc.extend(evaluation_blocks(result, evaluation.parent, f"{rel}/evaluation/"))


def _to_tensorboard(log_dir: Path, doc: Document, step: int) -> None:
    """Every figure of the report as ``images/report/<name>`` at the run's step."""
    import matplotlib.image as mpimg

    from medgen.train.engine.tensorboard_log import TensorBoardLog

    images = {}
    for b in doc.blocks:
        if isinstance(b, Figure):
            name = "report/" + b.href.replace("/", "_").removesuffix(".png")
            images[name] = mpimg.imread(b.path)[..., :3]
    tb = TensorBoardLog(log_dir)
    try:
        tb.images(images, step)
    finally:
        tb.close()


def write_run_report(
    run_dir: str | Path,
    samples: str | Path | None = None,
    timings: dict | None = None,
    title: str = "MedGen run report",
) -> Path:
    """Write ``RUN/report.md`` (figures in ``RUN/report/``) and ``RUN/report.html`` (one
    self-contained file); returns the Markdown's path."""
    run_dir = Path(run_dir)
    run = TrainedRun.open(run_dir)
    rows = read_rows(run_dir / "metrics.csv")
    eval_rows = read_rows(run_dir / "eval.csv")
    fig_dir = run_dir / "report"
    fig_dir.mkdir(exist_ok=True)
    doc = Document(title)
    doc.text(f"Run `{run_dir}`, checkpoint `{run.checkpoint.name}`.")
    doc.items([line.removeprefix("- ") for line in _describe_task(run)])
    if rows:
        _training(doc, rows, eval_rows, fig_dir)
    if eval_rows and any(k.startswith("x0_psnr_t") for k in eval_rows[0]):
        _x0_psnr(doc, run, eval_rows, fig_dir)
    _validation_images(doc, run_dir)
    if samples is not None:
        _samples(doc, run_dir, Path(samples))
    if timings:
        doc.heading("Time (s)")
        doc.text(" | ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    page = doc.html()  # every figure embedded (and checked) before anything is written
    atomic_write_bytes(run_dir / "report.html", page.encode())
    path = run_dir / "report.md"
    atomic_write_bytes(path, doc.markdown().encode())
    if (run_dir / "tensorboard").is_dir():
        _to_tensorboard(run_dir / "tensorboard", doc, run.step)
    return path
