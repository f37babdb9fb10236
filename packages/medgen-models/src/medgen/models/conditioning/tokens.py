"""The z-bin x class token: one integer per sample, ``token = z_bin + n_bins * class_id``.

A 2D slice model conditions on where the slice lies in the volume (its z-bin) and on a class
(e.g. dataset or pathology). Both are folded into one token so a single embedding table holds
every combination. The table size must match the data: :func:`validate_token_count` raises a
ValueError naming the expected and the actual count instead of an opaque index error deep in
``nn.Embedding`` (or, worse, silently unused rows).
"""

from __future__ import annotations

import torch
from torch import nn


def zbin_class_token(z_bin: torch.Tensor, class_id: torch.Tensor, n_bins: int) -> torch.Tensor:
    """``z_bin + n_bins * class_id`` as int64, after checking 0 <= z_bin < n_bins, class_id >= 0."""
    z_bin = torch.as_tensor(z_bin).long()
    class_id = torch.as_tensor(class_id).long()
    if z_bin.numel() and (int(z_bin.min()) < 0 or int(z_bin.max()) >= n_bins):
        raise ValueError(
            f"z_bin must lie in [0, {n_bins}), got {int(z_bin.min())}..{int(z_bin.max())}"
        )
    if class_id.numel() and int(class_id.min()) < 0:
        raise ValueError(f"class_id must be >= 0, got {int(class_id.min())}")
    return z_bin + n_bins * class_id


def validate_token_count(
    num_tokens: int,
    tokens: torch.Tensor | None = None,
    *,
    n_bins: int | None = None,
    n_classes: int | None = None,
) -> None:
    """Check a token table of ``num_tokens`` rows against the data.

    With ``n_bins`` and ``n_classes`` the count must equal their product exactly; with
    ``tokens`` (the data's tokens) every token must lie in [0, num_tokens). Raises ValueError
    saying ``expected ...`` and ``got ...``.
    """
    if (n_bins is None) != (n_classes is None):
        raise ValueError("validate_token_count: give both n_bins and n_classes, or neither")
    if n_bins is not None:
        expected = int(n_bins) * int(n_classes)
        if int(num_tokens) != expected:
            raise ValueError(
                f"token count mismatch: expected {n_bins} z-bins x {n_classes} classes = "
                f"{expected} tokens, got num_tokens={num_tokens}"
            )
    if tokens is not None and tokens.numel():
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0:
            raise ValueError(f"token count mismatch: tokens must be >= 0, got a token {lo}")
        if hi >= num_tokens:
            raise ValueError(
                f"token count mismatch: the data needs at least {hi + 1} tokens (largest token "
                f"{hi}), got num_tokens={num_tokens}"
            )


class TokenEmbedding(nn.Module):
    """``nn.Embedding(num_tokens [+ 1], dim)`` with range-checked lookups.

    ``null_token=True`` appends one learned row at index ``num_tokens`` (:attr:`null_index`)
    for classifier-free guidance's unconditional branch. Initialised like MONAI's class
    embedding (standard normal).
    """

    def __init__(self, num_tokens: int, dim: int, null_token: bool = False) -> None:
        super().__init__()
        if num_tokens < 1:
            raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
        self.num_tokens = int(num_tokens)
        self.null_token = bool(null_token)
        self.embedding = nn.Embedding(self.num_tokens + int(self.null_token), dim)

    @property
    def null_index(self) -> int:
        """The index of the learned null row (``num_tokens``); ValueError without one."""
        if not self.null_token:
            raise ValueError("this TokenEmbedding was built without a null token")
        return self.num_tokens

    def forward(self, token: torch.Tensor) -> torch.Tensor:
        """The (B, dim) embedding rows of ``token``; a ValueError for a token out of range."""
        token = torch.as_tensor(token, device=self.embedding.weight.device).long()
        if token.ndim != 1:
            raise ValueError(f"token must be (B,), got shape {tuple(token.shape)}")
        rows = self.embedding.num_embeddings
        if token.numel() and (int(token.min()) < 0 or int(token.max()) >= rows):
            raise ValueError(
                f"token out of range [0, {rows}): got {int(token.min())}..{int(token.max())}; "
                "the model was built for fewer bins/classes than the data"
            )
        return self.embedding(token)
