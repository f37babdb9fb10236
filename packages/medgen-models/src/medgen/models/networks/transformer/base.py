"""What DiT, HDiT and U-ViT share: input checks, priors, patching, position embedding, the
conditioning embedding and gradient checkpointing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from medgen.models.conditioning import Conditioning, concat_priors
from medgen.models.conditioning.context import as_conditioning, check_fields
from medgen.models.networks.transformer.conditioning import ConditionEmbedding, batch_time
from medgen.models.networks.transformer.patch import PatchEmbed, check_input
from medgen.models.networks.transformer.position import sincos_position_embedding


class PatchTransformer(nn.Module):
    """Base of the patch transformers (not a network on its own).

    Subclasses build their blocks and implement ``_tokens_forward``; this class handles
    ``forward(x, t, cond)``'s checks, priors, patch + position embedding and conditioning.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int | None,
        *,
        patch_size: int,
        hidden_size: int,
        num_tokens: int | None,
        null_token: bool,
        num_modes: int | None,
        size_bins_dim: int | None,
        prior_channels: int,
        prior_modes: str | Sequence[str],
        cross_attention_dim: int | None,
        gradient_checkpointing: bool,
        freq_shift: float,
        time_mlp: bool = True,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        if prior_channels < 0:
            raise ValueError(f"prior_channels must be >= 0, got {prior_channels}")
        if patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {patch_size}")
        self.spatial_dims = int(spatial_dims)
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels or in_channels)
        self.patch_size = int(patch_size)
        self.hidden_size = int(hidden_size)
        self.prior_channels = int(prior_channels)
        self.prior_modes = prior_modes if isinstance(prior_modes, str) else tuple(prior_modes)
        self.cross_attention_dim = cross_attention_dim
        self.gradient_checkpointing = bool(gradient_checkpointing)
        self.embed = ConditionEmbedding(
            hidden_size,
            num_tokens=num_tokens,
            null_token=null_token,
            num_modes=num_modes,
            size_bins_dim=size_bins_dim,
            freq_shift=freq_shift,
            time_mlp=time_mlp,
        )
        self.patch_embed = PatchEmbed(
            spatial_dims, self.in_channels + self.prior_channels, hidden_size, patch_size
        )
        self._pos: dict = {}

    @property
    def num_tokens(self) -> int | None:
        """Rows of the token table without the null row (None: built without tokens)."""
        emb = self.embed.token_embedding
        return None if emb is None else emb.num_tokens

    @property
    def input_multiple(self) -> int:
        """Every spatial size of the input must be a multiple of this."""
        return self.patch_size

    def position_embedding(self, grid: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """(1, N, hidden) sin-cos embedding of ``grid`` in ``like``'s dtype and device."""
        key = (grid, like.device, like.dtype)
        pos = self._pos.get(key)
        if pos is None:
            pos = sincos_position_embedding(self.hidden_size, grid)[None]
            pos = pos.to(device=like.device, dtype=like.dtype)
            self._pos = {key: pos}  # one grid at a time: no growth over many shapes
        return pos

    def _run(self, block: nn.Module, *args: torch.Tensor | None) -> torch.Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def prepare(
        self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning | Mapping | torch.Tensor | None
    ) -> tuple[torch.Tensor, tuple[int, ...], torch.Tensor, Conditioning]:
        """(tokens with positions (B, N, hidden), grid, (B,) float32 t, Conditioning)."""
        name = type(self).__name__
        cond = as_conditioning(cond)
        built = dict(self.embed.built)
        built["priors"] = self.prior_channels > 0
        built["context"] = self.cross_attention_dim is not None
        check_fields(name, cond, built)
        why = (
            "the patch size"
            if self.input_multiple == self.patch_size
            else ("the patch size times 2 per merge level")
        )
        check_input(name, x, self.spatial_dims, self.in_channels, self.input_multiple, why)
        if cond.context is not None:
            ctx = cond.context
            if (
                ctx.ndim != 3
                or ctx.shape[0] != x.shape[0]
                or ctx.shape[2] != self.cross_attention_dim
            ):
                raise ValueError(
                    f"{name}: context must be (B={x.shape[0]}, M, {self.cross_attention_dim}), "
                    f"got {tuple(ctx.shape)}"
                )
        if cond.priors is not None:
            x = concat_priors(x, cond.priors, self.prior_modes, self.prior_channels)
        tokens, grid = self.patch_embed(x)
        tokens = tokens + self.position_embedding(grid, tokens)
        return tokens, grid, batch_time(t, x.shape[0], x.device), cond
