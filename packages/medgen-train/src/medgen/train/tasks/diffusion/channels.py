"""Which tensors a diffusion model generates and is given, by channel name.

The data offer the cache's image channels (its modalities, or ``image`` when each item is one
modality with a mode id) and, when the cache has masks, ``mask``: the lesion mask as a channel
(label > 0 -> 1, else -1). ``image`` in ``generate`` / ``priors`` stands for every image
channel. :class:`ChannelLayout` turns a batch into the generated tensor x0 (B, C, *spatial) in
[-1, 1] and the prior tensors, and knows which channels of a space's latent hold which data
channel (for per-channel losses). A ControlNet run adds ``control`` channels: the maps its
control branch sees (``mask``, ``labels``: the integer label map as bit channels, or image
channels). A pairs cache (thin volumes and their thick stacks) offers ``thick`` as a prior: the
thick stack interpolated onto the thin grid (``thick_<modality>`` per channel when there are
several; ``thick`` stands for all of them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from medgen.models.networks.controlnet import label_bits
from medgen.train.errors import ConfigError


def thick_names(channels) -> list[str]:
    """The prior channels a pairs cache's thick stack offers: ``thick``, or one per modality."""
    return ["thick"] if len(channels) == 1 else [f"thick_{c}" for c in channels]


def _expand(
    names: tuple[str, ...], channels: list[str], has_mask: bool, key: str, extra=(), thick=()
) -> list[str]:
    available = list(channels) + (["mask", *extra] if has_mask else []) + list(thick)
    out: list[str] = []
    for name in names:
        if name == "image" and "image" not in channels:
            out += list(channels)
        elif name == "thick" and len(thick) > 1:
            out += list(thick)
        elif name in available:
            out.append(name)
        else:
            raise ConfigError(
                f"task.{key}: channel {name!r} is not in the data; available: "
                f"{', '.join(['image', *available]) if 'image' not in available else ', '.join(available)}"
            )
    if len(set(out)) != len(out):
        raise ConfigError(f"task.{key}: {list(names)} names a channel twice")
    return out


@dataclass(frozen=True)
class ChannelLayout:
    """The generated and the prior channels, by name, and where each comes from."""

    generate: tuple[str, ...]
    priors: tuple[str, ...]
    image_channels: tuple[str, ...]  # the data's image channel names, in order
    control: tuple[str, ...] = ()  # a ControlNet branch's maps ("labels": label_bits channels)
    label_bits: int = 1  # bit channels of "labels"

    @classmethod
    def from_config(
        cls, generate, priors, channels: list[str], has_mask: bool, pairs: bool = False
    ) -> ChannelLayout:
        """Expand ``image`` (and ``thick``) and check every name against the data (``pairs``:
        a pairs cache, whose thick stack is a possible prior)."""
        gen = _expand(tuple(generate), channels, has_mask, "generate")
        thick = thick_names(channels) if pairs else []
        pri = _expand(tuple(priors), channels, has_mask, "priors", thick=thick)
        both = sorted(set(gen) & set(pri))
        if both:
            raise ConfigError(f"task.priors: {both} also generated")
        return cls(tuple(gen), tuple(pri), tuple(channels))

    def with_control(self, names, has_mask: bool, label_bits: int) -> ChannelLayout:
        """This layout plus the control maps ``names`` (checked against the data)."""
        control = _expand(tuple(names), list(self.image_channels), has_mask, "control", ("labels",))
        if not control:
            raise ConfigError("task.control: name at least one channel for the control branch")
        return ChannelLayout(
            self.generate, self.priors, self.image_channels, tuple(control), label_bits
        )

    def control_channels(self) -> int:
        """Channels of :meth:`control_tensor`."""
        return sum(self.label_bits if n == "labels" else 1 for n in self.control)

    def control_tensor(self, batch: dict) -> torch.Tensor:
        """The control maps of ``batch`` (B, :meth:`control_channels`, *spatial)."""
        parts = []
        for name in self.control:
            if name == "labels":
                parts.append(label_bits(batch["mask"], self.label_bits))
            else:
                parts.append(self._take(batch, (name,)))
        return torch.cat(parts, dim=1)

    def _take(self, batch: dict, names: tuple[str, ...]) -> torch.Tensor:
        parts = []
        for name in names:
            if name == "mask":
                parts.append((batch["mask"] > 0).float() * 2 - 1)
            elif name.startswith("thick"):
                i = thick_names(self.image_channels).index(name)
                parts.append(batch["thick"][:, i : i + 1].float())
            else:
                i = self.image_channels.index(name)
                parts.append(batch["image"][:, i : i + 1].float())
        return torch.cat(parts, dim=1)

    def x0(self, batch: dict) -> torch.Tensor:
        """The generated channels of ``batch`` (B, C, *spatial) in [-1, 1]."""
        return self._take(batch, self.generate)

    def prior_tensors(self, batch: dict) -> list[torch.Tensor]:
        """One (B, 1, *spatial) tensor per prior channel."""
        return [self._take(batch, (name,)) for name in self.priors]

    def prior_modes(self) -> list[str]:
        """Resize mode per prior: nearest for masks, linear for images."""
        return ["nearest" if n == "mask" else "linear" for n in self.priors]

    def image_indices(self) -> list[int]:
        """Positions of image channels among the generated (all of them if none is)."""
        idx = [i for i, n in enumerate(self.generate) if n != "mask"]
        return idx or list(range(len(self.generate)))

    def latent_groups(self, space) -> dict[str, list[int]]:
        """Generated channel name -> the channels of ``space``'s encoding that hold it ({} when
        the space mixes channels: then only the total loss is logged)."""
        groups = space.channel_groups(len(self.generate))
        return {} if groups is None else dict(zip(self.generate, groups, strict=True))
