"""What a task hands the engine: named modules, objectives, evaluators and its own state.

A :class:`TrainingSetup` names every module the task uses. Each :class:`Objective` trains the
parameters of some of them with its own optimizer, LR schedule and (fp16) grad scaler, from a
given step on (a GAN's discriminator phase); modules no objective trains are *frozen*: kept
in eval mode, never copied into the EMA, never written to checkpoints (the task rebuilds
them from their own source, e.g. an autoencoder's run directory). The EMA follows the named
trained modules (all of them unless ``ema_modules`` says otherwise).

An objective's ``loss(nets, batch, step)`` receives ``nets``: a mapping from module name to
the callable to use (``DistributedDataParallel`` and ``torch.compile`` wrappers around
trained modules, the plain module for frozen ones); ``nets.unwrapped(name)`` gives the plain
module (e.g. a discriminator called inside the generator's loss without DDP's hooks).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from medgen.train.engine.settings import OptimizerSettings

Loss = Callable[[Mapping[str, nn.Module], Any, int], tuple[torch.Tensor, dict]]


class Nets(dict):
    """Module name -> callable module (wrapped for training); :meth:`unwrapped` -> plain."""

    def __init__(self, wrapped: Mapping[str, nn.Module], plain: Mapping[str, nn.Module]):
        super().__init__(wrapped)
        self._plain = dict(plain)

    def unwrapped(self, name: str) -> nn.Module:
        """The plain module ``name`` (no DDP / compile wrapper)."""
        return self._plain[name]


@dataclass
class Objective:
    """One optimisation problem: minimise ``loss`` over the parameters of ``modules``.

    ``optim`` overrides the ``training`` section's optimizer settings for this objective;
    ``start_step`` (0-based update index) is when it begins (its LR schedule counts from
    there). ``loss`` must not call ``backward``; its second return value holds log values:
    floats (averaged over the log window) or ``(sum, count)`` pairs (summed, then divided).
    """

    name: str
    modules: tuple[str, ...]
    loss: Loss
    optim: OptimizerSettings | None = None
    start_step: int = 0


@dataclass
class TrainingSetup:
    """Everything the engine trains and evaluates for one task (see the module docstring)."""

    modules: dict[str, nn.Module]
    objectives: list[Objective]
    ema_modules: tuple[str, ...] | None = None
    evaluators: Sequence[Any] = field(default_factory=tuple)
    state: Any = None  # an object with state_dict() / load_state_dict() (e.g. noise RNGs)
    find_unused_parameters: bool = False

    @classmethod
    def single(
        cls,
        model: nn.Module,
        loss: Callable[[nn.Module, Any, int], tuple[torch.Tensor, dict]],
        *,
        evaluators: Sequence[Any] = (),
        state: Any = None,
    ) -> TrainingSetup:
        """One module named ``model`` trained on ``loss(model, batch, step)``."""

        def objective_loss(nets, batch, step):
            return loss(nets["model"], batch, step)

        return cls(
            {"model": model},
            [Objective("main", ("model",), objective_loss)],
            evaluators=evaluators,
            state=state,
        )

    def trained(self) -> tuple[str, ...]:
        """Names of the modules some objective trains, in order of first mention."""
        out: list[str] = []
        for o in self.objectives:
            out += [m for m in o.modules if m not in out]
        return tuple(out)

    def frozen(self) -> tuple[str, ...]:
        """Names of the modules no objective trains."""
        trained = self.trained()
        return tuple(n for n in self.modules if n not in trained)

    def check(self) -> None:
        """Names unique and known, trained modules with parameters, frozen ones without
        gradients; a ValueError says which."""
        if not self.objectives:
            raise ValueError("a training setup needs at least one objective")
        names = [o.name for o in self.objectives]
        if len(set(names)) != len(names):
            raise ValueError(f"objective names must be unique, got {names}")
        for o in self.objectives:
            for m in o.modules:
                if m not in self.modules:
                    raise ValueError(f"objective {o.name!r} trains unknown module {m!r}")
                if not any(p.requires_grad for p in self.modules[m].parameters()):
                    raise ValueError(f"objective {o.name!r}: module {m!r} has no trainable weight")
        for m in self.frozen():
            if any(p.requires_grad for p in self.modules[m].parameters()):
                raise ValueError(
                    f"module {m!r} is trained by no objective but requires gradients; freeze it "
                    "with requires_grad_(False)"
                )
        for m in self.ema_modules or ():
            if m not in self.trained():
                raise ValueError(f"ema_modules names {m!r}, which no objective trains")
