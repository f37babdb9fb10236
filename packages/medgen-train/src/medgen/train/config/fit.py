"""The run config: sections ``run``, ``data``, ``model``, ``task``, ``training``, ``sample``.

One schema for every command that trains or samples (``fit``, ``sample``, ``quickstart``):
``model.kind`` and ``task.kind`` choose their section's schema from the registries; every
value is checked (types, ranges, enums, cross-field rules) before anything is written. A
config is a path to a YAML file or the name of a bundled one (``medgen-train config --list``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any

import torch

from medgen.models.strategies.timesteps import SPACINGS
from medgen.train.config.bundled import find_bundled
from medgen.train.config.schema import (
    Kinded,
    apply_overrides,
    from_mapping,
    read_yaml,
    setting,
    validate,
)
from medgen.train.engine.settings import EngineSettings
from medgen.train.errors import ConfigError
from medgen.train.tasks import TASK_CONFIGS, TASKS
from medgen.train.tasks.data import DataSection, with_recipe_out
from medgen.train.tasks.diffusion.config import DiffusionConfig
from medgen.train.tasks.networks import NETWORKS, UNetConfig

BUNDLED = Path(__file__).resolve().parents[1] / "configs"
SAMPLERS = ("auto", "ddim", "ddpm", "euler", "heun")


@dataclass(frozen=True)
class RunSection:
    """Where the run lives and what it runs on."""

    dir: str = "runs/fit"  # run directory (--out wins)
    device: str = "auto"  # auto | cpu | cuda | cuda:N (under torchrun: cuda:LOCAL_RANK)
    threads: int = setting(0, min=0)  # torch threads per process; 0 keeps torch's default

    def validate(self) -> None:
        """The device must parse and exist."""
        if self.device == "auto":
            return
        try:
            device = torch.device(self.device)
        except RuntimeError:
            raise ConfigError(
                f"device: expected auto, cpu, cuda or cuda:N, got {self.device!r}"
            ) from None
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise ConfigError(f"device: {self.device!r} requested, but no CUDA device here")
            if device.index is not None and device.index >= torch.cuda.device_count():
                raise ConfigError(
                    f"device: {self.device!r}, but only {torch.cuda.device_count()} CUDA devices"
                )
        elif device.type != "cpu":
            raise ConfigError(f"device: expected auto, cpu, cuda or cuda:N, got {self.device!r}")

    def torch_device(self) -> torch.device:
        """The device to use."""
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)


@dataclass(frozen=True)
class SampleSection:
    """How ``medgen-train sample`` draws samples by default (its flags override these)."""

    sampler: str = setting("auto", choices=SAMPLERS)  # auto: ddim for DDPM, euler for flow
    steps: int = setting(50, min=1)
    eta: float = setting(0.0, min=0)  # ddim only
    spacing: str = setting("trailing", choices=SPACINGS)  # ddim / ddpm timestep grid
    guidance: float | None = None  # classifier-free guidance weight (needs task.cond_dropout)
    per_token: int = setting(4, min=1)  # samples per z-bin x class (x mode)
    batch_size: int = setting(32, min=1)
    seed: int = setting(0, min=0)
    ema: bool = True  # sample the EMA weights (false: the raw training weights)
    # seed 004's adaptive sampling: a batch stops once every sample's relative update
    # ||x_next - x|| / ||x|| is below this and shrinking (returning its x0 prediction); null: off
    early_stop: float | None = setting(None, gt=0)


@dataclass(frozen=True)
class FitConfig:
    """A training run and its default sampling."""

    run: RunSection = field(default_factory=RunSection)
    data: DataSection = field(default_factory=DataSection)
    model: Annotated[Any, Kinded(NETWORKS, "unet")] = field(default_factory=UNetConfig)
    task: Annotated[Any, Kinded(TASK_CONFIGS, "diffusion")] = field(default_factory=DiffusionConfig)
    training: EngineSettings = field(default_factory=EngineSettings)
    sample: SampleSection = field(default_factory=SampleSection)

    def validate(self) -> None:
        """Rules that span sections: the task's own (e.g. a sampler that fits its strategy)."""
        check = TASKS[self.task.kind].check_run
        if check is not None:
            check(self)


def resolve(config: str | Path) -> Path:
    """A config path, or the bundled config of that name."""
    return find_bundled(config, BUNDLED, "config")


def bundled_names() -> list[str]:
    """Names of the bundled run configs."""
    return sorted(p.stem for p in BUNDLED.glob("*.yaml"))


def load_fit_config(config: str | Path, overrides: list[str] = ()) -> FitConfig:
    """Read, override and validate a run config (file or bundled name)."""
    path = resolve(config)
    try:
        cfg = from_mapping(FitConfig, read_yaml(path))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    cfg = apply_overrides(cfg, list(overrides))
    cfg = replace(cfg, data=with_recipe_out(cfg.data))
    return validate(cfg)
