"""``model.kind: dit``: :class:`medgen.models.DiT` (Peebles & Xie 2023), 2D or 3D from the data."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from medgen.models import DiT
from medgen.models.networks import DIT_VARIANTS
from medgen.train.config.schema import setting
from medgen.train.tasks.networks.spec import (
    NetworkSpec,
    check_divisible,
    check_heads,
    conditioning_kwargs,
    sizes,
)

PATCH_SIZES = (1, 2, 4, 8)


@dataclass(frozen=True)
class DiTConfig:
    """A DiT variant (S/B/L/XL: hidden 384/768/1024/1152, depth 12/12/24/28, heads
    6/12/16/16); ``hidden_size``, ``depth``, ``num_heads`` override the variant's."""

    kind: str = "dit"
    variant: str = setting("S", choices=tuple(DIT_VARIANTS))
    hidden_size: int | None = setting(None, min=1)
    depth: int | None = setting(None, min=1)
    num_heads: int | None = setting(None, min=1)
    patch_size: int = setting(2, choices=PATCH_SIZES)
    mlp_ratio: float = setting(4.0, gt=0)
    qk_norm: bool = False
    gradient_checkpointing: bool = False

    def sizes(self) -> dict:
        """hidden_size, depth, num_heads."""
        return sizes(DIT_VARIANTS, self.variant, hidden_size=self.hidden_size,
                     depth=self.depth, num_heads=self.num_heads)  # fmt: skip

    def validate(self) -> None:
        """Heads must divide the hidden size."""
        s = self.sizes()
        check_heads(s["hidden_size"], s["num_heads"])

    def build(self, spec: NetworkSpec) -> nn.Module:
        """The network for ``spec``."""
        check_divisible("patch_size", self.patch_size, f"patches of {self.patch_size}", spec)
        return DiT(
            spec.spatial_dims, spec.in_channels, spec.out_channels,
            patch_size=self.patch_size, mlp_ratio=self.mlp_ratio, qk_norm=self.qk_norm,
            gradient_checkpointing=self.gradient_checkpointing,
            **self.sizes(), **conditioning_kwargs(spec),
        )  # fmt: skip
