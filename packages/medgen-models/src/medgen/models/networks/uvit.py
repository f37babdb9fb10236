"""U-ViT (Bao et al. 2023, "All are Worth Words: A ViT Backbone for Diffusion Models"), 2D or 3D.

Everything is a token: the time (with the mode added and FiLM of the size bins applied) and
the z-bin x class token are prepended to the patch tokens; pre-LN transformer blocks with no
qkv bias; long skips from each of the ``depth // 2`` first blocks to its mirror in the second
half (``Linear(cat(x, skip))``) around one middle block (odd ``depth``); a LayerNorm, a linear
to patches, and a final 3x3 convolution against patch-boundary artefacts. Patch tokens carry
fixed sin-cos positions of the grid's dimension (the paper learns them for one input size;
fixed ones work for any size divisible by the patch). Initialised as the paper
(trunc-normal 0.02 linears, zero biases). Not zero at initialisation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from medgen.models.conditioning import Conditioning, FiLM
from medgen.models.networks.transformer.base import PatchTransformer
from medgen.models.networks.transformer.blocks import ViTBlock
from medgen.models.networks.transformer.patch import CONV, unpatchify

#: The paper's sizes (Table 1): hidden size, depth, heads.
UVIT_VARIANTS = {
    "S": dict(hidden_size=512, depth=13, num_heads=8),
    "S-Deep": dict(hidden_size=512, depth=17, num_heads=8),
    "M": dict(hidden_size=768, depth=17, num_heads=12),
    "L": dict(hidden_size=1024, depth=21, num_heads=16),
}


class UViT(PatchTransformer):
    """U-ViT over 2D or 3D patches (see the module docstring).

    ``depth`` must be odd; ``qkv_bias`` (False, the paper's), ``final_conv`` (True),
    ``time_mlp`` (False: the time token is the sinusoidal features themselves, as the paper's
    ImageNet models; True: DiT's time MLP). Conditioning arguments as :class:`DiT`;
    ``freq_shift`` defaults to 0 (ADM / U-ViT's ``timestep_embedding``).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int | None = None,
        *,
        patch_size: int = 2,
        hidden_size: int = 512,
        depth: int = 13,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        qk_norm: bool = False,
        final_conv: bool = True,
        time_mlp: bool = False,
        num_tokens: int | None = None,
        null_token: bool = False,
        num_modes: int | None = None,
        size_bins_dim: int | None = None,
        prior_channels: int = 0,
        prior_modes: str | Sequence[str] = "nearest",
        cross_attention_dim: int | None = None,
        gradient_checkpointing: bool = False,
        freq_shift: float = 0.0,
    ) -> None:
        if depth < 1 or depth % 2 != 1:
            raise ValueError(
                f"depth must be odd (encoder half, one middle block, decoder half), got {depth}"
            )
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads={num_heads}")
        super().__init__(
            spatial_dims, in_channels, out_channels, patch_size=patch_size,
            hidden_size=hidden_size, num_tokens=num_tokens, null_token=null_token,
            num_modes=num_modes, size_bins_dim=size_bins_dim, prior_channels=prior_channels,
            prior_modes=prior_modes, cross_attention_dim=cross_attention_dim,
            gradient_checkpointing=gradient_checkpointing, freq_shift=freq_shift,
            time_mlp=time_mlp,
        )  # fmt: skip
        self.depth, self.num_heads = int(depth), int(num_heads)

        def block(skip: bool) -> ViTBlock:
            return ViTBlock(
                hidden_size,
                num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                qk_norm=qk_norm,
                skip=skip,
                context_dim=cross_attention_dim,
            )

        half = depth // 2
        self.in_blocks = nn.ModuleList(block(False) for _ in range(half))
        self.mid_block = block(False)
        self.out_blocks = nn.ModuleList(block(True) for _ in range(half))
        self.norm = nn.LayerNorm(hidden_size)
        self.decoder_pred = nn.Linear(hidden_size, patch_size**spatial_dims * self.out_channels)
        self.final_layer = (
            CONV[spatial_dims](self.out_channels, self.out_channels, 3, padding=1)
            if final_conv
            else None
        )
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, FiLM):  # identity at init
                nn.init.zeros_(m.mlp[-1].weight)
                nn.init.zeros_(m.mlp[-1].bias)

    @classmethod
    def variant(cls, name: str, spatial_dims: int, in_channels: int, *args, **kwargs) -> UViT:
        """The paper's U-ViT-S, S-Deep, M, L ("S/2" sets patch 2)."""
        name, _, patch = name.partition("/")
        if name not in UVIT_VARIANTS:
            raise ValueError(
                f"UViT variant must be one of {', '.join(UVIT_VARIANTS)}, got {name!r}"
            )
        if patch:
            kwargs.setdefault("patch_size", int(patch))
        return cls(spatial_dims, in_channels, *args, **{**UVIT_VARIANTS[name], **kwargs})

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        cond: Conditioning | Mapping | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The prediction for ``x`` (B, in_channels, *spatial) at float32 time ``t`` (B,)."""
        tokens, grid, t, cond = self.prepare(x, t, cond)
        extra = [self.embed.time(t, cond, tokens.dtype)[:, None]]
        token = self.embed.token(cond, tokens.dtype)
        if token is not None:
            extra.append(token[:, None])
        h = torch.cat([*extra, tokens], dim=1)
        context = cond.context
        skips = []
        for block in self.in_blocks:
            h = self._run(block, h, None, context)
            skips.append(h)
        h = self._run(self.mid_block, h, None, context)
        for block in self.out_blocks:
            h = self._run(block, h, skips.pop(), context)
        h = self.decoder_pred(self.norm(h))[:, len(extra) :]
        out = unpatchify(h, grid, self.patch_size, self.out_channels)
        return out if self.final_layer is None else self.final_layer(out)
