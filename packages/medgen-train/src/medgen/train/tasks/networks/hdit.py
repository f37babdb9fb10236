"""``model.kind: hdit``: :class:`medgen.models.HDiT`, DiT blocks on a U-shaped token hierarchy."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from medgen.models import HDiT
from medgen.models.networks import DIT_VARIANTS
from medgen.models.networks.hdit import SKIPS
from medgen.train.config.schema import setting
from medgen.train.errors import ConfigError
from medgen.train.tasks.networks.dit import PATCH_SIZES
from medgen.train.tasks.networks.spec import (
    NetworkSpec,
    check_divisible,
    check_heads,
    conditioning_kwargs,
    sizes,
)


@dataclass(frozen=True)
class HDiTConfig:
    """An HDiT with a DiT variant's hidden size and heads (``hidden_size`` / ``num_heads``
    override them); ``level_depths`` (odd length: encoder levels, bottleneck, decoder levels),
    ``level_widths`` (one per resolution level, finest first; empty: ``hidden_size`` at every
    level), ``skip`` (lerp | concat)."""

    kind: str = "hdit"
    variant: str = setting("S", choices=tuple(DIT_VARIANTS))
    hidden_size: int | None = setting(None, min=1)
    num_heads: int | None = setting(None, min=1)
    patch_size: int = setting(4, choices=PATCH_SIZES)
    level_depths: tuple[int, ...] = setting((2, 4, 6, 4, 2), min=1)
    level_widths: tuple[int, ...] = setting((), min=1)
    skip: str = setting("lerp", choices=SKIPS)
    mlp_ratio: float = setting(4.0, gt=0)
    qk_norm: bool = False
    gradient_checkpointing: bool = False

    def sizes(self) -> dict:
        """hidden_size, num_heads."""
        s = sizes(DIT_VARIANTS, self.variant, hidden_size=self.hidden_size,
                  num_heads=self.num_heads)  # fmt: skip
        del s["depth"]
        return s

    def validate(self) -> None:
        """Odd-length depths, one width per level, widths multiples of the head width."""
        depths = list(self.level_depths)
        if len(depths) % 2 != 1:
            raise ConfigError(
                f"level_depths: expected an odd number of levels (encoder, bottleneck, "
                f"decoder), got {depths}"
            )
        s = self.sizes()
        check_heads(s["hidden_size"], s["num_heads"])
        levels = len(depths) // 2 + 1
        widths = list(self.level_widths)
        if widths and len(widths) != levels:
            raise ConfigError(
                f"level_widths: {len(depths)} level_depths need {levels} widths (finest "
                f"first), got {widths}"
            )
        if widths and widths[0] != s["hidden_size"]:
            raise ConfigError(
                f"level_widths: the first width must be the hidden size {s['hidden_size']}, "
                f"got {widths}"
            )
        head = s["hidden_size"] // s["num_heads"]
        bad = [w for w in widths if w % head]
        if bad:
            raise ConfigError(f"level_widths: {bad} are not multiples of the head width {head}")

    def build(self, spec: NetworkSpec) -> nn.Module:
        """The network for ``spec``."""
        merges = len(self.level_depths) // 2
        factor = self.patch_size * 2**merges
        why = f"patches of {self.patch_size} merged 2x {merges} times"
        check_divisible("level_depths", factor, why, spec)
        return HDiT(
            spec.spatial_dims, spec.in_channels, spec.out_channels,
            patch_size=self.patch_size, level_depths=self.level_depths,
            level_widths=self.level_widths or None, skip=self.skip, mlp_ratio=self.mlp_ratio,
            qk_norm=self.qk_norm, gradient_checkpointing=self.gradient_checkpointing,
            **self.sizes(), **conditioning_kwargs(spec),
        )  # fmt: skip
