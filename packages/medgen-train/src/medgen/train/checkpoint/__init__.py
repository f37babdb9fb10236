"""Checkpoints: verified atomic directories, safe loading, retention of the last N and best."""

from medgen.train.checkpoint.retention import prune, remove_stale_temporaries, update_best
from medgen.train.checkpoint.rng import rng_state, set_rng_state
from medgen.train.checkpoint.store import (
    find_checkpoint,
    load_training_state,
    load_weights,
    read_state,
    save_checkpoint,
    step_dirs,
    verify_checkpoint,
)

__all__ = [
    "find_checkpoint",
    "load_training_state",
    "load_weights",
    "prune",
    "read_state",
    "remove_stale_temporaries",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
    "step_dirs",
    "update_best",
    "verify_checkpoint",
]
