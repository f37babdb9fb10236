"""``model.kind: uvit``: :class:`medgen.models.UViT` (Bao et al. 2023), 2D or 3D from the data."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from medgen.models import UViT
from medgen.models.networks import UVIT_VARIANTS
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
class UViTConfig:
    """A U-ViT variant (S / S-Deep / M / L: hidden 512/512/768/1024, depth 13/17/17/21, heads
    8/8/12/16); ``hidden_size``, ``depth`` (odd), ``num_heads`` override the variant's."""

    kind: str = "uvit"
    variant: str = setting("S", choices=tuple(UVIT_VARIANTS))
    hidden_size: int | None = setting(None, min=1)
    depth: int | None = setting(None, min=1)
    num_heads: int | None = setting(None, min=1)
    patch_size: int = setting(2, choices=PATCH_SIZES)
    mlp_ratio: float = setting(4.0, gt=0)
    qk_norm: bool = False
    final_conv: bool = True
    time_mlp: bool = False
    gradient_checkpointing: bool = False

    def sizes(self) -> dict:
        """hidden_size, depth, num_heads."""
        return sizes(UVIT_VARIANTS, self.variant, hidden_size=self.hidden_size,
                     depth=self.depth, num_heads=self.num_heads)  # fmt: skip

    def validate(self) -> None:
        """Odd depth; heads divide the hidden size."""
        s = self.sizes()
        if s["depth"] % 2 != 1:
            raise ConfigError(
                f"depth: expected an odd depth (encoder half, middle block, decoder half), "
                f"got {s['depth']}"
            )
        check_heads(s["hidden_size"], s["num_heads"])

    def build(self, spec: NetworkSpec) -> nn.Module:
        """The network for ``spec``."""
        check_divisible("patch_size", self.patch_size, f"patches of {self.patch_size}", spec)
        return UViT(
            spec.spatial_dims, spec.in_channels, spec.out_channels,
            patch_size=self.patch_size, mlp_ratio=self.mlp_ratio, qk_norm=self.qk_norm,
            final_conv=self.final_conv, time_mlp=self.time_mlp,
            gradient_checkpointing=self.gradient_checkpointing,
            **self.sizes(), **conditioning_kwargs(spec),
        )  # fmt: skip
