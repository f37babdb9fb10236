"""HDiT: DiT's adaLN-Zero blocks on a U-shaped token hierarchy, 2D or 3D.

After patching, each encoder level runs its blocks and then merges every 2x2 (2x2x2) block
of neighbouring tokens into one by a linear map of their concatenated features (the sequence
shrinks 4x / 8x per level); the bottleneck runs at the coarsest grid; each decoder level splits
tokens back by a linear map and merges the encoder's tokens of that level through the skip
(``"lerp"``: a learned interpolation, initialised at 0.5, as k-diffusion's HDiT;
``"concat"``: a linear map of both), then runs its blocks. ``level_depths`` has odd length
2k + 1 (k merges); most compute runs on short sequences, so ``patch_size=4`` is affordable in
3D. Inspired by U-DiT (Tian et al. 2024) and Crowson et al.'s HDiT (2024). The output is
exactly zero at initialisation (DiT's zero final layer).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from medgen.models.conditioning import Conditioning
from medgen.models.networks.dit import DIT_VARIANTS, init_dit_weights
from medgen.models.networks.transformer.base import PatchTransformer
from medgen.models.networks.transformer.blocks import DiTBlock, FinalLayer
from medgen.models.networks.transformer.patch import merge_tokens, split_tokens, unpatchify

SKIPS = ("lerp", "concat")


class TokenSplitSkip(nn.Module):
    """Split (B, N, w_in) tokens on a grid into 2^n finer tokens of width ``w_out`` and merge
    them with the encoder's tokens of that level."""

    def __init__(self, spatial_dims: int, w_in: int, w_out: int, skip: str) -> None:
        super().__init__()
        self.proj = nn.Linear(w_in, (2**spatial_dims) * w_out, bias=False)
        self.skip = skip
        if skip == "lerp":
            self.fac = nn.Parameter(torch.full((), 0.5))
        else:
            self.merge = nn.Linear(2 * w_out, w_out)

    def forward(self, x: torch.Tensor, grid: tuple, skip: torch.Tensor) -> torch.Tensor:
        """Tokens on the coarse ``grid`` -> finer tokens merged with ``skip``."""
        x, _ = split_tokens(self.proj(x), grid)
        if self.skip == "lerp":
            return torch.lerp(skip, x, self.fac.to(x.dtype))
        return self.merge(torch.cat([x, skip], dim=-1))


class HDiT(PatchTransformer):
    """A hierarchical DiT (see the module docstring).

    ``level_depths`` (odd length 2k + 1, e.g. (2, 4, 6, 4, 2)): blocks per level, encoder to
    decoder; ``level_widths`` (k + 1 widths, finest first; default ``hidden_size`` at every
    level): token width per resolution level, each a multiple of the head width
    ``hidden_size // num_heads``; the conditioning vector stays ``hidden_size`` wide. Every
    spatial size must be divisible by ``patch_size * 2^k``. Other arguments as :class:`DiT`.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int | None = None,
        *,
        patch_size: int = 4,
        hidden_size: int = 384,
        num_heads: int = 6,
        level_depths: Sequence[int] = (2, 4, 6, 4, 2),
        level_widths: Sequence[int] | None = None,
        skip: str = "lerp",
        mlp_ratio: float = 4.0,
        qk_norm: bool = False,
        num_tokens: int | None = None,
        null_token: bool = False,
        num_modes: int | None = None,
        size_bins_dim: int | None = None,
        prior_channels: int = 0,
        prior_modes: str | Sequence[str] = "nearest",
        cross_attention_dim: int | None = None,
        gradient_checkpointing: bool = False,
        freq_shift: float = 1.0,
    ) -> None:
        depths = [int(d) for d in level_depths]
        if len(depths) % 2 != 1 or min(depths, default=0) < 1:
            raise ValueError(
                f"level_depths must have odd length (encoder, bottleneck, decoder) and "
                f"positive entries, got {depths}"
            )
        k = len(depths) // 2
        widths = [hidden_size] * (k + 1) if level_widths is None else [int(w) for w in level_widths]
        if len(widths) != k + 1:
            raise ValueError(
                f"level_widths: {len(depths)} level_depths need {k + 1} widths (finest to "
                f"coarsest), got {widths}"
            )
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads={num_heads}")
        head_dim = hidden_size // num_heads
        bad = [w for w in widths if w % head_dim]
        if bad:
            raise ValueError(f"level_widths {bad} are not multiples of the head width {head_dim}")
        if skip not in SKIPS:
            raise ValueError(f"skip must be one of {SKIPS}, got {skip!r}")
        super().__init__(
            spatial_dims, in_channels, out_channels, patch_size=patch_size,
            hidden_size=widths[0], num_tokens=num_tokens, null_token=null_token,
            num_modes=num_modes, size_bins_dim=size_bins_dim, prior_channels=prior_channels,
            prior_modes=prior_modes, cross_attention_dim=cross_attention_dim,
            gradient_checkpointing=gradient_checkpointing, freq_shift=freq_shift,
        )  # fmt: skip
        if widths[0] != hidden_size:  # the conditioning keeps hidden_size
            raise ValueError(
                f"level_widths[0] ({widths[0]}) must equal hidden_size ({hidden_size})"
            )
        self.level_depths, self.level_widths, self.levels = tuple(depths), tuple(widths), k

        def stage(width: int, depth: int) -> nn.ModuleList:
            return nn.ModuleList(
                DiTBlock(
                    width,
                    width // head_dim,
                    cond_dim=hidden_size,
                    mlp_ratio=mlp_ratio,
                    qk_norm=qk_norm,
                    context_dim=cross_attention_dim,
                )
                for _ in range(depth)
            )

        n = 2**spatial_dims
        self.down = nn.ModuleList(stage(widths[i], depths[i]) for i in range(k))
        self.merges = nn.ModuleList(
            nn.Linear(n * widths[i], widths[i + 1], bias=False) for i in range(k)
        )
        self.mid = stage(widths[k], depths[k])
        self.splits = nn.ModuleList(
            TokenSplitSkip(spatial_dims, widths[i + 1], widths[i], skip) for i in range(k)
        )
        self.up = nn.ModuleList(stage(widths[i], depths[2 * k - i]) for i in range(k))
        out_features = self.patch_size**spatial_dims * self.out_channels
        self.final_layer = FinalLayer(widths[0], out_features, cond_dim=hidden_size)
        init_dit_weights(self)

    @property
    def input_multiple(self) -> int:
        """The patch size times 2 per merge level."""
        return self.patch_size * 2**self.levels

    @classmethod
    def variant(cls, name: str, spatial_dims: int, in_channels: int, *args, **kwargs) -> HDiT:
        """HDiT with a DiT variant's hidden size and heads ("S", "B", "L", "XL")."""
        if name not in DIT_VARIANTS:
            raise ValueError(f"HDiT variant must be one of {', '.join(DIT_VARIANTS)}, got {name!r}")
        size = {k: v for k, v in DIT_VARIANTS[name].items() if k != "depth"}
        return cls(spatial_dims, in_channels, *args, **{**size, **kwargs})

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        cond: Conditioning | Mapping | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The prediction for ``x`` (B, in_channels, *spatial) at float32 time ``t`` (B,)."""
        tokens, grid, t, cond = self.prepare(x, t, cond)
        c = self.embed(t, cond, tokens.dtype)
        context = cond.context
        skips, grids, g = [], [], grid
        for blocks, merge in zip(self.down, self.merges, strict=True):
            for block in blocks:
                tokens = self._run(block, tokens, c, context)
            skips.append(tokens)
            grids.append(g)
            tokens, g = merge_tokens(tokens, g)
            tokens = merge(tokens)
        for block in self.mid:
            tokens = self._run(block, tokens, c, context)
        for i in reversed(range(self.levels)):
            g = tuple(s // 2 for s in grids[i])
            tokens = self.splits[i](tokens, g, skips[i])
            for block in self.up[i]:
                tokens = self._run(block, tokens, c, context)
        tokens = self.final_layer(tokens, c)
        return unpatchify(tokens, grid, self.patch_size, self.out_channels)
