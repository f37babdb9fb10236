"""What a conditioned network receives besides (x_t, t): one frozen record per batch."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Conditioning:
    """Per-batch conditioning for :class:`medgen.models.networks.unet.ConditionedUNet`.

    token: (B,) int z-bin x class tokens; mode: (B,) int mode ids; size_bins: (B, K) float
    vector for FiLM; priors: tensors concatenated as channels (a sequence, or a mapping
    name -> tensor); context: (B, N, D) cross-attention context (MONAI ``with_conditioning``);
    control: (B, K, *spatial) control map of a ControlNet branch (label bits, a prior image).
    Every field is optional; the network rejects fields it was not built for and requires
    the ones it was. A Conditioning is what samplers pass as ``cond``.
    """

    token: torch.Tensor | None = None
    mode: torch.Tensor | None = None
    size_bins: torch.Tensor | None = None
    priors: Sequence[torch.Tensor] | Mapping[str, torch.Tensor] | None = None
    context: torch.Tensor | None = None
    control: torch.Tensor | None = None


def as_conditioning(cond: Conditioning | Mapping | torch.Tensor | None) -> Conditioning:
    """A :class:`Conditioning` from a record, a mapping of its fields, a (B,) token tensor or
    None."""
    if cond is None:
        return Conditioning()
    if isinstance(cond, torch.Tensor):
        return Conditioning(token=cond)
    if isinstance(cond, Mapping):
        return Conditioning(**cond)
    return cond


def check_fields(name: str, cond: Conditioning, built: Mapping[str, bool]) -> None:
    """A ValueError for a field given to a network built without it, or missing though the
    network was built with it. Every field of :class:`Conditioning` is checked: one ``built``
    does not name counts as not built."""
    for field in (f.name for f in dataclasses.fields(cond)):
        given, has = getattr(cond, field) is not None, bool(built.get(field, False))
        if given and not has:
            raise ValueError(f"{name} got {field} but was built without it")
        if has and not given:
            raise ValueError(f"{name} was built with {field} but got none")
