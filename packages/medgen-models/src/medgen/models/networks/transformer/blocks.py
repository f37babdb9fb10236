"""Transformer blocks: attention through ``scaled_dot_product_attention``, the adaLN-Zero DiT
block, the pre-LN U-ViT block and DiT's final layer.

Attention is multi-head with fused qkv (``qkv_bias``), optional qk-norm (a LayerNorm over each
head's queries and keys, as SiT / ViT-22B) and optional cross-attention to a (B, M, context_dim)
context. ``F.scaled_dot_product_attention`` picks the flash / memory-efficient kernels where the
device has them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x * (1 + scale) + shift`` with (B, D) shift/scale broadcast over the tokens."""
    return x * (1 + scale[:, None]) + shift[:, None]


class Attention(nn.Module):
    """Multi-head self-attention (``context_dim=None``) or cross-attention to a context."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        qkv_bias: bool = True,
        qk_norm: bool = False,
        context_dim: int | None = None,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by num_heads={num_heads}")
        self.num_heads, self.head_dim = int(num_heads), dim // num_heads
        self.cross = context_dim is not None
        if self.cross:
            self.q = nn.Linear(dim, dim, bias=qkv_bias)
            self.kv = nn.Linear(context_dim, 2 * dim, bias=qkv_bias)
        else:
            self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.q_norm = nn.LayerNorm(self.head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def _heads(self, h: torch.Tensor) -> torch.Tensor:
        b, n, _ = h.shape
        return h.reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N, dim) -> (B, N, dim)."""
        if self.cross:
            q = self.q(x)
            k, v = self.kv(context.to(x.dtype)).chunk(2, dim=-1)
        else:
            q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k, v = self._heads(q), self._heads(k), self._heads(v)
        q, k = self.q_norm(q), self.k_norm(k)
        h = F.scaled_dot_product_attention(q, k, v)
        return self.proj(h.transpose(1, 2).reshape(x.shape))


class Mlp(nn.Module):
    """Linear -> GELU -> Linear (``approximate="tanh"`` is DiT's, ``"none"`` U-ViT's)."""

    def __init__(self, dim: int, hidden: int, approximate: str = "tanh") -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate=approximate)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, dim) -> (B, N, dim)."""
        return self.fc2(self.act(self.fc1(x)))


class CrossAttentionLayer(nn.Module):
    """``x + attn(LN(x), context)``; the output projection starts at zero (identity at init)."""

    def __init__(self, dim: int, num_heads: int, context_dim: int, qk_norm: bool) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qk_norm=qk_norm, context_dim=context_dim)
        nn.init.zeros_(self.attn.proj.weight)
        nn.init.zeros_(self.attn.proj.bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """(B, N, dim) tokens attending to the (B, M, context_dim) context."""
        return x + self.attn(self.norm(x), context)


class DiTBlock(nn.Module):
    """The adaLN-Zero block (Peebles & Xie 2023, Fig. 3): shift/scale/gate of the attention and
    MLP branches regressed from the conditioning vector ``c`` (width ``cond_dim``), the
    modulation zero-initialised so the block starts as the identity."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        cond_dim: int | None = None,
        mlp_ratio: float = 4.0,
        qk_norm: bool = False,
        context_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias=True, qk_norm=qk_norm)
        self.cross = (
            None
            if context_dim is None
            else CrossAttentionLayer(dim, num_heads, context_dim, qk_norm)
        )
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), approximate="tanh")
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim or dim, 6 * dim))
        nn.init.zeros_(self.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.adaLN_modulation[-1].bias)

    def forward(
        self, x: torch.Tensor, c: torch.Tensor, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, N, dim) tokens under the (B, cond_dim) conditioning vector ``c``."""
        mod = self.adaLN_modulation(c).chunk(6, dim=1)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod
        x = x + gate_msa[:, None] * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        if self.cross is not None:
            x = self.cross(x, context)
        return x + gate_mlp[:, None] * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    """DiT's output head: adaLN (shift, scale) + LayerNorm + Linear, all zero-initialised so
    the network predicts exactly zero at initialisation."""

    def __init__(self, dim: int, out_features: int, cond_dim: int | None = None) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim or dim, 2 * dim))
        self.linear = nn.Linear(dim, out_features)
        for layer in (self.adaLN_modulation[-1], self.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """(B, N, dim) tokens -> (B, N, out_features)."""
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm(x), shift, scale))


class ViTBlock(nn.Module):
    """U-ViT's pre-LN block: ``x = x + attn(LN(x)); x = x + mlp(LN(x))``, with an optional long
    skip merged first by ``Linear(cat(x, skip))`` and an optional cross-attention layer."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        qk_norm: bool = False,
        skip: bool = False,
        context_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.skip_linear = nn.Linear(2 * dim, dim) if skip else None
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, qk_norm=qk_norm)
        self.cross = (
            None
            if context_dim is None
            else CrossAttentionLayer(dim, num_heads, context_dim, qk_norm)
        )
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), approximate="none")

    def forward(
        self,
        x: torch.Tensor,
        skip: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, N, dim) tokens, merged with the long ``skip`` first if built with one."""
        if self.skip_linear is not None:
            x = self.skip_linear(torch.cat([x, skip], dim=-1))
        x = x + self.attn(self.norm1(x))
        if self.cross is not None:
            x = self.cross(x, context)
        return x + self.mlp(self.norm2(x))
