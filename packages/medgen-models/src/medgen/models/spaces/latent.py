"""Latent space: diffusion on a (frozen) autoencoder's latents, scaled to unit variance.

The scale factor is measured from data as 1 / std of the raw latents
(:func:`measure_scale_factor`, as Rombach et al. 2022 did for Stable Diffusion's 0.18215) and
applied symmetrically: ``encode`` returns ``autoencoder.encode(x) * scale_factor`` and
``decode`` returns ``autoencoder.decode(z / scale_factor)``. (GenerativeModels issue 212: the
factor was multiplied on the way in but not divided on the way out.) Latents are never clamped.

The factor is stored twice: as a float64 buffer (so it is in the space's ``state_dict`` next to
the autoencoder weights, safetensors-safe) and in :meth:`LatentSpace.config`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from medgen.models.spaces.protocol import check_input


def raw_encode(autoencoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``autoencoder.encode(x)``, taking the first element when it returns a tuple/list.

    MONAI's ``AutoencoderKL.encode`` returns ``(z_mu, z_sigma)``: the first element is the
    posterior mean, the deterministic latent diffusion models are trained on.
    """
    z = autoencoder.encode(x)
    if isinstance(z, (tuple, list)):
        z = z[0]
    if not isinstance(z, torch.Tensor):
        raise TypeError(
            f"autoencoder.encode returned {type(z).__name__}; expected a tensor or a tuple "
            "whose first element is the latent tensor"
        )
    return z


@torch.no_grad()
def measure_scale_factor(
    autoencoder: nn.Module, batches: Iterable[torch.Tensor], max_batches: int | None = None
) -> float:
    """1 / std of ``raw_encode(autoencoder, batch)`` over every element of every batch.

    ``autoencoder`` may also be a :class:`LatentSpace` (its autoencoder is used, unscaled).
    ``batches`` is any iterable of input tensors (map a data loader's dicts to the image tensor
    first). The std is the unbiased one over all latent elements pooled (what
    ``torch.cat(latents).std()`` gives), accumulated in float64 with Chan's parallel update so
    a large mean does not cancel. Raises ValueError for no batches or a zero std.
    """
    if isinstance(autoencoder, LatentSpace):  # measure the raw latents, not scaled ones
        autoencoder = autoencoder.autoencoder
    n, mean, m2 = 0, 0.0, 0.0
    for i, x in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        z = raw_encode(autoencoder, x).detach().to(torch.float64).flatten()
        nb = z.numel()
        if nb == 0:
            continue
        mb = float(z.mean())
        m2b = float(((z - mb) ** 2).sum())
        delta = mb - mean
        total = n + nb
        mean += delta * nb / total
        m2 += m2b + delta * delta * n * nb / total
        n = total
    if n < 2:
        raise ValueError(f"measure_scale_factor: need at least 2 latent elements, got {n}")
    std = math.sqrt(m2 / (n - 1))
    if not std > 0 or not math.isfinite(std):
        raise ValueError(f"measure_scale_factor: latent std is {std}; cannot scale by 1/std")
    return 1.0 / std


class LatentSpace(nn.Module):
    """Wraps any autoencoder with ``encode``/``decode``; ``spatial_dims`` 2 or 3.

    ``latent_channels`` and ``downsample`` (the autoencoder's total spatial reduction) make
    :meth:`latent_shape` arithmetic; without them it runs ``encode`` once on zeros.
    """

    kind = "latent"

    def __init__(
        self,
        autoencoder: nn.Module,
        spatial_dims: int = 2,
        scale_factor: float = 1.0,
        latent_channels: int | None = None,
        downsample: int | None = None,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"LatentSpace: spatial_dims must be 2 or 3, got {spatial_dims}")
        for name in ("encode", "decode"):
            if not callable(getattr(autoencoder, name, None)):
                raise TypeError(f"LatentSpace: the autoencoder has no {name}() method")
        if (latent_channels is None) != (downsample is None):
            raise ValueError("LatentSpace: give both latent_channels and downsample, or neither")
        self.autoencoder = autoencoder
        self.spatial_dims = int(spatial_dims)
        self.latent_channels = None if latent_channels is None else int(latent_channels)
        self.downsample = None if downsample is None else int(downsample)
        self.register_buffer("scale_factor", torch.tensor(0.0, dtype=torch.float64))
        self.set_scale_factor(scale_factor)

    def set_scale_factor(self, value: float) -> None:
        """Set the latent scale factor (finite, > 0), kept in float64."""
        value = float(value)
        if not value > 0 or not math.isfinite(value):
            raise ValueError(f"LatentSpace: scale_factor must be finite and > 0, got {value}")
        self.scale_factor.fill_(value)

    def calibrate(self, batches: Iterable[torch.Tensor], max_batches: int | None = None) -> float:
        """Measure 1/std from ``batches`` (see :func:`measure_scale_factor`), store and return it."""
        value = measure_scale_factor(self.autoencoder, batches, max_batches)
        self.set_scale_factor(value)
        return value

    def _apply(self, fn, *args, **kwargs):
        # model.half()/.to(bfloat16) must not round the stored factor: keep the buffer float64.
        value = self.scale_factor.detach().clone()
        out = super()._apply(fn, *args, **kwargs)
        self.scale_factor = value.to(self.scale_factor.device)
        return out

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The autoencoder's latent of ``x``, times the scale factor."""
        check_input(x.shape, self.spatial_dims, "LatentSpace.encode")
        z = raw_encode(self.autoencoder, x)
        return z * float(self.scale_factor)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The autoencoder's decoding of ``z`` / scale factor."""
        check_input(z.shape, self.spatial_dims, "LatentSpace.decode", "z")
        return self.autoencoder.decode(z / float(self.scale_factor))

    def latent_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        """Shape of ``encode(x)``: computed from ``downsample`` if given, else by a dry run."""
        check_input(input_shape, self.spatial_dims, "LatentSpace.latent_shape", "input_shape")
        b, c, *sizes = (int(s) for s in input_shape)
        if self.downsample is not None:
            for axis, s in enumerate(sizes):
                if s % self.downsample:
                    raise ValueError(
                        f"LatentSpace.latent_shape: spatial axis {axis} has size {s}, not "
                        f"divisible by the autoencoder's downsample factor {self.downsample}"
                    )
            return (b, self.latent_channels, *[s // self.downsample for s in sizes])
        param = next(iter(self.autoencoder.parameters()), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None else torch.float32
        with torch.no_grad():
            z = raw_encode(self.autoencoder, torch.zeros(1, c, *sizes, device=device, dtype=dtype))
        return (b, *z.shape[1:])

    def channel_groups(self, channels: int) -> None:
        """None: an autoencoder mixes the data channels into every latent channel."""
        return None

    def config(self) -> dict:
        """Plain, YAML-safe description (the autoencoder itself is not included)."""
        return {
            "kind": self.kind,
            "spatial_dims": self.spatial_dims,
            "scale_factor": float(self.scale_factor),
            "latent_channels": self.latent_channels,
            "downsample": self.downsample,
        }
