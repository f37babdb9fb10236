"""DiT (Peebles & Xie 2023, "Scalable Diffusion Models with Transformers"; SiT, Ma et al. 2024,
arXiv 2401.08740, uses the same backbone), 2D or 3D, behind the Network protocol.

Patchify (``patch_size`` 1, 2, 4 or 8) -> fixed sin-cos positions of the grid's dimension ->
``depth`` adaLN-Zero blocks conditioned on time + token (+ mode, FiLM size bins) -> adaLN final
layer -> unpatchify. Priors are concatenated to the input channels; a cross-attention context
adds a cross-attention layer to every block. Initialised as the paper (xavier-uniform linears,
zero adaLN modulation, zero final layer: the output is exactly zero at initialisation).
In 2D with tokens it equals diffusers' ``DiTTransformer2DModel`` for the same weights (tested).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from medgen.models.conditioning import Conditioning, FiLM
from medgen.models.networks.transformer.base import PatchTransformer
from medgen.models.networks.transformer.blocks import CrossAttentionLayer, DiTBlock, FinalLayer
from medgen.models.networks.transformer.patch import unpatchify

#: The paper's sizes (Table 1): hidden size, depth, heads.
DIT_VARIANTS = {
    "S": dict(hidden_size=384, depth=12, num_heads=6),
    "B": dict(hidden_size=768, depth=12, num_heads=12),
    "L": dict(hidden_size=1024, depth=24, num_heads=16),
    "XL": dict(hidden_size=1152, depth=28, num_heads=16),
}


def init_dit_weights(module: nn.Module) -> None:
    """DiT's initialisation of every linear, the patch projection and the time MLP (the
    adaLN-Zero modulations and the final layer are zeroed by their own constructors)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    proj = module.patch_embed.proj
    nn.init.xavier_uniform_(proj.weight.view(proj.weight.shape[0], -1))
    nn.init.zeros_(proj.bias)
    if module.embed.time_mlp is not None:
        nn.init.normal_(module.embed.time_mlp[0].weight, std=0.02)
        nn.init.normal_(module.embed.time_mlp[2].weight, std=0.02)
    if module.embed.token_embedding is not None:
        nn.init.normal_(module.embed.token_embedding.embedding.weight, std=0.02)
    if module.embed.mode_embedding is not None:
        nn.init.zeros_(module.embed.mode_embedding.embedding.weight)
    for m in module.modules():  # re-zero what the xavier pass overwrote
        if isinstance(m, DiTBlock | FinalLayer):
            nn.init.zeros_(m.adaLN_modulation[-1].weight)
            nn.init.zeros_(m.adaLN_modulation[-1].bias)
        if isinstance(m, FinalLayer):
            nn.init.zeros_(m.linear.weight)
            nn.init.zeros_(m.linear.bias)
        if isinstance(m, CrossAttentionLayer):
            nn.init.zeros_(m.attn.proj.weight)
            nn.init.zeros_(m.attn.proj.bias)
        if isinstance(m, FiLM):
            nn.init.zeros_(m.mlp[-1].weight)
            nn.init.zeros_(m.mlp[-1].bias)


class DiT(PatchTransformer):
    """A Diffusion Transformer over 2D or 3D patches.

    ``DiT(spatial_dims, in_channels, out_channels=None, *, patch_size=2, hidden_size=384,
    depth=12, num_heads=6, ...)``, or ``DiT.variant("B", spatial_dims, in_channels, ...)`` for
    the paper's S/B/L/XL. Conditioning as :class:`~medgen.models.ConditionedUNet`:
    ``num_tokens`` (+ ``null_token``), ``num_modes``, ``size_bins_dim``, ``prior_channels``
    (+ ``prior_modes``), ``cross_attention_dim``. ``qk_norm`` adds a LayerNorm to each head's
    queries and keys; ``gradient_checkpointing`` recomputes each block in the backward pass;
    ``freq_shift`` is the timestep-frequency convention (1: diffusers, 0: the original code).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int | None = None,
        *,
        patch_size: int = 2,
        hidden_size: int = 384,
        depth: int = 12,
        num_heads: int = 6,
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
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads={num_heads}")
        super().__init__(
            spatial_dims, in_channels, out_channels, patch_size=patch_size,
            hidden_size=hidden_size, num_tokens=num_tokens, null_token=null_token,
            num_modes=num_modes, size_bins_dim=size_bins_dim, prior_channels=prior_channels,
            prior_modes=prior_modes, cross_attention_dim=cross_attention_dim,
            gradient_checkpointing=gradient_checkpointing, freq_shift=freq_shift,
        )  # fmt: skip
        self.depth, self.num_heads = int(depth), int(num_heads)
        self.blocks = nn.ModuleList(
            DiTBlock(
                hidden_size,
                num_heads,
                mlp_ratio=mlp_ratio,
                qk_norm=qk_norm,
                context_dim=cross_attention_dim,
            )
            for _ in range(depth)
        )
        out_features = self.patch_size**spatial_dims * self.out_channels
        self.final_layer = FinalLayer(hidden_size, out_features)
        init_dit_weights(self)

    @classmethod
    def variant(cls, name: str, spatial_dims: int, in_channels: int, *args, **kwargs) -> DiT:
        """The paper's DiT-S/B/L/XL (``name`` "S", "B", "L" or "XL"; "B/2" sets patch 2)."""
        name, _, patch = name.partition("/")
        if name not in DIT_VARIANTS:
            raise ValueError(f"DiT variant must be one of {', '.join(DIT_VARIANTS)}, got {name!r}")
        if patch:
            kwargs.setdefault("patch_size", int(patch))
        return cls(spatial_dims, in_channels, *args, **{**DIT_VARIANTS[name], **kwargs})

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        cond: Conditioning | Mapping | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The prediction for ``x`` (B, in_channels, *spatial) at float32 time ``t`` (B,)."""
        tokens, grid, t, cond = self.prepare(x, t, cond)
        c = self.embed(t, cond, tokens.dtype)
        for block in self.blocks:
            tokens = self._run(block, tokens, c, cond.context)
        tokens = self.final_layer(tokens, c)
        return unpatchify(tokens, grid, self.patch_size, self.out_channels)
