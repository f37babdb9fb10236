"""A trained run as later commands (``sample``, ``report``) see it: the config and data
description stored in one of its checkpoints, which is verified before use."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medgen.train import checkpoint
from medgen.train.config.fit import FitConfig
from medgen.train.config.schema import from_mapping, validate
from medgen.train.config.yaml_io import read_yaml
from medgen.train.errors import CheckpointError, ConfigError
from medgen.train.rundir import read_marker
from medgen.train.tasks.data import DataDescription


@dataclass
class TrainedRun:
    """A run directory, one of its checkpoints, and what that checkpoint was trained with."""

    run_dir: Path
    checkpoint: Path
    step: int
    config: FitConfig
    description: DataDescription

    @classmethod
    def open(cls, run_dir: str | Path, which: str = "latest") -> TrainedRun:
        """The run's checkpoint ``which`` (latest | best | step_N), verified."""
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise CheckpointError(f"{run_dir}: no such run directory")
        marker = read_marker(run_dir)
        if marker is not None and marker.get("kind") != "fit":
            raise CheckpointError(f"{run_dir}: a {marker.get('kind')!r} directory, not a fit run")
        ckpt, notes = checkpoint.find_checkpoint(run_dir, which)
        if ckpt is None:
            why = f" ({'; '.join(notes)})" if notes else ""
            raise CheckpointError(
                f"{run_dir}: no checkpoint to use{why}; train it with medgen-train fit first"
            )
        stored = read_yaml(ckpt / "config.yaml")
        stored.setdefault("run", {}).update(device="auto", threads=0)  # this machine's, not that
        try:
            config = validate(from_mapping(FitConfig, stored))
        except ConfigError as exc:
            raise CheckpointError(f"{ckpt / 'config.yaml'}: {exc}") from None
        data = ckpt / "data.json"
        if not data.is_file():
            raise CheckpointError(f"{data}: missing (not written by medgen-train fit?)")
        description = DataDescription.from_json(data.read_text())
        step = int(checkpoint.read_state(ckpt)["step"])
        return cls(run_dir, ckpt, step, config, description)
