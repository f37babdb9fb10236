"""The training engine: one loop that every trainer plugs into through a :class:`Task`.

Per update: ``grad_accum`` micro-batches from the :class:`BatchSource`, ``task.loss`` under
autocast (bf16, or fp16 with a GradScaler), backward, DDP gradient averaging, unscale, clip,
the NaN guard (a non-finite loss or gradient skips the update), optimizer step, EMA, LR
schedule. Then logging (``metrics.csv``, TensorBoard, tqdm), evaluation, checkpoints, and the
pre-emption check (SIGTERM / SIGUSR1 -> checkpoint -> :class:`Preempted`).

A run directory with a ``checkpoints/latest`` is resumed exactly: weights, EMA, optimizer,
scheduler, scaler, NaN-guard counters, data position, task state (e.g. its noise generator)
and the python / numpy / torch / CUDA RNG states of every rank.
"""

from __future__ import annotations

import dataclasses
import math
import resource
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from medgen.train import distributed, retention
from medgen.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from medgen.train.distributed import DistContext
from medgen.train.ema import EMA
from medgen.train.errors import CheckpointError
from medgen.train.log_window import LogWindow
from medgen.train.metrics_log import MetricsLog
from medgen.train.nan_guard import NanGuard
from medgen.train.optim import build_optimizer, build_scheduler
from medgen.train.preemption import Preempted, StopFlag
from medgen.train.progress import bars_disabled
from medgen.train.settings import EngineSettings
from medgen.train.task import BatchSource, Task, load_task_state, task_state

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class FitResult:
    model: nn.Module
    ema: EMA | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None
    step: int
    resumed_from: int  # 0 for a fresh run
    skipped_updates: int
    checkpoint: Path | None
    rows: list[dict] = field(default_factory=list)
    eval_rows: list[dict] = field(default_factory=list)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _gather(obj: dict, ctx: DistContext) -> list[dict]:
    if not ctx.enabled:
        return [obj]
    out: list = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


class _Run:
    """State of one ``fit`` call; the loop itself is :func:`fit`."""

    def __init__(self, task, model, batches, s, run_dir, config, ctx) -> None:
        self.task, self.model, self.batches, self.s = task, model, batches, s
        self.ctx, self.main = ctx, ctx.is_main
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.config = config if config is not None else {"training": dataclasses.asdict(s)}
        self.device = next(model.parameters()).device
        if ctx.enabled:
            distributed.broadcast_parameters(model)
        self.optimizer = build_optimizer(model, s)
        self.scheduler = build_scheduler(self.optimizer, s)
        self.scaler = torch.amp.GradScaler(self.device.type) if s.amp == "fp16" else None
        self.ema = EMA(model, s.ema_decay, s.ema_warmup) if s.ema_decay > 0 else None
        self.guard = NanGuard(s.max_consecutive_skips)
        self.step = self.resumed_from = 0
        self.last_checkpoint: Path | None = None
        self.last_eval: dict = {}
        self.last_eval_step = -1
        writes = self.main and self.run_dir is not None
        if writes:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log = MetricsLog(self.run_dir / "metrics.csv") if writes else None
        self.eval_log = MetricsLog(self.run_dir / "eval.csv") if writes else None
        self.tb = None
        self.rows: list[dict] = []

    # -- checkpoints ---------------------------------------------------------------------
    def resume(self) -> None:
        if self.run_dir is None:
            return
        if self.main:
            retention.remove_stale_temporaries(self.run_dir)
        if not (self.run_dir / "checkpoints" / "latest").exists():
            return
        extra: dict = {}
        state = load_checkpoint(
            self.run_dir,
            self.model,
            ema=self.ema,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            scaler=self.scaler,
            restore_rng=True,
            extra=extra,
        )
        if "batches" not in extra:
            raise CheckpointError(
                f"{self.run_dir / 'checkpoints' / 'latest'}: no engine state (data position) in "
                "training_state.pt; written by an older version? Use a new run directory."
            )
        self.batches.load_state_dict(extra["batches"])
        self.guard.load_state_dict(extra.get("guard", {}))
        ranks = extra.get("ranks") or []
        mine = ranks[self.ctx.rank] if len(ranks) == self.ctx.world_size else {}
        load_task_state(self.task, mine.get("task", extra.get("task")))
        if "rng" in mine:
            set_rng_state(mine["rng"])
        self.step = self.resumed_from = int(state["step"])
        self.last_checkpoint = (self.run_dir / "checkpoints" / "latest").resolve()
        if self.log is not None:
            self.log.resume_at(self.step)
            self.eval_log.resume_at(self.step)

    def save(self) -> Path | None:
        if self.run_dir is None:
            return None
        ranks = _gather({"task": task_state(self.task), "rng": rng_state()}, self.ctx)
        path = None
        if self.main:
            position = self.batches.position()
            path = save_checkpoint(
                self.run_dir,
                self.step,
                self.model,
                self.config,
                ema=self.ema,
                optimizer=self.optimizer,
                scheduler=self.scheduler,
                scaler=self.scaler,
                metrics=dict(self.last_eval) if self.last_eval_step == self.step else {},
                extra={
                    "batches": self.batches.state_dict(),
                    "task": ranks[0]["task"],
                    "guard": self.guard.state_dict(),
                    "ranks": ranks,
                },
                info={
                    "epoch": position.get("epoch", 0),
                    "data_position": position,
                    "world_size": self.ctx.world_size,
                    "skipped_updates": self.guard.skipped,
                },
            )
            if self.s.best_metric:
                retention.update_best(self.run_dir, path, self.s.best_metric, self.s.best_mode)
            retention.prune(self.run_dir, self.s.keep_last)
            self.last_checkpoint = path
        if self.ctx.enabled:
            dist.barrier()
        return path

    # -- one update ------------------------------------------------------------------------
    def update(self, forward_model: nn.Module, window: LogWindow) -> None:
        s, model = self.s, self.model
        amp = AMP_DTYPES.get(s.amp)
        self.optimizer.zero_grad(set_to_none=True)
        loss_value = 0.0
        for _ in range(s.grad_accum):
            batch = self.batches.next_batch()
            with torch.autocast(self.device.type, dtype=amp, enabled=amp is not None):
                loss, logs = self.task.loss(forward_model, batch, self.step)
            scaled = loss / s.grad_accum if s.grad_accum > 1 else loss
            (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            loss_value += float(loss.detach()) / s.grad_accum
            window.add(logs)
        if self.ctx.enabled:
            distributed.average_gradients(model, self.ctx.world_size)
            loss_value = distributed.all_mean(loss_value, self.ctx)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        max_norm = s.grad_clip if s.grad_clip > 0 else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
        ok = self.guard.finite(loss_value, grad_norm)
        if ok:
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
            else:
                self.optimizer.step()
            if self.ema is not None:
                self.ema.update(model)
        if self.scaler is not None:
            self.scaler.update()
        with warnings.catch_warnings():  # a skipped update is no reason to warn
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step", UserWarning)
            self.scheduler.step()
        window.add({"loss": loss_value, "grad_norm": grad_norm})
        self.guard.record(
            ok, self.step, str(self.last_checkpoint) if self.last_checkpoint else None
        )
        self.step += 1

    # -- logging and evaluation --------------------------------------------------------------
    def log_row(self, window: LogWindow, start: float) -> dict:
        if self.ctx.enabled:  # the task's logs of every rank, not rank 0's alone
            window.sums = distributed.sum_over_ranks(window.sums, self.ctx)
            window.counts = distributed.sum_over_ranks(window.counts, self.ctx)
        means = window.means()
        row = {
            "step": self.step,
            "epoch": self.batches.position().get("epoch", 0),
            "loss": means.pop("loss"),
            **{k: v for k, v in means.items() if k != "grad_norm"},
            "lr": self.scheduler.get_last_lr()[0],
            "grad_norm": means["grad_norm"],
            "skipped_updates": self.guard.skipped,
            "ema_decay": self.ema.current_decay() if self.ema is not None else 0.0,
            "images_per_s": window.images / max(window.seconds, 1e-9),
            "peak_mem_mb": _peak_memory_mb(self.device),
            "elapsed_s": time.perf_counter() - start,
        }
        self.rows.append(row)
        if self.log is not None:
            self.log.log(row)
            if self.tb is not None:
                self.tb.log(row, self.step)
        return row

    def evaluate(self) -> None:
        fn = getattr(self.task, "evaluate", None)
        if not callable(fn) or not self.main:
            return
        self.model.eval()
        with torch.no_grad():
            ema_model = self.ema.model if self.ema is not None else None
            metrics = fn(self.model, ema_model, self.step) or {}
        self.model.train()
        self.last_eval = {k: float(v) for k, v in metrics.items()}
        self.last_eval_step = self.step
        if self.eval_log is not None and self.last_eval:
            self.eval_log.log({"step": self.step, **self.last_eval})
            if self.tb is not None:
                self.tb.log(self.last_eval, self.step, prefix="eval")


def fit(
    task: Task,
    model: nn.Module,
    batches: BatchSource,
    settings: EngineSettings,
    run_dir: str | Path | None = None,
    *,
    config: dict | None = None,
    dist_ctx: DistContext | None = None,
    quiet: bool = False,
) -> FitResult:
    """Train ``model`` with ``task`` on ``batches`` up to ``settings.steps`` updates.

    With a ``run_dir``, rank 0 writes ``metrics.csv``, ``eval.csv``, TensorBoard events and
    checkpoints there, and an existing ``checkpoints/latest`` is resumed. ``config`` (a plain
    dict) is stored in every checkpoint. Raises :class:`Preempted` after a checkpoint on
    SIGTERM / SIGUSR1 and :class:`NonFiniteError` after too many non-finite updates.
    """
    s = settings
    s.validate()
    if s.deterministic:
        torch.use_deterministic_algorithms(True)
    run = _Run(task, model, batches, s, run_dir, config, dist_ctx or DistContext())
    run.resume()
    if run.main and run.run_dir is not None and s.tensorboard and run.step < s.steps:
        from medgen.train.tensorboard_log import TensorBoardLog

        run.tb = TensorBoardLog(run.run_dir / "tensorboard")
    forward_model = torch.compile(model) if s.compile else model
    eval_hook = callable(getattr(task, "evaluate", None))
    window = LogWindow()
    start = time.perf_counter()
    bar = tqdm(
        total=s.steps,
        initial=run.step,
        desc="train",
        disable=True if not run.main else bars_disabled(quiet),
    )
    model.train()
    try:
        with StopFlag() as stop:
            while run.step < s.steps:
                t0 = time.perf_counter()
                run.update(forward_model, window)
                window.seconds += time.perf_counter() - t0
                window.images += batches.batch_size * s.grad_accum * run.ctx.world_size
                bar.update(1)
                last = run.step == s.steps
                if run.step % s.log_every == 0 or last:
                    row = run.log_row(window, start)
                    bar.set_postfix(loss=f"{row['loss']:.4f}", ips=f"{row['images_per_s']:.0f}")
                    window.reset()
                if eval_hook and (last or (s.eval_every and run.step % s.eval_every == 0)):
                    run.evaluate()
                stopping = distributed.any_rank(stop.requested, run.ctx)
                every = s.checkpoint_every and run.step % s.checkpoint_every == 0
                if every or last or stopping:
                    run.save()
                    if not (stopping or last):
                        # a signal that came during this save stops here, on this checkpoint,
                        # not after one more update and a second write (SIGKILL may be near)
                        stopping = distributed.any_rank(stop.requested, run.ctx)
                if stopping and not last:
                    raise Preempted(
                        run.step, str(run.last_checkpoint), stop.signal_name or "signal"
                    )
    finally:
        bar.close()
        if run.tb is not None:
            run.tb.close()
        model.eval()
    return FitResult(
        model=model,
        ema=run.ema,
        optimizer=run.optimizer,
        scheduler=run.scheduler,
        scaler=run.scaler,
        step=run.step,
        resumed_from=run.resumed_from,
        skipped_updates=run.guard.skipped,
        checkpoint=run.last_checkpoint,
        rows=run.log.rows if run.log is not None else run.rows,
        eval_rows=run.eval_log.rows if run.eval_log is not None else [],
    )
