"""Errors raised by medgen.train; messages name the file or key and what was expected."""

from __future__ import annotations


class MedGenError(Exception):
    """Base class of training-side errors."""


class ConfigError(MedGenError, ValueError):
    """A configuration key that is unknown, missing, or of the wrong type."""


class CheckpointError(MedGenError):
    """A checkpoint that is missing, incomplete, or not loadable safely."""
