"""The task registry: ``task.kind`` -> the task's config schema and its builders.

A task is registered once, by name, with the dataclass of its ``task:`` section, a
``build(context)`` that returns the :class:`medgen.train.engine.TrainingSetup` (modules,
objectives, evaluators, state) for the data at hand, and optionally a ``generator(config,
description, device)`` that rebuilds the trained model for ``medgen-train sample`` and a
``check_run(config)`` for rules that tie its section to the others (``sample``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from medgen.train.engine.distributed import DistContext


@dataclass
class BuildContext:
    """What a task's builder receives."""

    config: Any  # the FitConfig
    description: Any  # the DataDescription of the training data
    train_dataset: Any
    eval_dataset: Any | None
    device: torch.device
    dist: DistContext


@dataclass(frozen=True)
class TaskSpec:
    """A registered task."""

    kind: str
    config: type
    build: Callable[[BuildContext], Any]  # -> TrainingSetup
    generator: Callable[..., Any] | None = None  # (config, description, device) -> generator
    check_run: Callable[[Any], None] | None = None  # rules between task and other sections


TASKS: dict[str, TaskSpec] = {}
TASK_CONFIGS: dict[str, type] = {}  # kind -> section dataclass (what `Kinded` looks up)


def register(spec: TaskSpec) -> TaskSpec:
    """Add ``spec`` under ``spec.kind``; a second registration of a kind is an error."""
    if spec.kind in TASKS:
        raise ValueError(f"task kind {spec.kind!r} is registered twice")
    TASKS[spec.kind] = spec
    TASK_CONFIGS[spec.kind] = spec.config
    return spec
