"""The engine's settings: the ``training:`` section of every config (a typed schema).

Every field can be set in YAML or overridden on the command line as ``training.<field>=v``.
"""

from __future__ import annotations

from dataclasses import dataclass

OPTIMIZERS = ("adamw", "adam", "sgd")
LR_SCHEDULES = ("cosine", "constant")
AMP_MODES = ("none", "bf16", "fp16")


@dataclass(frozen=True)
class EngineSettings:
    # length and batches
    steps: int = 1000  # optimizer updates in total (resume continues up to this)
    batch_size: int = 32  # per rank and per micro-batch
    grad_accum: int = 1  # micro-batches per update; effective batch = batch x accum x ranks
    # optimizer
    optimizer: str = "adamw"  # adamw | adam | sgd
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = 0.9  # sgd only
    # learning-rate schedule
    lr_schedule: str = "cosine"  # cosine (linear warm-up, cosine to lr_floor x lr) | constant
    warmup_steps: int = 0
    lr_floor: float = 0.1
    # stability
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping (norm still logged)
    amp: str = "none"  # none | bf16 | fp16 (fp16 uses a GradScaler)
    max_consecutive_skips: int = 20  # non-finite loss/grad updates in a row before stopping
    # EMA
    ema_decay: float = 0.999  # 0 disables EMA
    ema_warmup: bool = True
    # speed
    compile: bool = False  # torch.compile the network passed to the task's loss hook
    # bookkeeping
    log_every: int = 25
    eval_every: int = 0  # 0: only at the last step (if the task has an evaluate hook)
    checkpoint_every: int = 0  # 0: only at the end and on pre-emption
    keep_last: int = 3  # 0 keeps all
    best_metric: str = ""  # an evaluate() key; keeps checkpoints/best pointing at the best
    best_mode: str = "max"  # max | min
    tensorboard: bool = True
    # reproducibility
    seed: int = 0
    deterministic: bool = False  # torch.use_deterministic_algorithms(True)

    def validate(self) -> None:
        from medgen.train.errors import ConfigError

        checks = (
            ("optimizer", self.optimizer in OPTIMIZERS, f"one of {OPTIMIZERS}"),
            ("lr_schedule", self.lr_schedule in LR_SCHEDULES, f"one of {LR_SCHEDULES}"),
            ("amp", self.amp in AMP_MODES, f"one of {AMP_MODES}"),
            ("best_mode", self.best_mode in ("max", "min"), "max or min"),
            ("steps", self.steps > 0, "a positive integer"),
            ("batch_size", self.batch_size > 0, "a positive integer"),
            ("grad_accum", self.grad_accum > 0, "a positive integer"),
            ("log_every", self.log_every > 0, "a positive integer"),
            ("lr", self.lr > 0, "a positive float"),
            ("ema_decay", 0 <= self.ema_decay < 1, "a float in [0, 1)"),
            ("max_consecutive_skips", self.max_consecutive_skips > 0, "a positive integer"),
        )
        for key, ok, expected in checks:
            if not ok:
                value = getattr(self, key)
                raise ConfigError(f"training.{key}: expected {expected}, got {value!r}")
