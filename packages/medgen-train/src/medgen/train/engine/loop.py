"""The training engine: one loop that every task plugs into through a :class:`TrainingSetup`.

Per update: ``grad_accum`` micro-batches from the :class:`BatchSource`; then, for each active
objective, its loss under autocast (bf16, or fp16 with a GradScaler), backward through
``DistributedDataParallel`` (gradients averaged over ranks; ``no_sync`` on all but the last
micro-batch), unscale, clip, the NaN guard (a non-finite loss or gradient skips the
objective's step; an optimizer step that leaves a non-finite weight stops the run), the
optimizer step and its LR schedule. Then the EMA of the trained modules, logging
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

from medgen.train import checkpoint
from medgen.train.engine import distributed
from medgen.train.engine.batches import BatchSource
from medgen.train.engine.distributed import DistContext
from medgen.train.engine.ema import EMA
from medgen.train.engine.evaluators import reduce, write_images
from medgen.train.engine.log_window import LogWindow
from medgen.train.engine.metrics_log import MetricsLog
from medgen.train.engine.nan_guard import NanGuard, all_finite
from medgen.train.engine.objectives import Nets, Objective, TrainingSetup
from medgen.train.engine.optim import build_optimizer, build_scheduler
from medgen.train.engine.preemption import Preempted, StopFlag
from medgen.train.engine.settings import EngineSettings, OptimizerSettings
from medgen.train.errors import CheckpointError, ConfigError
from medgen.train.progress import bars_disabled

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class FitResult:
    """What :func:`fit` leaves behind."""

    setup: TrainingSetup
    ema: EMA | None
    step: int
    resumed_from: int  # 0 for a fresh run
    skipped_updates: int
    checkpoint: Path | None
    rows: list[dict] = field(default_factory=list)
    eval_rows: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # e.g. checkpoints skipped on resume

    @property
    def model(self) -> nn.Module:
        """The module of a :meth:`TrainingSetup.single` setup (or the first trained one)."""
        return self.setup.modules[self.setup.trained()[0]]


@dataclass
class _Optimization:
    objective: Objective
    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None
    settings: OptimizerSettings

    @property
    def grad_clip(self) -> float:
        return self.settings.grad_clip

    def state_dict(self) -> dict:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore the moments, the schedule's position and the scaler; then apply this run's
        lr, weight decay, betas and momentum (a resumed run may lower the lr; unchanged
        settings give back exactly the saved values)."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        s = self.settings
        self.scheduler.base_lrs = [s.lr] * len(self.optimizer.param_groups)
        epoch = self.scheduler.last_epoch
        lrs = [s.lr * fn(epoch) for fn in self.scheduler.lr_lambdas]
        for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
            group.update(initial_lr=s.lr, lr=lr, weight_decay=s.weight_decay)
            if "betas" in group:
                group["betas"] = tuple(s.betas)
            if "momentum" in group:
                group["momentum"] = s.momentum
        self.scheduler._last_lr = lrs


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _state_of(obj) -> dict:
    fn = getattr(obj, "state_dict", None)
    return fn() if callable(fn) else {}


def _load_state_of(obj, state: dict | None) -> None:
    fn = getattr(obj, "load_state_dict", None)
    if callable(fn) and state:
        fn(state)


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
        wrapped = {}
        for name in trained:
            module = distributed.wrap(setup.modules[name], ctx, setup.find_unused_parameters)
            wrapped[name] = torch.compile(module) if s.compile else module
        for name in setup.frozen():
            setup.modules[name].eval()
            wrapped[name] = setup.modules[name]
        self.ddp = {n: m for n, m in wrapped.items() if hasattr(m, "no_sync")}
        self.nets = Nets(wrapped, setup.modules)
        self.opts: dict[str, _Optimization] = {}
        for obj in setup.objectives:
            o = obj.optim or s.optimizer_settings()
            params = [p for m in obj.modules for p in setup.modules[m].parameters()]
            optimizer = build_optimizer(params, o)
            self.opts[obj.name] = _Optimization(
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
            self.ema = EMA({n: setup.modules[n] for n in ema_names}, s.ema_decay, s.ema_warmup)
        self.guard = NanGuard(s.max_consecutive_skips)
        self.step = self.resumed_from = 0
        self.last_checkpoint: Path | None = None
        self.last_eval: dict = {}
        self.last_eval_step = -1
        self.notes: list[str] = []
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

    # -- checkpoints ---------------------------------------------------------------------
    def resume(self) -> None:
        if self.run_dir is None:
            return
        if self.main:
            checkpoint.remove_stale_temporaries(self.run_dir)
        ckpt, notes = checkpoint.find_checkpoint(self.run_dir, "latest")
        self.notes += notes
        if ckpt is None:
            if checkpoint.step_dirs(self.run_dir):
                raise CheckpointError(
                    f"{self.run_dir}: no checkpoint verifies ({'; '.join(notes)}); nothing to "
                    "resume from. Start afresh with --fresh (moves this run aside) or repair it"
                )
            return
        state = checkpoint.read_state(ckpt)
        checkpoint.load_weights(ckpt, {n: self.setup.modules[n] for n in self.setup.trained()})
        training = checkpoint.load_training_state(ckpt)
        if self.ema is not None:
            checkpoint.load_weights(ckpt, self.ema.modules, checkpoint.store.EMA_FILE)
            self.ema.load_state_dict(training["ema"])
        for name, opt in self.opts.items():
            if name not in training.get("objectives", {}):
                raise CheckpointError(f"{ckpt}: no optimizer state for objective {name!r}")
            opt.load_state_dict(training["objectives"][name])
        self.batches.load_state_dict(training["batches"])
        self.guard.load_state_dict(training.get("guard", {}))
        ranks = training.get("ranks") or []
        if len(ranks) != self.ctx.world_size:
            raise CheckpointError(
                f"{ckpt}: written by {len(ranks)} rank(s), resumed by {self.ctx.world_size}; the "
                "data order and every rank's noise depend on the number of ranks: resume with "
                f"{len(ranks)}, or start afresh (--fresh)"
            )
        mine = ranks[self.ctx.rank]
        _load_state_of(self.setup.state, mine.get("task"))
        checkpoint.set_rng_state(mine["rng"])
        self.step = self.resumed_from = int(state["step"])
        self.last_checkpoint = ckpt
        self.notes.append(f"resumed from {ckpt.name} (step {self.step})")
        if self.log is not None:
            self.log.resume_at(self.step)
            self.eval_log.resume_at(self.step)

    def save(self) -> Path | None:
        if self.run_dir is None:
            return None
        ranks = distributed.gather(
            {"task": _state_of(self.setup.state), "rng": checkpoint.rng_state()}, self.ctx
        )
        path = None
        with self.writes():
            if self.main:
                path = self._write_checkpoint(ranks)
        distributed.raise_if_failed(self.failure, self.ctx)  # also the barrier after the write
        self.last_checkpoint = path or self.last_checkpoint
        return path

    def _write_checkpoint(self, ranks: list) -> Path:
        position = self.batches.position()
        metrics = dict(self.last_eval) if self.last_eval_step == self.step else {}
        path = checkpoint.save_checkpoint(
            self.run_dir,
            self.step,
            {n: self.setup.modules[n] for n in self.setup.trained()},
            self.config,
            ema=self.ema.modules if self.ema is not None else None,
            training_state={
                "objectives": {n: o.state_dict() for n, o in self.opts.items()},
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "batches": self.batches.state_dict(),
                "guard": self.guard.state_dict(),
                "ranks": ranks,
            },
            info={
                "epoch": position.get("epoch", 0),
                "data_position": position,
                "world_size": self.ctx.world_size,
                "skipped_updates": self.guard.skipped,
                "metrics": metrics,
            },
            files=self.files,
        )
        if self.s.best_metric:
            checkpoint.update_best(self.run_dir, path, self.s.best_metric, self.s.best_mode)
        checkpoint.prune(self.run_dir, self.s.keep_last)
        return path

    # -- one update ----------------------------------------------------------------------
    def _objective_step(self, opt: _Optimization, micro: list, window: LogWindow) -> bool:
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
        ok = NanGuard.finite(loss_value, grad_norm)
        if ok:
            if opt.scaler is not None:
                opt.scaler.step(opt.optimizer)
            else:
                opt.optimizer.step()
            if not all_finite(opt.params):
                last = str(self.last_checkpoint) if self.last_checkpoint else None
                raise NanGuard.weights_failed(self.step, obj.name, last)
        if opt.scaler is not None:
            opt.scaler.update()
        with warnings.catch_warnings():  # a skipped update is no reason to warn
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step", UserWarning)
            opt.scheduler.step()
        suffix = "" if len(self.opts) == 1 else f"_{obj.name}"
        window.add({f"loss{suffix}": loss_value, f"grad_norm{suffix}": grad_norm})
        return ok

    def update(self, window: LogWindow) -> None:
        micro = [self.batches.next_batch() for _ in range(self.s.grad_accum)]
        ok = True
        for opt in self.opts.values():
            if self.step >= opt.objective.start_step:
                ok = self._objective_step(opt, micro, window) and ok
        if ok and self.ema is not None:
            self.ema.update(self.setup.modules)
        last = str(self.last_checkpoint) if self.last_checkpoint else None
        self.guard.record(ok, self.step, last)
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
        with torch.no_grad():
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
    return FitResult(
        setup=setup,
        ema=run.ema,
        step=run.step,
        resumed_from=run.resumed_from,
        skipped_updates=run.guard.skipped,
        checkpoint=run.last_checkpoint,
        rows=run.log.rows if run.log is not None else run.rows,
        eval_rows=run.eval_log.rows if run.eval_log is not None else run.eval_rows,
        notes=run.notes,
    )
