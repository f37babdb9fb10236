"""Loading of the compiled extension ``medgen.cuda._C``, with one warning when it is missing.

The ops never crash because the extension is absent: they fall back to the pure-PyTorch reference
in :mod:`medgen.cuda.reference` (same results, slower). The fallback is announced ONCE per process
with an :class:`ExtensionMissingWarning` that names the import error. Setting the environment
variable ``MEDGEN_CUDA_DISABLE_EXTENSION=1`` selects the reference deliberately (no warning).
"""

from __future__ import annotations

import importlib
import os
import threading
import warnings
from types import ModuleType

__all__ = [
    "ExtensionMissingWarning",
    "backend_counts",
    "extension_available",
    "get_extension",
    "last_backend",
]

DISABLE_ENV = "MEDGEN_CUDA_DISABLE_EXTENSION"


class ExtensionMissingWarning(RuntimeWarning):
    """The compiled medgen.cuda extension could not be used; the PyTorch reference runs instead."""


_lock = threading.Lock()
_state: dict[str, object] = {
    "tried": False,
    "module": None,
    "error": None,
    "warned_missing": False,
    "warned_no_cuda": False,
}


# Which implementation the ops ran: one count per completed op call, by backend ("cuda": the
# CUDA kernels, "cpu": the C++/OpenMP kernels, "reference": the pure-PyTorch fallback).
# Recorded after the op returned, so a count means that implementation produced a result.
BACKENDS = ("cuda", "cpu", "reference")
_counts: dict[str, int] = dict.fromkeys(BACKENDS, 0)
_last: list[str | None] = [None]


def record(ext: ModuleType | None, device_type: str) -> None:
    """Note that an op just ran on ``ext`` (None: the reference) for ``device_type`` tensors."""
    backend = "reference" if ext is None else device_type
    with _lock:
        _counts[backend] += 1
        _last[0] = backend


def last_backend() -> str | None:
    """The implementation the most recent op call of this process ran: ``"cuda"`` (CUDA
    kernels), ``"cpu"`` (compiled CPU kernels), ``"reference"`` (PyTorch fallback), or None
    before any. For tests and diagnostics: proves which code path produced a result."""
    return _last[0]


def backend_counts() -> dict[str, int]:
    """How many op calls each implementation ran in this process so far (a copy); compare two
    readings around a call to see which implementation it used."""
    with _lock:
        return dict(_counts)


def _import_extension() -> ModuleType:
    """Import the compiled module (a separate function so tests can simulate a broken build)."""
    return importlib.import_module("medgen.cuda._C")


def _reset_for_tests() -> None:
    with _lock:
        _state.update(
            tried=False, module=None, error=None, warned_missing=False, warned_no_cuda=False
        )


def _disabled() -> bool:
    return os.environ.get(DISABLE_ENV, "0") not in ("", "0")


def _load() -> ModuleType | None:
    with _lock:
        if not _state["tried"]:
            _state["tried"] = True
            try:
                _state["module"] = _import_extension()
            except (ImportError, OSError) as exc:  # missing, or built against another torch
                _state["error"] = exc
        return _state["module"]  # type: ignore[return-value]


def extension_available() -> bool:
    """Whether the compiled extension imports (and is not disabled by the environment)."""
    return not _disabled() and _load() is not None


def get_extension(device_type: str = "cpu") -> ModuleType | None:
    """The compiled module to use for tensors on ``device_type``, or None for the reference."""
    if _disabled():
        return None
    module = _load()
    if module is None:
        with _lock:
            if not _state["warned_missing"]:
                _state["warned_missing"] = True
                err = _state["error"]
                warnings.warn(
                    ExtensionMissingWarning(
                        "medgen.cuda: the compiled extension medgen.cuda._C could not be imported "
                        f"({type(err).__name__}: {err}); using the pure-PyTorch reference "
                        "implementation instead (same results, slower). Reinstall with "
                        "`pip install --no-build-isolation packages/medgen-cuda` against this torch."
                    ),
                    stacklevel=4,
                )
        return None
    if device_type == "cpu":
        return module
    if device_type == "cuda":
        if module.cuda_compiled():
            return module
        with _lock:
            if not _state["warned_no_cuda"]:
                _state["warned_no_cuda"] = True
                warnings.warn(
                    ExtensionMissingWarning(
                        "medgen.cuda: the extension was built without CUDA kernels (CPU torch or no "
                        "nvcc at build time); CUDA tensors use the pure-PyTorch reference."
                    ),
                    stacklevel=4,
                )
        return None
    return None  # other devices (mps, meta, ...): reference
