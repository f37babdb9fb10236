"""``model.kind: unet``: MONAI's ``DiffusionModelUNet`` via :class:`medgen.models.ConditionedUNet`."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from medgen.models import ConditionedUNet
from medgen.train.config.schema import setting
from medgen.train.errors import ConfigError
from medgen.train.tasks.networks.spec import NetworkSpec


@dataclass(frozen=True)
class UNetConfig:
    """MONAI ``DiffusionModelUNet`` widths, depth and attention (2D or 3D from the data);
    ``dropout``: residual dropout before each residual block's second convolution (DDPM / ADM
    placement; 0 off); ``gradient_checkpointing`` recomputes each down / middle / up block in
    the backward pass."""

    kind: str = "unet"
    channels: tuple[int, ...] = (32, 64, 64)
    attention_levels: tuple[bool, ...] = (False, False, True)
    num_res_blocks: int = setting(1, min=1)
    num_head_channels: int = setting(32, min=1)
    norm_num_groups: int = setting(16, min=1)
    dropout: float = setting(0.0, min=0, lt=1)
    gradient_checkpointing: bool = False

    def validate(self) -> None:
        """MONAI's constraints, checked before anything is built."""
        if not self.channels or min(self.channels) < 1:
            raise ConfigError(f"channels: expected positive widths, got {list(self.channels)}")
        if len(self.attention_levels) != len(self.channels):
            raise ConfigError(
                f"attention_levels: {len(self.attention_levels)} values for "
                f"{len(self.channels)} levels of channels {list(self.channels)}"
            )
        bad = [c for c in self.channels if c % self.norm_num_groups]
        if bad:
            raise ConfigError(
                f"channels: {bad} not divisible by norm_num_groups={self.norm_num_groups} "
                f"(channels {list(self.channels)})"
            )
        heads = [
            c
            for c, a in zip(self.channels, self.attention_levels, strict=True)
            if a and c % self.num_head_channels
        ]
        if heads:
            raise ConfigError(
                f"num_head_channels: {self.num_head_channels} does not divide the attention "
                f"level widths {heads}"
            )

    def build(self, spec: NetworkSpec) -> nn.Module:
        """The network for ``spec``."""
        levels = len(self.channels)
        factor = 2 ** (levels - 1)
        bad = [s for s in spec.shape if s % factor]
        if bad:
            raise ConfigError(
                f"model.channels: {levels} levels halve the size {levels - 1} times, so every "
                f"spatial size must be divisible by {factor}; the data are {list(spec.shape)}"
            )
        try:
            return ConditionedUNet(
                spec.spatial_dims,
                spec.in_channels,
                spec.out_channels,
                num_tokens=spec.num_tokens,
                null_token=spec.null_token,
                num_modes=spec.num_modes,
                prior_channels=spec.prior_channels,
                prior_modes=spec.prior_modes or "nearest",
                channels=self.channels,
                attention_levels=self.attention_levels,
                num_res_blocks=self.num_res_blocks,
                num_head_channels=self.num_head_channels,
                norm_num_groups=self.norm_num_groups,
                dropout=self.dropout,
                gradient_checkpointing=self.gradient_checkpointing,
            )
        except ValueError as exc:  # anything MONAI still refuses
            raise ConfigError(f"model: {' '.join(str(exc).split())}") from None
