"""Checkpoints: a directory written under a temporary name, verified, then renamed into place.

``<run>/checkpoints/step_00001234/`` holds

- ``model.safetensors``: the weights of every trained module, keys ``<module>.<parameter>``
  (frozen modules, e.g. an autoencoder under a latent model, are never copied here);
- ``ema.safetensors``: the EMA copies, same key scheme;
- ``training_state.pt``: optimizers, LR schedulers, grad scalers (per objective), EMA and
  NaN-guard counters, data position, task and RNG states of every rank; readable with
  ``torch.load(weights_only=True)`` (tensors, numbers, strings, lists, dicts only);
- ``config.yaml`` and any files the caller adds (``data.json``: what the data looked like);
- ``state.json``: step, package versions, metrics, and the sha256 of every file above.

Before the rename every file is re-read: safetensors headers are parsed and their tensor
names compared with what was written, sizes and hashes recorded. ``latest`` is a symlink to
the newest step, but resuming never trusts it blindly: :func:`find_checkpoint` takes the
newest step directory whose files match their hashes and says which it skipped and why.
Loading never unpickles arbitrary objects: a planted pickle fails with
:class:`CheckpointError`.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from medgen.data.cache.atomic import file_sha256
from medgen.train.errors import CheckpointError

PACKAGES = ("medgen-data", "medgen-models", "medgen-cuda", "medgen-train", "torch", "monai")
MODEL_FILE, EMA_FILE = "model.safetensors", "ema.safetensors"
STATE_FILE, INFO_FILE, CONFIG_FILE = "training_state.pt", "state.json", "config.yaml"


def package_versions() -> dict[str, str]:
    """Installed versions of the packages a checkpoint depends on."""
    out = {}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def _flat(modules: Mapping[str, nn.Module]) -> dict[str, torch.Tensor]:
    out = {}
    for name, module in modules.items():
        for k, v in module.state_dict().items():
            out[f"{name}.{k}"] = v.detach().contiguous().cpu()
    return out


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_safetensors(path: Path, names: set[str]) -> None:
    with safe_open(str(path), framework="pt") as fh:
        found = set(fh.keys())
    if found != names:
        raise CheckpointError(f"{path}: wrote {len(names)} tensors, read back {len(found)}")


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    modules: Mapping[str, nn.Module],
    config: dict,
    *,
    ema: Mapping[str, nn.Module] | None = None,
    training_state: dict | None = None,
    info: dict | None = None,
    files: Mapping[str, bytes] | None = None,
) -> Path:
    """Write checkpoint ``step`` atomically and point ``latest`` at it; return its path.

    ``training_state`` (tensors and plain containers) goes into ``training_state.pt``;
    ``info`` (JSON-able) into ``state.json``; ``files`` are written as they are. A step
    directory already there (one that failed verification, left for inspection) is moved to
    ``checkpoints/rejected/`` first, never overwritten or deleted.
    """
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp-step_{step:08d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        written: dict[str, Path] = {}
        weights = _flat(modules)
        save_file(weights, str(tmp / MODEL_FILE))
        _check_safetensors(tmp / MODEL_FILE, set(weights))
        written[MODEL_FILE] = tmp / MODEL_FILE
        if ema:
            ema_weights = _flat(ema)
            save_file(ema_weights, str(tmp / EMA_FILE))
            _check_safetensors(tmp / EMA_FILE, set(ema_weights))
            written[EMA_FILE] = tmp / EMA_FILE
        torch.save(training_state or {}, tmp / STATE_FILE)
        load_training_state(tmp)  # what resume will read: tensors and containers only
        written[STATE_FILE] = tmp / STATE_FILE
        (tmp / CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False))
        written[CONFIG_FILE] = tmp / CONFIG_FILE
        for name, data in (files or {}).items():
            (tmp / name).write_bytes(data)
            written[name] = tmp / name
        hashes = {}
        for name, path in written.items():
            _fsync(path)
            hashes[name] = file_sha256(path)
        state = {
            "step": step,
            **(info or {}),
            "versions": package_versions(),
            "files": hashes,
        }
        (tmp / INFO_FILE).write_text(json.dumps(state, indent=2))
        _fsync(tmp / INFO_FILE)
        if final.exists():
            rejected = root / "rejected"
            rejected.mkdir(exist_ok=True)
            os.replace(final, rejected / f"{final.name}-{time.strftime('%Y%m%d-%H%M%S')}")
        os.replace(tmp, final)
    except CheckpointError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except Exception as exc:  # a full disk is OSError here, RuntimeError from torch.save
        shutil.rmtree(tmp, ignore_errors=True)
        free = shutil.disk_usage(root).free
        raise CheckpointError(
            f"{final}: cannot write the checkpoint ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())}; {free / 2**20:.1f} MiB free on that disk); the "
            "checkpoints already written are untouched"
        ) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    link(root, "latest", final)
    return final


def link(root: Path, name: str, target: Path) -> None:
    """Point symlink ``root/name`` at ``target`` (a sibling) atomically.

    A real directory in its place (a run copied with ``scp -r`` or ``cp -rL``, which turn
    links into copies) is moved to ``rejected/`` first, never deleted."""
    path = root / name
    if path.is_dir() and not path.is_symlink():
        rejected = root / "rejected"
        rejected.mkdir(exist_ok=True)
        os.replace(path, rejected / f"{name}-copy-{time.strftime('%Y%m%d-%H%M%S')}")
    tmp = root / f".{name}-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target.name)
    os.replace(tmp, path)


def read_state(ckpt: Path) -> dict:
    """The ``state.json`` of checkpoint directory ``ckpt``."""
    file = ckpt / INFO_FILE
    try:
        return json.loads(file.read_text())
    except OSError as exc:
        raise CheckpointError(f"{file}: cannot read ({exc.strerror or exc})") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{file}: not valid JSON ({exc})") from None


def verify_checkpoint(ckpt: Path) -> str | None:
    """Why checkpoint directory ``ckpt`` cannot be trusted, or None when every file listed in
    its ``state.json`` is there with the recorded sha256."""
    try:
        state = read_state(ckpt)
    except CheckpointError as exc:
        return str(exc)
    files = state.get("files")
    required = (MODEL_FILE, STATE_FILE, CONFIG_FILE)
    if not isinstance(files, dict) or any(name not in files for name in required):
        return f"{ckpt / INFO_FILE}: no hashes of {', '.join(required)} (an older version?)"
    for name, digest in files.items():
        path = ckpt / name
        if not path.is_file():
            return f"{path}: missing"
        if file_sha256(path) != digest:
            return f"{path}: damaged (sha256 differs from state.json)"
    return None


def step_dirs(run_dir: str | Path) -> list[Path]:
    """The run's ``checkpoints/step_*`` directories, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.name.startswith("step_") and p.is_dir())


def find_checkpoint(run_dir: str | Path, which: str = "latest") -> tuple[Path | None, list[str]]:
    """The checkpoint to use in ``run_dir`` and notes on the ones passed over.

    ``latest``: the newest step directory that verifies (whatever the ``latest`` link says);
    ``best``: the target of ``checkpoints/best``; ``step_N`` / ``N``: that step. Returns
    ``(None, notes)`` when ``latest`` finds none; other choices raise CheckpointError.
    """
    root = Path(run_dir) / "checkpoints"
    notes: list[str] = []
    if which == "latest":
        for ckpt in reversed(step_dirs(run_dir)):
            problem = verify_checkpoint(ckpt)
            if problem is None:
                return ckpt, notes
            notes.append(f"skipped {ckpt.name}: {problem}")
        return None, notes
    if which == "best":
        best = root / "best"
        if not best.exists():
            raise CheckpointError(f"{root}: no 'best' checkpoint (set training.best_metric)")
        ckpt = best.resolve()
    else:
        number = which.removeprefix("step_")
        if not number.isdigit():
            raise CheckpointError(f"checkpoint {which!r}: expected latest, best or step_N")
        ckpt = root / f"step_{int(number):08d}"
        if not ckpt.is_dir():
            have = ", ".join(p.name for p in step_dirs(run_dir)) or "none"
            raise CheckpointError(f"{ckpt}: no such checkpoint (have: {have})")
    problem = verify_checkpoint(ckpt)
    if problem is not None:
        raise CheckpointError(problem)
    return ckpt, notes


def _load_into(module: nn.Module, name: str, tensors: dict, file: Path) -> None:
    prefix = f"{name}."
    state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    if not state:
        raise CheckpointError(f"{file}: holds no weights for module {name!r}")
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or extra or shapes:
        what = []
        if shapes:
            k = shapes[0]
            what.append(
                f"{len(shapes)} of another shape (e.g. {k}: {tuple(state[k].shape)} in the file, "
                f"{tuple(own[k].shape)} here)"
            )
        if missing:
            what.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if extra:
            what.append(f"{len(extra)} unexpected (e.g. {extra[0]})")
        raise CheckpointError(
            f"{file}: module {name!r} does not match this configuration: " + "; ".join(what)
        )
    module.load_state_dict(state)


def load_weights(ckpt: Path, modules: Mapping[str, nn.Module], file: str = MODEL_FILE) -> None:
    """Load ``modules`` (by name) from ``model.safetensors`` (or ``ema.safetensors``)."""
    path = ckpt / file
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises several types
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc
    for name, module in modules.items():
        _load_into(module, name, tensors, path)


def load_training_state(ckpt: Path) -> dict:
    """``training_state.pt``, read with ``weights_only=True``."""
    file = ckpt / STATE_FILE
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"{file}: refused to load ({type(exc).__name__}); only tensors and plain "
            "containers are accepted, never pickled objects"
        ) from exc
