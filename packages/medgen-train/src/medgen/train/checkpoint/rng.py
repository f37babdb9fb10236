"""The random-number states a resumed run restores: Python, NumPy, torch CPU and CUDA."""

from __future__ import annotations

import random

import numpy as np
import torch


def rng_state() -> dict:
    """The process's global RNG states, as tensors and plain values (``weights_only``-safe)."""
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
        # the current CUDA device's generator only, and only once CUDA is in use (a run may
        # resume on a node with fewer GPUs; a CPU run never initialises CUDA for this)
        "cuda": [torch.cuda.get_rng_state()] if torch.cuda.is_initialized() else [],
    }


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
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
        torch.cuda.set_rng_state(state["cuda"][0])
