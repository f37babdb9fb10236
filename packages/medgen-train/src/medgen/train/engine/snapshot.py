"""Checkpoints of a running fit: the exact state written (rank 0) and read back on resume.

What is saved: the trained modules and their EMA (safetensors), every objective's optimizer,
schedule and scaler, the EMA and NaN-guard counters, the data position, and each rank's task
state and RNG states; ``state.json`` records step, data position, world size, metrics.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from medgen.train import checkpoint
from medgen.train.engine import distributed
from medgen.train.engine.nan_guard import NonFiniteError, all_finite
from medgen.train.errors import CheckpointError


def _state_of(obj) -> dict:
    fn = getattr(obj, "state_dict", None)
    return fn() if callable(fn) else {}


def _load_state_of(obj, state: dict | None) -> None:
    fn = getattr(obj, "load_state_dict", None)
    if callable(fn) and state:
        fn(state)


def restore(run) -> None:
    """Resume ``run`` (the state of a running fit) from the newest checkpoint of its run directory that
    verifies: weights, EMA, optimizers, data position, NaN guard, task and RNG states."""
    if run.run_dir is None:
        return
    if run.main:
        checkpoint.remove_stale_temporaries(run.run_dir)
    ckpt, notes = checkpoint.find_checkpoint(run.run_dir, "latest")
    run.notes += notes
    if ckpt is None:
        if checkpoint.step_dirs(run.run_dir):
            raise CheckpointError(
                f"{run.run_dir}: no checkpoint verifies ({'; '.join(notes)}); nothing to "
                "resume from. Start afresh with --fresh (moves this run aside) or repair it"
            )
        return
    state = checkpoint.read_state(ckpt)
    stored = state.get("weights_dtype", "float32")  # checkpoints from before the setting
    if stored != run.s.weights_dtype:
        raise CheckpointError(
            f"{ckpt}: its weights were trained in {stored}, training.weights_dtype is "
            f"{run.s.weights_dtype}: resume with training.weights_dtype={stored}, or start "
            "afresh (--fresh)"
        )
    checkpoint.load_weights(ckpt, {n: run.setup.modules[n] for n in run.setup.trained()})
    training = checkpoint.load_training_state(ckpt)
    if run.ema is not None:
        checkpoint.load_weights(ckpt, run.ema.modules, checkpoint.store.EMA_FILE)
        run.ema.load_state_dict(training["ema"])
    for name, opt in run.opts.items():
        if name not in training.get("objectives", {}):
            raise CheckpointError(f"{ckpt}: no optimizer state for objective {name!r}")
        opt.load_state_dict(training["objectives"][name])
    run.batches.load_state_dict(training["batches"])
    run.guard.load_state_dict(training.get("guard", {}))
    ranks = training.get("ranks") or []
    if len(ranks) != run.ctx.world_size:
        raise CheckpointError(
            f"{ckpt}: written by {len(ranks)} rank(s), resumed by {run.ctx.world_size}; the "
            "data order and every rank's noise depend on the number of ranks: resume with "
            f"{len(ranks)}, or start afresh (--fresh)"
        )
    mine = ranks[run.ctx.rank]
    _load_state_of(run.setup.state, mine.get("task"))
    checkpoint.set_rng_state(mine["rng"])
    run.step = run.resumed_from = int(state["step"])
    run.last_checkpoint = ckpt
    run.pending_checkpoint = ckpt  # good once its weights give a finite loss here
    run.notes.append(f"resumed from {ckpt.name} (step {run.step})")
    if run.log is not None:
        run.log.resume_at(run.step)
        run.eval_log.resume_at(run.step)


def save(run) -> Path | None:
    """Write a checkpoint of ``run`` (rank 0), every rank learning of a failed write.

    Never from non-finite weights (:class:`NonFiniteError`; the NaN guard rolls such steps
    back, so this is a last line), and not while the weights a step made have given only
    non-finite losses (a note says so; the last good checkpoint stays the newest)."""
    if run.run_dir is None:
        return None
    if run.guard.consecutive > 0 and run.unverified_since is not None:
        run.notes.append(
            f"step {run.step}: no checkpoint written: every loss since update "
            f"{run.unverified_since + 1} changed the weights was non-finite"
        )
        return None
    tensors = [t for snap in run.snapshots.values() for t in snap.tensors]
    tensors += run.ema_snapshot.tensors if run.ema_snapshot is not None else []
    if not all_finite(tensors):
        raise NonFiniteError(
            f"step {run.step}: the weights or their EMA are not finite; no checkpoint written "
            f"(last good checkpoint: {run.good_checkpoint or 'none verified yet'})"
        )
    ranks = distributed.gather(
        {"task": _state_of(run.setup.state), "rng": checkpoint.rng_state()}, run.ctx
    )
    path = None
    with run.writes():
        if run.main:
            path = _write_checkpoint(run, ranks)
    distributed.raise_if_failed(run.failure, run.ctx)  # also the barrier after the write
    run.last_checkpoint = path or run.last_checkpoint
    if path is not None:
        if run.unverified_since is None:  # e.g. weights just rolled back to a verified state
            run.good_checkpoint = path
        else:
            run.pending_checkpoint = path
    return path


def _write_checkpoint(run, ranks: list) -> Path:
    position = run.batches.position()
    metrics = dict(run.last_eval) if run.last_eval_step == run.step else {}
    path = checkpoint.save_checkpoint(
        run.run_dir,
        run.step,
        {n: run.setup.modules[n] for n in run.setup.trained()},
        run.config,
        ema=run.ema.modules if run.ema is not None else None,
        training_state={
            "objectives": {n: o.state_dict() for n, o in run.opts.items()},
            "ema": run.ema.state_dict() if run.ema is not None else None,
            "batches": run.batches.state_dict(),
            "guard": run.guard.state_dict(),
            "ranks": ranks,
        },
        info={
            "epoch": position.get("epoch", 0),
            "data_position": position,
            "world_size": run.ctx.world_size,
            "skipped_updates": run.guard.skipped,
            "rollbacks": run.guard.rollbacks,
            "weights_dtype": run.s.weights_dtype,
            "metrics": metrics,
        },
        files=run.files,
    )
    if run.s.best_metric:
        checkpoint.update_best(run.run_dir, path, run.s.best_metric, run.s.best_mode)
    checkpoint.prune(run.run_dir, run.s.keep_last)
    return path


def reject(run, ckpt: Path) -> None:
    """Move checkpoint ``ckpt`` (written from weights that then gave only non-finite losses)
    to ``checkpoints/rejected/``; ``latest`` goes back to the last good one, so a resume
    never starts from it."""
    root = ckpt.parent
    rejected = root / "rejected"
    rejected.mkdir(exist_ok=True)
    os.replace(ckpt, rejected / f"{ckpt.name}-unverified-{time.strftime('%Y%m%d-%H%M%S')}")
    good = run.good_checkpoint
    if good is not None and good.is_dir():
        checkpoint.store.link(root, "latest", good)
    else:
        (root / "latest").unlink(missing_ok=True)
    run.last_checkpoint = good
