"""The training engine: one loop that every task plugs into through a :class:`TrainingSetup`.

Per update: ``grad_accum`` micro-batches from the :class:`BatchSource`; then, for each active
objective, its loss under autocast (bf16, or fp16 with a GradScaler), backward through
``DistributedDataParallel`` (gradients averaged over ranks; ``no_sync`` on all but the last
micro-batch), unscale, clip, the NaN guard (a non-finite loss or gradient skips the
objective's step; an optimizer step that leaves a non-finite weight is rolled back to the last
verified in-memory snapshot; see :mod:`.nan_guard`), the optimizer step and its LR schedule. Then the EMA of the trained modules, logging
(``metrics.csv``, TensorBoard, tqdm), evaluation on every rank, checkpoints, and the stop
check (SIGTERM / SIGUSR1 / SIGINT -> checkpoint -> :class:`Preempted`).

A run directory with a checkpoint that verifies is resumed exactly: weights, EMA, optimizers,
schedulers, scalers, NaN-guard counters, data position, task state (e.g. its noise generators)
and the python / numpy / torch / CUDA RNG states of every rank.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import resource
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from medgen.train.engine import distributed, snapshot
from medgen.train.engine.batches import BatchSource
from medgen.train.engine.distributed import DistContext
from medgen.train.engine.ema import EMA
from medgen.train.engine.evaluators import reduce, write_images
from medgen.train.engine.log_window import LogWindow
from medgen.train.engine.metrics_log import MetricsLog
from medgen.train.engine.nan_guard import NanGuard, Snapshot, all_finite
from medgen.train.engine.objectives import Nets, TrainingSetup
from medgen.train.engine.optim import ObjectiveOptimizer, build_optimizer, build_scheduler
from medgen.train.engine.preemption import Preempted, StopFlag
from medgen.train.engine.settings import EngineSettings
from medgen.train.errors import ConfigError
from medgen.train.progress import bars_disabled

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
WEIGHT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class FitResult:
    """What :func:`fit` leaves behind."""

    setup: TrainingSetup
    ema: EMA | None
    step: int
    resumed_from: int  # 0 for a fresh run
    skipped_updates: int
    checkpoint: Path | None
    rollbacks: int = 0  # optimizer steps undone because they left a non-finite weight
    rows: list[dict] = field(default_factory=list)
    eval_rows: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # e.g. checkpoints skipped on resume

    @property
    def model(self) -> nn.Module:
        """The module of a :meth:`TrainingSetup.single` setup (or the first trained one)."""
        return self.setup.modules[self.setup.trained()[0]]


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def check_metrics(setup: TrainingSetup, s: EngineSettings) -> None:
    """``training.best_metric`` must be something the setup's evaluators report."""
    names = set()
    for ev in setup.evaluators:
        names |= set(ev.metric_names())
    if s.best_metric and s.best_metric not in names:
        known = ", ".join(sorted(names)) or "none (no evaluator: is data.eval_split empty?)"
        raise ConfigError(
            f"training.best_metric: {s.best_metric!r} is not a metric this task reports; "
            f"known: {known}"
        )


class _Run:
    """State of one :func:`fit` call; the loop itself is :func:`fit`."""

    def __init__(self, setup, batches, s, run_dir, config, ctx, files):
        setup.check()
        self.setup, self.batches, self.s, self.ctx = setup, batches, s, ctx
        self.main = ctx.is_main
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.config = config if config is not None else {"training": dataclasses.asdict(s)}
        self.files = dict(files or {})
        trained = setup.trained()
        self.device = next(setup.modules[trained[0]].parameters()).device
        check_metrics(setup, s)
        self.weights_dtype = WEIGHT_DTYPES[s.weights_dtype]
        if self.weights_dtype != torch.float32:  # pure weights: before DDP / compile wrap
            for name in trained:
                setup.modules[name].to(self.weights_dtype)
        wrapped = {}
        for name in trained:
            module = distributed.wrap(setup.modules[name], ctx, setup.find_unused_parameters)
            wrapped[name] = torch.compile(module) if s.compile else module
        for name in setup.frozen():
            setup.modules[name].eval()
            wrapped[name] = setup.modules[name]
        self.ddp = {n: m for n, m in wrapped.items() if hasattr(m, "no_sync")}
        self.nets = Nets(wrapped, setup.modules)
        self.opts: dict[str, ObjectiveOptimizer] = {}
        for obj in setup.objectives:
            o = obj.optim or s.optimizer_settings()
            params = [p for m in obj.modules for p in setup.modules[m].parameters()]
            optimizer = build_optimizer(params, o)
            self.opts[obj.name] = ObjectiveOptimizer(
                obj,
                [p for p in params if p.requires_grad],
                optimizer,
                build_scheduler(optimizer, o, max(1, s.steps - obj.start_step)),
                torch.amp.GradScaler(self.device.type) if s.amp == "fp16" else None,
                o,
            )
        ema_names = setup.ema_modules if setup.ema_modules is not None else trained
        self.ema = None
        if s.ema_decay > 0 and ema_names:
            pure = self.weights_dtype != torch.float32  # the average in float32 (see EMA)
            self.ema = EMA({n: setup.modules[n] for n in ema_names}, s.ema_decay, s.ema_warmup,
                           dtype=torch.float32 if pure else None)  # fmt: skip
        self.guard = NanGuard(s.max_consecutive_skips, s.max_rollbacks)
        # what a rollback restores: per objective its weights, floating buffers and
        # optimizer state; the EMA copies and count (see nan_guard.Snapshot)
        self.snapshots = {
            name: Snapshot([*opt.params, *self._buffers(opt.objective.modules)], opt.optimizer)
            for name, opt in self.opts.items()
        }
        self.ema_snapshot = None
        if self.ema is not None:
            ema_tensors = [
                t for m in self.ema.modules.values() for t in (*m.parameters(), *m.buffers())
            ]
            self.ema_snapshot = Snapshot([t for t in ema_tensors if t.is_floating_point()], None)
        self.ema_snapshot_updates = 0
        self.unverified_since: int | None = None  # the step that made the weights, until a
        # finite loss is seen on them
        self.pending_checkpoint: Path | None = None  # written, its weights not yet verified
        self.good_checkpoint: Path | None = None  # weights that then gave a finite loss
        self.step = self.resumed_from = 0
        self.last_checkpoint: Path | None = None
        self.last_eval: dict = {}
        self.last_eval_step = -1
        self.notes: list[str] = []
        if self.weights_dtype != torch.float32:
            self.notes.append(f"Converted model weights to {self.weights_dtype}")
        self.failure: Exception | None = None  # a rank-0 write that failed, not yet shared
        writes = self.main and self.run_dir is not None
        if writes:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log = MetricsLog(self.run_dir / "metrics.csv") if writes else None
        self.eval_log = MetricsLog(self.run_dir / "eval.csv") if writes else None
        self.tb = None
        self.rows: list[dict] = []
        self.eval_rows: list[dict] = []

    @contextlib.contextmanager
    def writes(self):
        """Rank 0's file writes: under DDP a failure is kept and shared with every rank at the
        next collective (:func:`distributed.raise_if_failed`), so no rank waits for it."""
        try:
            yield
        except Exception as exc:
            if not self.ctx.enabled:
                raise
            self.failure = self.failure or exc

    def _buffers(self, names) -> list[torch.Tensor]:
        return [b for n in names for b in self.setup.modules[n].buffers() if b.is_floating_point()]

    # -- the NaN guard's rollback ----------------------------------------------------------
    def _verified(self) -> None:
        """The current weights gave a finite loss: they, and a checkpoint of them, are good."""
        self.unverified_since = None
        if self.pending_checkpoint is not None:
            self.good_checkpoint, self.pending_checkpoint = self.pending_checkpoint, None

    def _good(self) -> str | None:
        return str(self.good_checkpoint) if self.good_checkpoint is not None else None

    def _take_snapshot(self, opt: ObjectiveOptimizer) -> None:
        """Before a step whose loss and gradient are finite, every ``snapshot_every``
        updates: the objective's state, and the EMA as it is before this update's."""
        snap = self.snapshots[opt.objective.name]
        if snap.step >= 0 and self.step - snap.step < self.s.snapshot_every:
            return
        snap.take(self.step)
        if self.ema_snapshot is not None and self.ema_snapshot.step != self.step:
            self.ema_snapshot.take(self.step)
            self.ema_snapshot_updates = self.ema.num_updates

    def _restore(self) -> int:
        """Every objective and the EMA back to their snapshots; the oldest snapshot's step."""
        steps = []
        for snap in self.snapshots.values():
            if snap.step >= 0:
                snap.restore()
                steps.append(snap.step)
        if self.ema_snapshot is not None and self.ema_snapshot.step >= 0:
            self.ema_snapshot.restore()
            self.ema.num_updates = self.ema_snapshot_updates
        self.unverified_since = None
        self.pending_checkpoint = None  # its weights are no longer the ones trained on
        return min(steps, default=self.step)

    def _roll_back(self, opt: ObjectiveOptimizer, what: str) -> None:
        since = self._restore()
        o = opt.settings
        self.guard.rolled_back(self.step, opt.objective.name, what, o.lr, since, self._good())

    # -- checkpoints ---------------------------------------------------------------------
    def resume(self) -> None:
        """Continue from the newest checkpoint that verifies (see :mod:`.snapshot`)."""
        snapshot.restore(self)

    def save(self) -> Path | None:
        """Write a checkpoint now (see :mod:`.snapshot`)."""
        return snapshot.save(self)

    # -- one update ----------------------------------------------------------------------
    def _objective_step(self, opt: ObjectiveOptimizer, micro: list, window: LogWindow) -> str:
        """One objective's update: ``"ok"``, ``"skipped"`` (a non-finite loss or gradient)
        or ``"rolled back"`` (the step made a weight non-finite)."""
        s, obj = self.s, opt.objective
        amp = AMP_DTYPES.get(s.amp)
        opt.optimizer.zero_grad(set_to_none=True)
        loss_value = 0.0
        for i, batch in enumerate(micro):
            last = i == len(micro) - 1
            with contextlib.ExitStack() as stack:
                if not last:  # gradients are averaged over ranks once, after the last
                    for name in obj.modules:
                        if name in self.ddp:
                            stack.enter_context(self.ddp[name].no_sync())
                with torch.autocast(self.device.type, dtype=amp, enabled=amp is not None):
                    loss, logs = obj.loss(self.nets, batch, self.step)
                scaled = loss / len(micro) if len(micro) > 1 else loss
                (opt.scaler.scale(scaled) if opt.scaler else scaled).backward()
            loss_value += float(loss.detach()) / len(micro)
            window.add(logs)
        loss_value = distributed.all_mean(loss_value, self.ctx)
        if opt.scaler is not None:
            opt.scaler.unscale_(opt.optimizer)
        max_norm = opt.grad_clip if opt.grad_clip > 0 else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(opt.params, max_norm))
        if math.isfinite(loss_value):
            self._verified()
        status = "ok" if NanGuard.finite(loss_value, grad_norm) else "skipped"
        if status == "ok":
            self._take_snapshot(opt)
            if opt.scaler is not None:
                opt.scaler.step(opt.optimizer)
            else:
                opt.optimizer.step()
            if all_finite(self.snapshots[obj.name].tensors):
                self.guard.stepped()
                self.unverified_since = self.step
            else:
                status = "rolled back"
                self._roll_back(opt, "weights")
        if opt.scaler is not None:
            opt.scaler.update()
        with warnings.catch_warnings():  # a skipped update is no reason to warn
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step", UserWarning)
            opt.scheduler.step()
        suffix = "" if len(self.opts) == 1 else f"_{obj.name}"
        window.add({f"loss{suffix}": loss_value, f"grad_norm{suffix}": grad_norm})
        return status

    def update(self, window: LogWindow) -> None:
        micro = [self.batches.next_batch() for _ in range(self.s.grad_accum)]
        statuses = []
        for opt in self.opts.values():
            if self.step >= opt.objective.start_step:
                statuses.append(self._objective_step(opt, micro, window))
                if statuses[-1] == "rolled back":
                    break  # every objective is back at its snapshot
        skipped = "skipped" in statuses
        if "rolled back" not in statuses and not skipped and self.ema is not None:
            self.ema.update(self.setup.modules)
            if not all_finite(self.ema_snapshot.tensors):
                opt = next(iter(self.opts.values()))
                self._roll_back(opt, "the EMA")
        unverified = self.unverified_since
        if skipped and unverified is not None and self.guard.consecutive + 1 >= self.guard.limit:
            # the weights a step made never gave a finite loss (lr=1e30: finite weights of
            # ~1e30): back to the verified state before the guard stops the run
            pending = self.pending_checkpoint
            self._restore()
            self.guard.rollbacks += 1
            if pending is not None and self.main:
                with self.writes():
                    snapshot.reject(self, pending)
        self.guard.record(not skipped, self.step, self._good(), unverified)
        self.step += 1

    # -- logging and evaluation ----------------------------------------------------------
    def log_row(self, window: LogWindow, start: float) -> dict:
        if self.ctx.enabled:  # the task's logs of every rank, not rank 0's alone
            window.sums = distributed.sum_over_ranks(window.sums, self.ctx)
            window.counts = distributed.sum_over_ranks(window.counts, self.ctx)
        means = window.means()
        suffixes = {n: ("" if len(self.opts) == 1 else f"_{n}") for n in self.opts}
        losses = {f"loss{x}": means.pop(f"loss{x}", math.nan) for x in suffixes.values()}
        norms = {f"grad_norm{x}": means.pop(f"grad_norm{x}", math.nan) for x in suffixes.values()}
        lrs = {f"lr{suffixes[n]}": o.scheduler.get_last_lr()[0] for n, o in self.opts.items()}
        row = {
            "step": self.step,
            "epoch": self.batches.position().get("epoch", 0),
            **losses,
            **means,
            **lrs,
            **norms,
            "skipped_updates": self.guard.skipped,
            "rollbacks": self.guard.rollbacks,
            "ema_decay": self.ema.current_decay() if self.ema is not None else 0.0,
            "images_per_s": window.images / max(window.seconds, 1e-9),
            "peak_mem_mb": _peak_memory_mb(self.device),
            "elapsed_s": time.perf_counter() - start,
        }
        self.rows.append(row)
        if self.log is not None:
            with self.writes():
                self.log.log(row)
                if self.tb is not None:
                    self.tb.log(row, self.step)
        return row

    def evaluate(self) -> None:
        if not self.setup.evaluators:
            return
        modules = self.setup.modules
        ema = self.ema.modules if self.ema is not None else {}
        was_training = {n: m.training for n, m in modules.items()}
        for m in modules.values():
            m.eval()
        metrics: dict[str, float] = {}
        images: dict[str, np.ndarray] = {}
        pure = self.weights_dtype != torch.float32  # low-precision weights need autocast
        with torch.no_grad(), torch.autocast(self.device.type, self.weights_dtype, enabled=pure):
            for ev in self.setup.evaluators:
                result = ev.evaluate(modules, ema, self.step, self.ctx)
                means = reduce(result, self.ctx)
                summarize = getattr(ev, "summarize", None)
                metrics.update(summarize(means) if callable(summarize) else means)
                images.update(result.images)
        for n, m in modules.items():
            m.train(was_training[n])
        self.last_eval = {k: float(v) for k, v in metrics.items()}
        self.last_eval_step = self.step
        self.eval_rows.append({"step": self.step, **self.last_eval})
        if self.eval_log is not None and self.last_eval:
            with self.writes():
                self.eval_log.log({"step": self.step, **self.last_eval})
                if images:
                    write_images(images, self.run_dir / "eval" / f"step_{self.step:08d}")
                if self.tb is not None:
                    self.tb.log(self.last_eval, self.step, prefix="eval")
                    self.tb.images(images, self.step)


def fit(
    setup: TrainingSetup,
    batches: BatchSource,
    settings: EngineSettings,
    run_dir: str | Path | None = None,
    *,
    config: dict | None = None,
    files: dict[str, bytes] | None = None,
    dist_ctx: DistContext | None = None,
    stop: StopFlag | None = None,
    quiet: bool = False,
) -> FitResult:
    """Train ``setup`` on ``batches`` up to ``settings.steps`` updates.

    With a ``run_dir``, rank 0 writes ``metrics.csv``, ``eval.csv``, evaluation images,
    TensorBoard events and checkpoints there (each with ``config`` and ``files``), and a
    checkpoint that verifies is resumed. ``stop`` is a :class:`StopFlag` the caller entered
    earlier (so signals during its start-up count); by default one is entered here. Raises
    :class:`Preempted` after a checkpoint on a signal and :class:`NonFiniteError` when the
    NaN guard gives up.
    """
    s = settings
    if s.deterministic:  # cuBLAS needs a fixed workspace for deterministic matmuls
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    run = _Run(setup, batches, s, run_dir, config, dist_ctx or DistContext(), files)
    run.resume()
    if run.main and run.run_dir is not None and s.tensorboard and run.step < s.steps:
        from medgen.train.engine.tensorboard_log import TensorBoardLog

        run.tb = TensorBoardLog(run.run_dir / "tensorboard", purge_step=run.step or None)
    window = LogWindow()
    start = time.perf_counter()
    bar = tqdm(
        total=s.steps,
        initial=run.step,
        desc="train",
        disable=True if not run.main else bars_disabled(quiet),
    )
    for module in setup.modules.values():
        module.train(False)
    for name in setup.trained():
        setup.modules[name].train()
    own_stop = stop is None
    try:
        with StopFlag() if own_stop else contextlib.nullcontext(stop) as flag:
            if distributed.any_rank(flag.requested, ctx=run.ctx) and run.step < s.steps:
                raise Preempted(run.step, run.last_checkpoint, flag.signal_name or "signal")
            while run.step < s.steps:
                t0 = time.perf_counter()
                run.update(window)
                window.seconds += time.perf_counter() - t0
                window.images += batches.batch_size * s.grad_accum * run.ctx.world_size
                bar.update(1)
                last = run.step == s.steps
                if run.step % s.log_every == 0 or last:
                    row = run.log_row(window, start)
                    loss = next(v for k, v in row.items() if k.startswith("loss"))
                    bar.set_postfix(loss=f"{loss:.4f}", ips=f"{row['images_per_s']:.0f}")
                    window.reset()
                if last or (s.eval_every and run.step % s.eval_every == 0):
                    run.evaluate()
                stopping, failed = distributed.any_rank(
                    flag.requested, run.failure is not None, ctx=run.ctx
                )
                if failed:
                    distributed.raise_if_failed(run.failure, run.ctx)
                every = s.checkpoint_every and run.step % s.checkpoint_every == 0
                if every or last or stopping:
                    run.save()
                    if not (stopping or last):
                        # a signal that came during this save stops here, on this checkpoint,
                        # not after one more update and a second write (SIGKILL may be near)
                        stopping = distributed.any_rank(flag.requested, ctx=run.ctx)
                if stopping and not last:
                    raise Preempted(run.step, run.last_checkpoint, flag.signal_name)
    finally:
        bar.close()
        if run.tb is not None:
            run.tb.close()
        for module in setup.modules.values():
            module.eval()
        if s.deterministic:
            torch.use_deterministic_algorithms(False)
    # every rank done with every collective before any leaves the process group: a rank that
    # destroyed its gloo group while the other still finished its last all-reduce aborted
    # ("terminate called without an active exception", seen once under load in CI)
    distributed.barrier(run.ctx)
    return FitResult(
        setup=setup,
        ema=run.ema,
        step=run.step,
        resumed_from=run.resumed_from,
        skipped_updates=run.guard.skipped,
        checkpoint=run.last_checkpoint,
        rollbacks=run.guard.rollbacks,
        rows=run.log.rows if run.log is not None else run.rows,
        eval_rows=run.eval_log.rows if run.eval_log is not None else run.eval_rows,
        notes=run.notes,
    )
