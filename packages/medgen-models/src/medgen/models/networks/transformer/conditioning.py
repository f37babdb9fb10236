"""The conditioning every transformer backbone shares: time, tokens, modes, FiLM size bins.

``ConditionEmbedding`` turns float32 time ``t`` into sinusoidal features (always computed in
float32, never rounded through the weights' dtype) and, by default, an MLP of them (DiT's
``TimestepEmbedder``); the z-bin x class :class:`~medgen.models.conditioning.TokenEmbedding`
and the zero-initialised :class:`~medgen.models.conditioning.ModeEmbedding` are added to it and
:class:`~medgen.models.conditioning.FiLM` of the size-bin vector scales and shifts it. DiT and
HDiT feed the sum to every adaLN-Zero block; U-ViT prepends it as tokens instead. Priors and
cross-attention context do not pass through here: priors are concatenated to the input
channels before patching (:func:`~medgen.models.conditioning.concat_priors`), context is
attended to by each block.
"""

from __future__ import annotations

import torch
from torch import nn

from medgen.models.conditioning import Conditioning, FiLM, ModeEmbedding, TokenEmbedding
from medgen.models.networks.transformer.position import timestep_features


def batch_time(t: torch.Tensor | float, batch: int, device: torch.device) -> torch.Tensor:
    """``t`` as a (batch,) float32 tensor (a scalar or a single time is broadcast)."""
    t = torch.as_tensor(t, device=device).reshape(-1).to(torch.float32)
    if t.numel() == 1 and batch != 1:
        t = t.expand(batch)
    if t.numel() != batch:
        raise ValueError(f"t must hold one time per sample ({batch}), got {t.numel()}")
    return t


class ConditionEmbedding(nn.Module):
    """(t, Conditioning) -> (B, dim): time MLP + token + mode, FiLM-ed by the size bins.

    ``time_mlp=False`` uses the ``dim`` sinusoidal features themselves (U-ViT's default);
    ``freq_shift`` picks the frequency convention (see
    :func:`~medgen.models.networks.transformer.position.timestep_features`).
    """

    def __init__(
        self,
        dim: int,
        *,
        num_tokens: int | None = None,
        null_token: bool = False,
        num_modes: int | None = None,
        size_bins_dim: int | None = None,
        freq_dim: int = 256,
        freq_shift: float = 1.0,
        time_mlp: bool = True,
    ) -> None:
        super().__init__()
        self.dim = int(dim)
        self.freq_dim = int(freq_dim) if time_mlp else self.dim
        self.freq_shift = float(freq_shift)
        self.time_mlp = (
            nn.Sequential(nn.Linear(self.freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
            if time_mlp
            else None
        )
        self.token_embedding = (
            None if num_tokens is None else TokenEmbedding(num_tokens, dim, null_token)
        )
        self.mode_embedding = None if num_modes is None else ModeEmbedding(num_modes, dim)
        self.size_film = None if size_bins_dim is None else FiLM(size_bins_dim, dim)

    @property
    def built(self) -> dict[str, bool]:
        """Which conditioning fields this embedding takes."""
        return {
            "token": self.token_embedding is not None,
            "mode": self.mode_embedding is not None,
            "size_bins": self.size_film is not None,
        }

    def time(self, t: torch.Tensor, cond: Conditioning, dtype: torch.dtype) -> torch.Tensor:
        """The time embedding with the mode added and FiLM applied (no token), (B, dim)."""
        feats = timestep_features(t, self.freq_dim, freq_shift=self.freq_shift)
        emb = feats.to(dtype) if self.time_mlp is None else self.time_mlp(feats.to(dtype))
        if cond.mode is not None:
            emb = emb + self.mode_embedding(cond.mode).to(emb.dtype)
        if cond.size_bins is not None:
            emb = self.size_film(emb, cond.size_bins)
        return emb

    def token(self, cond: Conditioning, dtype: torch.dtype) -> torch.Tensor | None:
        """The (B, dim) token embedding, or None without a token."""
        if cond.token is None:
            return None
        return self.token_embedding(cond.token).to(dtype)

    def forward(self, t: torch.Tensor, cond: Conditioning, dtype: torch.dtype) -> torch.Tensor:
        """The (B, dim) conditioning vector DiT's adaLN reads: time + token (+ mode, FiLM)."""
        emb = self.time(t, Conditioning(), dtype)
        token = self.token(cond, dtype)
        if token is not None:
            emb = emb + token
        if cond.mode is not None:
            emb = emb + self.mode_embedding(cond.mode).to(emb.dtype)
        if cond.size_bins is not None:
            emb = self.size_film(emb, cond.size_bins)
        return emb
