"""``medgen-train fit CONFIG [key=value ...]``: train a registered task on a cache.

CONFIG is a YAML file or a bundled config name (``medgen-train config --list``). The whole
config is validated first; then the run directory is claimed (locked; a directory of another
kind, or a second writer, is refused), a recipe's cache is built or reused, the data are
checked against the config (channels, classes, batch size), and only then is anything
written to the run directory. A directory holding a checkpoint that verifies is resumed,
provided its data, model and task config are the ones given now (``--fresh`` moves it aside
and starts again). Under ``torchrun`` every rank trains on its shard and rank 0 writes.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from dataclasses import replace
from pathlib import Path

import torch

from medgen.data import build_cache, read_manifest
from medgen.data.cache.atomic import atomic_write_bytes
from medgen.train import checkpoint
from medgen.train.commands.verb import add_fresh, add_overrides, add_quiet, add_verb
from medgen.train.config.fit import FitConfig, load_fit_config
from medgen.train.config.schema import differences, from_mapping, to_dict, to_yaml
from medgen.train.config.yaml_io import read_yaml
from medgen.train.engine import distributed
from medgen.train.engine.loop import FitResult, check_metrics, fit
from medgen.train.engine.preemption import StopFlag
from medgen.train.errors import ConfigError
from medgen.train.rundir import RunDir
from medgen.train.tasks import TASKS, BuildContext
from medgen.train.tasks.data import (
    DataDescription,
    check_classes,
    describe,
    make_batches,
    open_split,
)

KIND = "fit"
# data keys that change how batches are loaded, not what is learned, and the cache path (its
# content is compared through the data fingerprint instead): free to change on resume
FREE_DATA_KEYS = ("cache", "num_workers", "prefetch_factor", "persistent_workers", "pin_memory",
                  "verify")  # fmt: skip
# diagnostics only (what is measured at evaluations, not what is learned)
FREE_TASK_KEYS = ("eval_samples", "eval_buckets", "eval_seed", "eval_images", "overfit_kid_every",
                  "overfit_kid_samples", "overfit_kid_steps", "overfit_kid_features")  # fmt: skip
FREE_SPACE_KEYS = ("chunks", "overlap")  # how a latent space decodes (memory), not its latents
FREE_MODEL_KEYS = ("gradient_checkpointing",)  # memory vs time, the same weights and gradients
# training keys a resumed run cannot take: the data order, the batch, the optimizer's kind,
# the precision (a grad scaler or none; the weights' dtype), EMA on or off
FIXED_TRAINING_KEYS = ("seed", "batch_size", "grad_accum", "optimizer", "amp", "weights_dtype")
# training keys added after runs were written, with the value those runs had
ADDED_TRAINING_DEFAULTS = {"weights_dtype": "float32"}


def _learned(config: dict) -> dict:
    data = {k: v for k, v in config.get("data", {}).items() if k not in FREE_DATA_KEYS}
    if isinstance(data.get("recipe"), dict):  # where, not what: the fingerprint checks content
        data["recipe"] = {k: v for k, v in data["recipe"].items() if k not in ("out", "sources")}
    task = {k: v for k, v in (config.get("task") or {}).items() if k not in FREE_TASK_KEYS}
    if isinstance(task.get("space"), dict):
        task["space"] = {k: v for k, v in task["space"].items() if k not in FREE_SPACE_KEYS}
    model = config.get("model")
    if isinstance(model, dict):
        model = {k: v for k, v in model.items() if k not in FREE_MODEL_KEYS}
    return {"data": data, "model": model, "task": task}


def _refuse(run_dir: Path, changed: list, what: str) -> None:
    shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in changed[:4])
    more = f" (and {len(changed) - 4} more)" if len(changed) > 4 else ""
    raise ConfigError(
        f"{run_dir}: was trained with another {what}: {shown}{more}; use --fresh to move the "
        "old run aside, or another --out"
    )


def _with_added_keys(old: dict) -> dict:
    """A run's written config with the keys added to the schema since then at their defaults
    (an added key's default keeps the behaviour runs had before it: model.dropout 0, ...);
    the written config as it is when today's schema cannot read it."""
    try:
        return to_dict(from_mapping(FitConfig, old))
    except (ConfigError, TypeError, ValueError):
        return old


def check_resume(run_dir: Path, cfg: FitConfig, say) -> Path | None:
    """Refuse to resume a run whose newest verified checkpoint was trained with another data,
    model or task config, or with training keys that cannot change; report the training keys
    that do change. Returns that checkpoint (None for a fresh run)."""
    ckpt, _ = checkpoint.find_checkpoint(run_dir, "latest")
    if ckpt is None:
        return None
    old = read_yaml(ckpt / "config.yaml")
    new = to_dict(cfg)
    changed = differences(_learned(_with_added_keys(old)), _learned(new))
    if changed:
        _refuse(run_dir, changed, "config")
    before = {**ADDED_TRAINING_DEFAULTS, **old.get("training", {})}
    training = differences(before, new["training"], "training.")
    fixed = [d for d in training if d[0].removeprefix("training.") in FIXED_TRAINING_KEYS]
    ema = [d for d in training if d[0] == "training.ema_decay" and 0 in (d[1], d[2])]
    if fixed or ema:
        _refuse(run_dir, fixed + ema, "training setting (one a resumed run cannot change)")
    if training:
        say("fit: resuming with " + ", ".join(f"{k} {a!r} -> {b!r}" for k, a, b in training))
    return ckpt


def _data(cfg: FitConfig, ctx, quiet: bool, say):
    """Build the recipe's cache (rank 0), then open and describe the splits."""
    cache = cfg.data.cache_dir()
    if cfg.data.recipe is not None:
        error = None
        if ctx.is_main:
            try:
                report = build_cache(cfg.data.recipe, quiet=quiet, wait=True)
                say(f"cache {cache}: {len(report.built)} shards built, {len(report.reused)} reused")
            except Exception as exc:  # every rank learns of it (no rank waits for rank 0)
                error = exc
        distributed.raise_if_failed(error, ctx)
    if not cache.is_dir():
        raise ConfigError(f"data.cache: {cache} does not exist; build it with medgen-train cache")
    manifest = read_manifest(cache)
    description = describe(manifest, cfg.data, cache)
    train = open_split(cache, cfg.data.train_split, cfg.data, "data.train_split")
    check_classes(description, cfg.data.train_split)
    description.tokens = sorted({int(t) for t in train.tokens()})
    evaluation = None
    if cfg.data.eval_split:
        evaluation = open_split(cache, cfg.data.eval_split, cfg.data, "data.eval_split")
    return description, train, evaluation


def _check_data_unchanged(ckpt: Path | None, run_dir: Path, description: DataDescription):
    if ckpt is None:
        return
    old = DataDescription.from_json((ckpt / "data.json").read_text())
    if old.fingerprint != description.fingerprint:
        raise ConfigError(
            f"{run_dir}: the cache {description.cache} no longer holds the data this run was "
            "trained on (its shards or recipe changed); use --fresh or another --out"
        )


def run_fit(
    cfg: FitConfig,
    out: str | Path | None = None,
    *,
    fresh: bool = False,
    quiet: bool = False,
    stop: StopFlag | None = None,
    say=print,
) -> FitResult:
    """Train as configured; raises ``Preempted`` (requeue / Ctrl-C) or ``NonFiniteError``."""
    run_dir = Path(out or cfg.run.dir)
    cfg = replace(cfg, run=replace(cfg.run, dir=str(run_dir)))
    device = cfg.run.torch_device()
    with StopFlag() if stop is None else contextlib.nullcontext(stop) as flag:
        # handlers first: a signal while joining the process group or loading data counts
        return _run_fit(cfg, run_dir, device, flag, fresh, quiet, say)


def _run_fit(cfg, run_dir, device, flag, fresh, quiet, say) -> FitResult:
    ctx = distributed.setup(device)
    say = say if ctx.is_main and not quiet else (lambda *_: None)
    run = RunDir(run_dir, KIND)
    failed = True
    try:
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        if ctx.enabled and device.type == "cuda":
            device = torch.device("cuda", ctx.local_rank)
        error, resumes = None, None
        if ctx.is_main:
            try:
                run.claim(fresh)
                if run.moved_aside is not None:
                    say(f"fit: --fresh: the old run is now {run.moved_aside}")
                resumes = check_resume(run_dir, cfg, say)
            except Exception as exc:
                error = exc
        distributed.raise_if_failed(error, ctx)
        description, train, evaluation = _data(cfg, ctx, quiet, say)
        if ctx.is_main:
            try:
                _check_data_unchanged(resumes, run_dir, description)
            except Exception as exc:
                error = exc
        distributed.raise_if_failed(error, ctx)
        torch.manual_seed(cfg.training.seed)
        spec = TASKS[cfg.task.kind]
        context = BuildContext(cfg, description, train, evaluation, device, ctx)
        setup = spec.build(context)
        batches = make_batches(
            train, cfg.data, cfg.training.batch_size, cfg.training.seed, ctx,
            device.type == "cuda",
        )  # fmt: skip
        check_metrics(setup, cfg.training)
        if ctx.is_main:
            try:
                run.mark()
                atomic_write_bytes(run_dir / "config.yaml", to_yaml(cfg).encode())
                atomic_write_bytes(run_dir / "data.json", description.to_json())
            except Exception as exc:
                error = exc
        distributed.raise_if_failed(error, ctx)
        if ctx.is_main:

            def count(names) -> float:
                return sum(p.numel() for n in names for p in setup.modules[n].parameters()) / 1e6

            frozen, trained = setup.frozen(), setup.trained()
            single = trained == ("network",) and not frozen  # the model section's network alone
            what = cfg.model.kind if single else f"{', '.join(trained)} trained"
            say(
                f"fit: {cfg.task.kind} on {len(train)} items of {description.cache} "
                f"({description.kind}, {', '.join(description.channels)}"
                f"{' + mask' if description.has_mask else ''}, shape {description.shape}); "
                f"{what} with {count(setup.trained()):.2f} M parameters"
                + (f" over frozen {', '.join(frozen)} ({count(frozen):.2f} M)" if frozen else "")
                + f" on {device}"
            )
        result = fit(
            setup,
            batches,
            cfg.training,
            run_dir,
            config=to_dict(cfg),
            files={"data.json": description.to_json()},
            dist_ctx=ctx,
            stop=flag,
            quiet=quiet,
        )
        failed = False
        for note in result.notes:
            say(f"fit: {note}")
        return result
    finally:
        if ctx.is_main:
            run.release(failed=failed)
        distributed.teardown()


def _command(args: argparse.Namespace) -> int:
    cfg = load_fit_config(args.config, args.overrides)
    result = run_fit(cfg, args.out, fresh=args.fresh, quiet=args.quiet)
    if not args.quiet and os.environ.get("RANK", "0") == "0":
        last = result.rows[-1] if result.rows else {}
        loss = next((v for k, v in last.items() if k.startswith("loss")), float("nan"))
        print(
            f"fit: step {result.step} (resumed from {result.resumed_from}), loss {loss:.4f}, "
            f"{result.skipped_updates} skipped updates, {result.rollbacks} rollbacks; "
            f"checkpoint {result.checkpoint}",
            flush=True,
        )
    return 0


def register(subparsers) -> None:
    """Add ``fit`` to the CLI."""
    help_ = "train from a run config (resumes its run directory)"
    p = add_verb(subparsers, "fit", _command, help_, __doc__)
    p.add_argument("config", help="YAML run config, or a bundled config name")
    add_overrides(p)
    p.add_argument("--out", help="run directory (default: run.dir of the config)")
    add_fresh(p, "run")
    add_quiet(p)
