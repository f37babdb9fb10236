"""Errors raised by medgen.train and the exit codes the CLI maps them to.

Every message names the file, the run directory or the dotted config key, and says what was
expected. Exit codes (documented in ``medgen-train --help``): 0 done, 2 bad input or config
(one line on stderr), 75 pre-empted after a checkpoint (requeue), 130 interrupted by Ctrl-C
after a checkpoint.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_REQUEUE = 75  # EX_TEMPFAIL: "try again", what SLURM job scripts requeue on
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's convention


class MedGenError(Exception):
    """Base class of training-side errors."""


class ConfigError(MedGenError, ValueError):
    """A configuration key that is unknown, missing, of the wrong type or out of range."""


class CheckpointError(MedGenError):
    """A checkpoint that is missing, incomplete, damaged or not loadable safely."""


class RunDirError(MedGenError):
    """A run directory that belongs to another run, is locked, or cannot be written."""


class SamplingError(MedGenError):
    """Sampling produced a non-finite value (named by step and timestep) or cannot start."""
