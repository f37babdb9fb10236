"""Weights from a local file: safetensors or a torch state dict read with ``weights_only=True``.

Nothing here downloads. A missing file is a :class:`MissingWeightsError` naming the path and
saying how to obtain the weights; a truncated or unreadable file, a state dict of another
architecture or latent size, each a one-line :class:`WeightsError` naming the file (a few
mismatched keys and shapes, never the whole dict).

Checkpoints often nest the state dict: MAISI's ``autoencoder_epoch273.pt`` keeps it under
``"unet_state_dict"``; Lightning under ``"state_dict"``; other trainers under
``"model_state_dict"``, ``"model"`` or ``"autoencoder"``. :func:`read_state_dict` unwraps the
first of :data:`NESTED_KEYS` it finds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

NESTED_KEYS = ("state_dict", "unet_state_dict", "model_state_dict", "model", "autoencoder")
SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
MAX_LISTED = 4  # mismatched keys listed in an error message


class WeightsError(ValueError):
    """A weights file that cannot be used: unreadable, truncated, or of another architecture."""


class MissingWeightsError(WeightsError, FileNotFoundError):
    """A weights path that does not exist (the message says how to obtain the file)."""


def sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def require_file(path: str | Path, how_to_obtain: str = "") -> Path:
    """``Path(path)`` if it is an existing file, else :class:`MissingWeightsError`."""
    p = Path(path).expanduser()
    if not p.is_file():
        what = "is a directory, not a file" if p.is_dir() else "does not exist"
        hint = f"; {how_to_obtain}" if how_to_obtain else ""
        raise MissingWeightsError(f"weights file {p} {what}{hint} (MedGen never downloads weights)")
    return p


def read_state_dict(
    path: str | Path, how_to_obtain: str = "", expected_sha256: str | None = None
) -> dict[str, torch.Tensor]:
    """The tensors of a local weights file, on the CPU.

    ``.safetensors`` files are read with safetensors; anything else with
    ``torch.load(weights_only=True)`` (never unpickling arbitrary objects), unwrapping the first
    of :data:`NESTED_KEYS` present. With ``expected_sha256`` the file's hash is checked first.
    """
    p = require_file(path, how_to_obtain)
    if expected_sha256 is not None:
        got = sha256(p)
        if got != expected_sha256.lower():
            raise WeightsError(
                f"weights file {p}: sha256 {got} does not match the expected {expected_sha256}"
            )
    if p.suffix.lower() in SAFETENSORS_SUFFIXES:
        from safetensors.torch import load_file

        try:
            state = load_file(str(p), device="cpu")
        except Exception as err:  # safetensors raises its own SafetensorError / OSError
            raise WeightsError(
                f"weights file {p}: not a readable safetensors file (truncated or corrupt? "
                f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
            ) from err
        return dict(state)
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:
        first = str(err).splitlines()[0] if str(err) else ""
        raise WeightsError(
            f"weights file {p}: not a readable torch state dict with weights_only=True "
            f"(truncated, corrupt, or pickled objects? {type(err).__name__}: {first[:200]})"
        ) from err
    return _unwrap(obj, p)


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    for _ in range(3):  # e.g. {"state_dict": {...}}; at most a few levels
        if not isinstance(obj, Mapping):
            break
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return {str(k): v for k, v in obj.items()}
        nested = next((k for k in NESTED_KEYS if isinstance(obj.get(k), Mapping)), None)
        if nested is None:
            break
        obj = obj[nested]
    keys = list(obj)[:6] if isinstance(obj, Mapping) else type(obj).__name__
    raise WeightsError(
        f"weights file {path}: no state dict of tensors found (top-level keys {keys}; "
        f"looked under {', '.join(NESTED_KEYS)})"
    )


def strip_prefix(state: Mapping[str, torch.Tensor], module: nn.Module) -> dict[str, torch.Tensor]:
    """Remove a common ``module.``/``net.``/``autoencoder.`` prefix the module's keys lack."""
    own = set(module.state_dict())
    state = dict(state)
    for prefix in ("module.", "_orig_mod.", "autoencoder.", "net."):
        if state and all(k.startswith(prefix) for k in state) and not (set(state) & own):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def load_into(module: nn.Module, state: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """Load ``state`` into ``module`` strictly; a mismatch is one line naming the file.

    Checks keys and shapes before anything is copied, so a failed load leaves ``module``
    unchanged. The message lists up to :data:`MAX_LISTED` missing, unexpected and
    shape-mismatched keys with both shapes, and the total counts.
    """
    state = strip_prefix(state, module)
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        for label, items in (
            ("shape mismatches (file vs model)", shapes),
            ("missing", missing),
            ("unexpected", unexpected),
        ):
            if items:
                more = f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
                parts.append(f"{len(items)} {label}: {', '.join(items[:MAX_LISTED])}{more}")
        raise WeightsError(
            f"weights file {path} does not fit {type(module).__name__} (another architecture "
            f"or latent size?): {'; '.join(parts)}"
        )
    module.load_state_dict(state, strict=True)
