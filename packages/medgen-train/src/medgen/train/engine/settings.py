"""The engine's settings: the ``training:`` section of every config (a typed schema).

Every field can be set in YAML or overridden on the command line as ``training.<field>=v``;
each carries its rule (choices, bounds), checked by :func:`medgen.train.config.validate`
before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from medgen.train.config.schema import setting
from medgen.train.errors import ConfigError

OPTIMIZERS = ("adamw", "adam", "sgd")
LR_SCHEDULES = ("cosine", "constant")
AMP_MODES = ("none", "bf16", "fp16")
WEIGHTS_DTYPES = ("float32", "bfloat16")


@dataclass(frozen=True)
class OptimizerSettings:
    """How one objective's parameters are optimised (the ``training`` keys of the same names
    are the defaults every objective starts from)."""

    optimizer: str = setting("adamw", choices=OPTIMIZERS)
    lr: float = setting(1e-3, gt=0)
    weight_decay: float = setting(0.0, min=0)
    betas: tuple[float, float] = setting((0.9, 0.999), min=0, lt=1)
    momentum: float = setting(0.9, min=0, lt=1)  # sgd only
    lr_schedule: str = setting("cosine", choices=LR_SCHEDULES)
    warmup_steps: int = setting(0, min=0)
    lr_floor: float = setting(0.1, min=0, max=1)  # cosine decays to lr_floor x lr
    grad_clip: float = setting(1.0, min=0)  # max global grad norm; 0 disables clipping


@dataclass(frozen=True)
class EngineSettings(OptimizerSettings):
    """Length, batching, optimisation (the inherited keys are every objective's default),
    precision, EMA, bookkeeping and reproducibility."""

    # length and batches
    steps: int = setting(1000, min=1)  # optimizer updates in total (resume continues up to it)
    batch_size: int = setting(32, min=1)  # per rank and per micro-batch
    grad_accum: int = setting(1, min=1)  # micro-batches per update
    # stability
    amp: str = setting("none", choices=AMP_MODES)  # bf16 autocast, or fp16 + GradScaler
    # "pure weights": the trained networks (and so their gradients and optimizer state) held
    # in bfloat16, no float32 master copy; needs amp=bf16; the EMA copies stay float32
    weights_dtype: str = setting("float32", choices=WEIGHTS_DTYPES)
    max_consecutive_skips: int = setting(20, min=1)  # non-finite updates in a row, then stop
    max_rollbacks: int = setting(3, min=1)  # rolled-back steps in a row, then stop
    snapshot_every: int = setting(1, min=1)  # updates between in-memory rollback snapshots
    # EMA
    ema_decay: float = setting(0.999, min=0, lt=1)  # 0 disables EMA
    ema_warmup: bool = True
    # speed
    compile: bool = False  # torch.compile the trained networks
    # bookkeeping
    log_every: int = setting(25, min=1)
    eval_every: int = setting(0, min=0)  # 0: only at the last step
    checkpoint_every: int = setting(0, min=0)  # 0: at the end and on signals only
    keep_last: int = setting(3, min=0)  # 0 keeps all
    best_metric: str = ""  # an evaluation key; checkpoints/best follows the best checkpoint
    best_mode: str = setting("max", choices=("max", "min"))
    tensorboard: bool = True
    # reproducibility
    seed: int = setting(0, min=0)
    deterministic: bool = False  # torch.use_deterministic_algorithms(True)

    def optimizer_settings(self) -> OptimizerSettings:
        """The optimizer keys of this section as an :class:`OptimizerSettings`."""
        return OptimizerSettings(
            **{n: getattr(self, n) for n in OptimizerSettings.__dataclass_fields__}
        )

    def validate(self) -> None:
        """Cross-field rules (single fields are checked by their :class:`Rule`)."""
        if self.weights_dtype == "bfloat16" and self.amp != "bf16":
            raise ConfigError(
                f"weights_dtype: bfloat16 weights need training.amp=bf16 (autocast feeds them "
                f"the float32 data), got amp={self.amp}"
            )
        if self.warmup_steps >= self.steps and self.lr_schedule == "cosine":
            raise ConfigError(
                f"warmup_steps: {self.warmup_steps} leaves no cosine decay within "
                f"steps={self.steps}; expected fewer warm-up steps than steps"
            )
        if self.best_metric and self.checkpoint_every and self.eval_every:
            if self.checkpoint_every % self.eval_every:
                raise ConfigError(
                    f"checkpoint_every: {self.checkpoint_every} is not a multiple of "
                    f"eval_every={self.eval_every}, so best_metric={self.best_metric!r} would "
                    "never be known at a checkpoint"
                )
