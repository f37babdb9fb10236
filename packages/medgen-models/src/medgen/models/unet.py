"""MONAI's ``DiffusionModelUNet`` wired to MedGen's conditioning (tokens, modes, FiLM, priors)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from monai.networks.nets import DiffusionModelUNet
from monai.networks.nets.diffusion_model_unet import get_timestep_embedding
from torch import nn

from medgen.models.conditioning import (
    Conditioning,
    FiLM,
    ModeEmbedding,
    TokenEmbedding,
    concat_priors,
    validate_token_count,
)


class TokenConditionedUNet(nn.Module):
    """A ``spatial_dims``-generic UNet conditioned on one integer token per sample.

    The token (e.g. ``z_bin + n_bins * class``) indexes MONAI's class embedding, which is added
    to the timestep embedding. Timesteps are passed to the network as float32, never rounded
    through a low-precision dtype.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        num_tokens: int,
        channels: Sequence[int] = (32, 64, 64),
        attention_levels: Sequence[bool] = (False, False, True),
        num_res_blocks: int | Sequence[int] = 1,
        num_head_channels: int = 32,
        norm_num_groups: int = 16,
    ) -> None:
        super().__init__()
        if num_tokens < 1:
            raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
        self.num_tokens = int(num_tokens)
        self.net = DiffusionModelUNet(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=out_channels,
            channels=tuple(channels),
            attention_levels=tuple(attention_levels),
            num_res_blocks=num_res_blocks,
            num_head_channels=num_head_channels,
            norm_num_groups=norm_num_groups,
            num_class_embeds=self.num_tokens,
        )

    def validate_tokens(
        self,
        tokens: torch.Tensor | None = None,
        *,
        n_bins: int | None = None,
        n_classes: int | None = None,
    ) -> None:
        """Check ``num_tokens`` against the data (see :func:`validate_token_count`)."""
        validate_token_count(self.num_tokens, tokens, n_bins=n_bins, n_classes=n_classes)

    def forward(self, x: torch.Tensor, t: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
        if token is None:
            raise ValueError("TokenConditionedUNet needs a token per sample")
        if token.min() < 0 or token.max() >= self.num_tokens:
            raise ValueError(
                f"token out of range [0, {self.num_tokens}): got {int(token.min())}.."
                f"{int(token.max())}; the model was built for fewer bins/classes than the data"
            )
        return self.net(x, t.to(torch.float32), class_labels=token.long())


class ConditionedUNet(nn.Module):
    """MONAI's ``DiffusionModelUNet`` with every MedGen conditioning, 2D or 3D.

    - ``num_tokens``: z-bin x class token embedding (optionally with a learned null token for
      classifier-free guidance) added to the timestep embedding;
    - ``num_modes``: mode embedding (zero-initialised) added to the timestep embedding;
    - ``size_bins_dim``: FiLM of the timestep embedding by a (B, K) size-bin vector, i.e. a
      per-channel scale and shift of the embedding every residual block reads (identity at
      init);
    - ``prior_channels``: priors concatenated to the input channels (resized with
      ``prior_modes``); the network sees ``in_channels + prior_channels`` and predicts
      ``out_channels``;
    - ``cross_attention_dim``: MONAI's cross-attention context.

    ``forward(x, t, cond)`` takes a :class:`Conditioning` (or a (B,) token tensor, as
    :class:`TokenConditionedUNet` does, so samplers' ``model(x, t, cond)`` works unchanged).
    The forward pass is MONAI's (time embedding, conv_in, down, mid, up, out) with the
    conditioning added between the time embedding and the blocks; without conditioning it
    equals ``DiffusionModelUNet.forward`` exactly (tested). Timesteps enter as float32.
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
    ) -> None:
        super().__init__()
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
        emb_dim = int(channels[0]) * 4  # MONAI's time_embed_dim
        self.emb_dim = emb_dim
        self.token_embedding = (
            None if num_tokens is None else TokenEmbedding(num_tokens, emb_dim, null_token)
        )
        self.mode_embedding = None if num_modes is None else ModeEmbedding(num_modes, emb_dim)
        self.size_film = None if size_bins_dim is None else FiLM(size_bins_dim, emb_dim)

    @property
    def num_tokens(self) -> int | None:
        return None if self.token_embedding is None else self.token_embedding.num_tokens

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
        }
        for name, has in built.items():
            given = getattr(cond, name) is not None
            if given and not has:
                raise ValueError(f"ConditionedUNet got {name} but was built without it")
            if has and not given:
                raise ValueError(f"ConditionedUNet was built with {name} but got none")

    def embedding(self, t: torch.Tensor, cond: Conditioning, dtype: torch.dtype) -> torch.Tensor:
        """The conditioned timestep embedding (B, emb_dim) every residual block receives."""
        net = self.net
        t_emb = get_timestep_embedding(t.to(torch.float32), net.block_out_channels[0])
        emb = net.time_embed(t_emb.to(dtype))
        if cond.token is not None:
            emb = emb + self.token_embedding(cond.token).to(emb.dtype)
        if cond.mode is not None:
            emb = emb + self.mode_embedding(cond.mode).to(emb.dtype)
        if cond.size_bins is not None:
            emb = self.size_film(emb, cond.size_bins)
        return emb

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        cond: Conditioning | torch.Tensor | None = None,
    ) -> torch.Tensor:
        if cond is None:
            cond = Conditioning()
        elif isinstance(cond, torch.Tensor):
            cond = Conditioning(token=cond)
        elif isinstance(cond, Mapping):
            cond = Conditioning(**cond)
        self._check_fields(cond)
        if cond.priors is not None:
            x = concat_priors(x, cond.priors, self.prior_modes, self.prior_channels)
        net = self.net
        emb = self.embedding(torch.as_tensor(t, device=x.device).reshape(-1), cond, x.dtype)
        context = cond.context
        h = net.conv_in(x)
        residuals = [h]
        for block in net.down_blocks:
            h, res = block(hidden_states=h, temb=emb, context=context)
            residuals.extend(res)
        h = net.middle_block(hidden_states=h, temb=emb, context=context)
        for block in net.up_blocks:
            n = len(block.resnets)
            res, residuals = residuals[-n:], residuals[:-n]
            h = block(hidden_states=h, res_hidden_states_list=res, temb=emb, context=context)
        return net.out(h)
