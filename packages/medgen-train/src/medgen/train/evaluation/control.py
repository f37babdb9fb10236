"""Control fidelity: how closely a ControlNet's samples follow the maps they were given."""

from __future__ import annotations

import numpy as np

from medgen.train.evaluation.metrics import dice


def control_fidelity(arrays: dict) -> dict:
    """A ControlNet's samples against the masks their control maps came from: Dice of each
    generated mask with its control mask ({} when the samples have no control mask)."""
    if "control_mask" not in arrays or "masks" not in arrays:
        return {}
    pairs = zip(arrays["masks"], arrays["control_mask"], strict=True)
    values = np.array([dice(m.astype(bool), c.astype(bool)) for m, c in pairs])
    return {
        "control": {
            "dice": {"mean": float(values.mean()), "std": float(values.std()), "n": len(values)},
            "per_sample": values.tolist(),
        }
    }
