"""Classifier-free guidance (Ho & Salimans 2022) as a model wrapper with a learned null token."""

from __future__ import annotations

from collections.abc import Callable

import torch


class ClassifierFreeGuidance:
    """``out = uncond + w (cond - uncond)``, with ``uncond = model(x, t, null)``.

    The unconditional branch replaces every conditioning token with ``null_token``, the index
    of a *learned* embedding the network was trained with (conditioning dropout), never a
    tensor of -1. ``w = 1`` gives the conditional model, ``w = 0`` the unconditional one.
    With ``batched=True`` both branches run in one forward pass on a doubled batch. The
    combination is computed in float32 and returned in the model's output dtype.
    """

    def __init__(
        self,
        model: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
        scale: float,
        null_token: int,
        batched: bool = True,
    ) -> None:
        if isinstance(null_token, bool) or not isinstance(null_token, int) or null_token < 0:
            raise ValueError(f"null_token must be a non-negative token index, got {null_token!r}")
        self.model = model
        self.scale = float(scale)
        self.null_token = null_token
        self.batched = batched

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The guided output at (x, t) for tokens ``cond`` (B,)."""
        if cond is None:
            raise ValueError("classifier-free guidance needs conditioning tokens (cond)")
        if not isinstance(cond, torch.Tensor):
            raise TypeError(
                "classifier-free guidance replaces a (B,) token tensor with the null token; got "
                f"cond of type {type(cond).__name__} (pass the tokens themselves, e.g. "
                "cond.token, to a network that takes a token tensor)"
            )
        null = torch.full_like(cond, self.null_token)
        if self.batched:
            tt = t if t.ndim == 0 else torch.cat([t, t])
            both = self.model(torch.cat([x, x]), tt, torch.cat([cond, null]))
            c, u = both.chunk(2)
        else:
            c, u = self.model(x, t, cond), self.model(x, t, null)
        cd = torch.float64 if c.dtype == torch.float64 else torch.float32
        out = u.to(cd) + self.scale * (c.to(cd) - u.to(cd))
        return out.to(c.dtype)
