"""Checkpoints: a directory written under a temporary name, then renamed into place.

``<run>/checkpoints/step_00001234/`` holds

- ``model.safetensors`` and ``ema.safetensors``: weights (no pickle),
- ``training_state.pt``: optimizer, LR scheduler, EMA counters and RNG states, readable with
  ``torch.load(weights_only=True)`` (plain tensors, numbers, strings, lists and dicts),
- ``state.json``: step, package versions, and the metrics the caller passes,
- ``config.yaml``: the resolved configuration.

``<run>/checkpoints/latest`` is a symlink to the newest complete one. Reading never unpickles
arbitrary objects: a planted pickle payload fails with :class:`CheckpointError`.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors.torch import load_file, save_file
from torch import nn

from medgen.train.errors import CheckpointError

PACKAGES = ("medgen-data", "medgen-models", "medgen-cuda", "medgen-train", "torch", "monai")


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def rng_state() -> dict:
    np_state = np.random.get_state()  # noqa: NPY002 (global state is what resume restores)
    return {
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (
            "MT19937",
            n["key"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: nn.Module,
    config: dict,
    *,
    ema=None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler=None,
    metrics: dict | None = None,
    scaler=None,
    extra: dict | None = None,
    info: dict | None = None,
) -> Path:
    """Write checkpoint ``step`` atomically and point ``latest`` at it; return its path.

    ``extra`` (tensors and plain containers) goes into ``training_state.pt`` (e.g. the data
    source and task states); ``info`` (JSON-able, e.g. epoch and data position) into
    ``state.json``.
    """
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp-step_{step:08d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_file(_tensors(model), str(tmp / "model.safetensors"))
        if ema is not None:
            save_file(_tensors(ema.model), str(tmp / "ema.safetensors"))
        torch.save(
            {
                "optimizer": optimizer.state_dict() if optimizer is not None else None,
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "ema": ema.state_dict() if ema is not None else None,
                "scaler": scaler.state_dict() if scaler is not None else None,
                "rng": rng_state(),
                "extra": extra or {},
            },
            tmp / "training_state.pt",
        )
        state = {
            "step": step,
            **(info or {}),
            "versions": package_versions(),
            "metrics": metrics or {},
        }
        (tmp / "state.json").write_text(json.dumps(state, indent=2))
        (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    link_tmp = root / f".latest-{os.getpid()}"
    link_tmp.unlink(missing_ok=True)
    link_tmp.symlink_to(final.name)
    os.replace(link_tmp, root / "latest")
    return final


def resolve_checkpoint(path: str | Path) -> Path:
    """Accept a checkpoint dir, a run dir or a ``checkpoints`` dir; follow ``latest``."""
    path = Path(path)
    for candidate in (path, path / "latest", path / "checkpoints" / "latest"):
        if (candidate / "state.json").is_file():
            return candidate.resolve()
    raise CheckpointError(f"{path}: no checkpoint here (expected state.json or a 'latest' link)")


def load_checkpoint(
    path: str | Path,
    model: nn.Module | None = None,
    *,
    ema=None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler=None,
    restore_rng: bool = False,
    scaler=None,
    extra: dict | None = None,
) -> dict:
    """Load what is asked for from a checkpoint; return its ``state.json`` content.

    Weights come only from safetensors files; ``training_state.pt`` is read with
    ``weights_only=True``. Any failure is a :class:`CheckpointError` naming the file. A dict
    passed as ``extra`` is filled with the ``extra`` states saved by :func:`save_checkpoint`.
    """
    ckpt = resolve_checkpoint(path)
    try:
        state = json.loads((ckpt / "state.json").read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{ckpt / 'state.json'}: not valid JSON ({exc})") from exc

    def weights(name: str) -> dict[str, torch.Tensor]:
        file = ckpt / name
        try:
            return load_file(str(file))
        except Exception as exc:  # safetensors raises several types
            raise CheckpointError(f"{file}: not a readable safetensors file ({exc})") from exc

    if model is not None:
        model.load_state_dict(weights("model.safetensors"))
    if ema is not None:
        ema.model.load_state_dict(weights("ema.safetensors"))
    wanted = (optimizer, scheduler, ema, scaler, extra)
    if any(x is not None for x in wanted) or restore_rng:
        file = ckpt / "training_state.pt"
        try:
            training = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointError(
                f"{file}: refused to load ({type(exc).__name__}); only tensors and plain "
                "containers are accepted, never pickled objects"
            ) from exc
        if optimizer is not None:
            optimizer.load_state_dict(training["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(training["scheduler"])
        if ema is not None and training.get("ema"):
            ema.load_state_dict(training["ema"])
        if scaler is not None and training.get("scaler"):
            scaler.load_state_dict(training["scaler"])
        if extra is not None:
            extra.update(training.get("extra") or {})
        if restore_rng:
            set_rng_state(training["rng"])
    return state


def add_metrics(path: str | Path, metrics: dict) -> None:
    """Merge ``metrics`` into a written checkpoint's ``state.json`` (atomically)."""
    ckpt = resolve_checkpoint(path)
    state = json.loads((ckpt / "state.json").read_text())
    state.setdefault("metrics", {}).update(metrics)
    tmp = ckpt / f".state.json.{os.getpid()}"
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, ckpt / "state.json")
