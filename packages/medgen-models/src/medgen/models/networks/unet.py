"""MONAI's ``DiffusionModelUNet`` wired to MedGen's conditioning (tokens, modes, FiLM, priors)
and to ControlNet residuals, behind the :class:`~medgen.models.networks.Network` protocol."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from monai.networks.nets import DiffusionModelUNet
from monai.networks.nets.diffusion_model_unet import get_timestep_embedding
from torch import nn
from torch.utils.checkpoint import checkpoint

from medgen.models.conditioning import (
    Conditioning,
    FiLM,
    ModeEmbedding,
    TokenEmbedding,
    concat_priors,
    validate_token_count,
)
from medgen.models.conditioning.context import as_conditioning, check_fields
from medgen.models.networks.residual_dropout import add_residual_dropout


class ConditionedUNet(nn.Module):
    """MONAI's ``DiffusionModelUNet`` with every MedGen conditioning, 2D or 3D.

    - ``num_tokens``: z-bin x class token embedding (optionally with a learned null token for
      classifier-free guidance) added to the timestep embedding, as MONAI's
      ``num_class_embeds`` does (equal outputs with the same weights, tested);
    - ``num_modes``: mode embedding (zero-initialised) added to the timestep embedding;
    - ``size_bins_dim``: FiLM of the timestep embedding by a (B, K) size-bin vector, i.e. a
      per-channel scale and shift of the embedding every residual block reads (identity at
      init);
    - ``prior_channels``: priors concatenated to the input channels (resized with
      ``prior_modes``); the network sees ``in_channels + prior_channels`` and predicts
      ``out_channels``;
    - ``cross_attention_dim``: MONAI's cross-attention context;
    - ``dropout``: residual dropout, as DDPM / ADM / diffusers' ``ResnetBlock2D`` place it
      (on the hidden activation before each residual block's second convolution; MONAI's block
      has none): a forward pre-hook, so the state dict keys are MONAI's with or without it
      (:mod:`~medgen.models.networks.residual_dropout`);
    - ``gradient_checkpointing``: recompute each down, middle and up block in the backward
      pass (``torch.utils.checkpoint``, non-reentrant) instead of keeping its activations:
      the same gradients (tested) for less memory and about one more forward pass of time.

    ``forward(x, t, cond)`` follows the :class:`~medgen.models.networks.Network` protocol:
    ``cond`` is a :class:`Conditioning`, a mapping of its fields, a (B,) token tensor or None.
    The forward pass is MONAI's (time embedding, conv_in, down, mid, up, out) with the
    conditioning added between the time embedding and the blocks, and MONAI's ControlNet
    inputs (``down_block_additional_residuals``, ``mid_block_additional_residual``) added
    where ``DiffusionModelUNet.forward`` adds them; without conditioning it equals
    ``DiffusionModelUNet.forward`` exactly (tested). Timesteps enter as float32.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        num_tokens: int | None = None,
        null_token: bool = False,
        num_modes: int | None = None,
        size_bins_dim: int | None = None,
        prior_channels: int = 0,
        prior_modes: str | Sequence[str] = "nearest",
        cross_attention_dim: int | None = None,
        channels: Sequence[int] = (32, 64, 64),
        attention_levels: Sequence[bool] = (False, False, True),
        num_res_blocks: int | Sequence[int] = 1,
        num_head_channels: int = 32,
        norm_num_groups: int = 16,
        dropout: float = 0.0,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.gradient_checkpointing = bool(gradient_checkpointing)
        if prior_channels < 0:
            raise ValueError(f"prior_channels must be >= 0, got {prior_channels}")
        self.prior_channels = int(prior_channels)
        self.prior_modes = prior_modes if isinstance(prior_modes, str) else tuple(prior_modes)
        self.net = DiffusionModelUNet(
            spatial_dims=spatial_dims,
            in_channels=in_channels + self.prior_channels,
            out_channels=out_channels,
            channels=tuple(channels),
            attention_levels=tuple(attention_levels),
            num_res_blocks=num_res_blocks,
            num_head_channels=num_head_channels,
            norm_num_groups=norm_num_groups,
            with_conditioning=cross_attention_dim is not None,
            cross_attention_dim=cross_attention_dim,
        )
        self.dropout = float(dropout)
        self.dropout_blocks = add_residual_dropout(self.net, self.dropout)
        emb_dim = int(channels[0]) * 4  # MONAI's time_embed_dim
        self.emb_dim = emb_dim
        self.token_embedding = (
            None if num_tokens is None else TokenEmbedding(num_tokens, emb_dim, null_token)
        )
        self.mode_embedding = None if num_modes is None else ModeEmbedding(num_modes, emb_dim)
        self.size_film = None if size_bins_dim is None else FiLM(size_bins_dim, emb_dim)

    @property
    def num_tokens(self) -> int | None:
        """Rows of the token table without the null row (None: built without tokens)."""
        return None if self.token_embedding is None else self.token_embedding.num_tokens

    @property
    def num_down_residuals(self) -> int:
        """How many ``down_block_additional_residuals`` :meth:`forward` takes: one per skip
        connection (conv_in's output, then every down block's outputs), as MONAI's ControlNet
        returns them."""
        return sum(len(block.resnets) for block in self.net.up_blocks)

    def validate_tokens(
        self,
        tokens: torch.Tensor | None = None,
        *,
        n_bins: int | None = None,
        n_classes: int | None = None,
    ) -> None:
        """Check the token table against the data (see :func:`validate_token_count`)."""
        if self.token_embedding is None:
            raise ValueError("this ConditionedUNet was built without a token embedding")
        validate_token_count(self.num_tokens, tokens, n_bins=n_bins, n_classes=n_classes)

    def _check_fields(self, cond: Conditioning) -> None:
        built = {
            "token": self.token_embedding is not None,
            "mode": self.mode_embedding is not None,
            "size_bins": self.size_film is not None,
            "priors": self.prior_channels > 0,
            "context": self.net.with_conditioning,
        }  # a ControlNet's control map goes to its branch (ControlledUNet), never here
        check_fields("ConditionedUNet", cond, built)

    def embedding(self, t: torch.Tensor, cond: Conditioning, dtype: torch.dtype) -> torch.Tensor:
        """The conditioned timestep embedding (B, emb_dim) every residual block receives."""
        return conditioned_embedding(self, self.net, t, cond, dtype)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        cond: Conditioning | Mapping | torch.Tensor | None = None,
        *,
        down_block_additional_residuals: Sequence[torch.Tensor] | None = None,
        mid_block_additional_residual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The prediction for ``x`` (B, in_channels, *spatial) at time ``t`` (B,) under ``cond``.

        ``down_block_additional_residuals`` (:attr:`num_down_residuals` tensors, shaped like
        the skip connections) are added to the skip connections after the down blocks, and
        ``mid_block_additional_residual`` to the middle block's output, exactly as MONAI's
        ``DiffusionModelUNet.forward`` does with a ``monai.networks.nets.ControlNet``'s outputs.
        A wrong count or shape is a ValueError naming what was expected.
        """
        cond = as_conditioning(cond)
        self._check_fields(cond)
        extra = self._check_residual_count(down_block_additional_residuals)
        if cond.priors is not None:
            x = concat_priors(x, cond.priors, self.prior_modes, self.prior_channels)
        net = self.net
        emb = self.embedding(torch.as_tensor(t, device=x.device).reshape(-1), cond, x.dtype)
        context = cond.context
        ckpt = self.gradient_checkpointing
        h = net.conv_in(x)
        residuals = [h]
        for block in net.down_blocks:
            h, res = run_block(ckpt, block, hidden_states=h, temb=emb, context=context)
            residuals.extend(res)
        if extra is not None:  # ControlNet: added to every skip connection
            _check_shapes("down_block_additional_residuals", residuals, extra)
            residuals = [r + e for r, e in zip(residuals, extra, strict=True)]
        h = run_block(ckpt, net.middle_block, hidden_states=h, temb=emb, context=context)
        if mid_block_additional_residual is not None:  # ControlNet: added after the middle
            _check_shapes("mid_block_additional_residual", [h], [mid_block_additional_residual])
            h = h + mid_block_additional_residual
        for block in net.up_blocks:
            n = len(block.resnets)
            res, residuals = residuals[-n:], residuals[:-n]
            h = run_block(ckpt, block, hidden_states=h, res_hidden_states_list=res, temb=emb,
                          context=context)  # fmt: skip
        return net.out(h)

    def _check_residual_count(
        self, residuals: Sequence[torch.Tensor] | None
    ) -> list[torch.Tensor] | None:
        if residuals is None:
            return None
        if isinstance(residuals, torch.Tensor):
            raise TypeError(
                "down_block_additional_residuals must be a sequence of tensors (one per skip "
                f"connection, {self.num_down_residuals} here), got a single tensor"
            )
        residuals = list(residuals)
        if len(residuals) != self.num_down_residuals:
            raise ValueError(
                f"down_block_additional_residuals: expected {self.num_down_residuals} tensors "
                f"(one per skip connection), got {len(residuals)}"
            )
        return residuals


def run_block(checkpointed: bool, block: nn.Module, **kwargs):
    """``block(**kwargs)``, recomputed in the backward pass when ``checkpointed`` and autograd
    is recording (non-reentrant ``torch.utils.checkpoint``: nested outputs, kwargs and frozen
    inputs are fine, RNG state is replayed)."""
    if checkpointed and torch.is_grad_enabled():
        return checkpoint(block, use_reentrant=False, **kwargs)
    return block(**kwargs)


def conditioned_embedding(
    owner: nn.Module, net: nn.Module, t: torch.Tensor, cond: Conditioning, dtype: torch.dtype
) -> torch.Tensor:
    """MONAI's timestep embedding of ``net`` (float32 time features, then ``net.time_embed``)
    plus ``owner``'s token and mode embeddings, FiLM-ed by its size bins: what
    :class:`ConditionedUNet` and a ControlNet branch of it feed their residual blocks."""
    t_emb = get_timestep_embedding(t.to(torch.float32), net.block_out_channels[0])
    emb = net.time_embed(t_emb.to(dtype))
    if cond.token is not None:
        emb = emb + owner.token_embedding(cond.token).to(emb.dtype)
    if cond.mode is not None:
        emb = emb + owner.mode_embedding(cond.mode).to(emb.dtype)
    if cond.size_bins is not None:
        emb = owner.size_film(emb, cond.size_bins)
    return emb


def _check_shapes(
    name: str, features: Sequence[torch.Tensor], residuals: Sequence[torch.Tensor]
) -> None:
    for i, (f, r) in enumerate(zip(features, residuals, strict=True)):
        if tuple(r.shape) != tuple(f.shape):
            where = f"[{i}]" if len(features) > 1 else ""
            raise ValueError(
                f"{name}{where}: expected shape {tuple(f.shape)}, got {tuple(r.shape)}"
            )
