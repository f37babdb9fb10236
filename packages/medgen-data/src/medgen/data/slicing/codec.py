"""Lossless bit-packing of binary masks into float32 tensors of a latent's shape, and back.

A mask of shape ``(..., H, W)`` (any number of leading batch dims, values in {0, 1}) is
flattened row-major, its ``H * W`` bits are cut into ``n = prod(latent_shape)`` words of
``k`` bits (the last word zero-padded), and word ``j`` holds bits ``j*k .. j*k+k-1`` with bit
``i`` of the word = mask element ``j*k + i`` (least significant bit first).

Two schemes, because no scheme can do both "32 bits per float" and "only finite floats":

``"int"`` (default, safe)
    each word is stored as the float32 *value* of an integer in ``[0, 2**k)``, ``k <= 24``.
    Every integer up to 2**24 is exact in float32, so the latent is finite, non-negative, and
    survives copies, casts to float64, serialisation, and any arithmetic that returns it
    unchanged. Supported when ``ceil(H * W / n) <= 24``: a 256x256 mask needs at least
    2731 floats, e.g. ``(16, 16, 16)`` (16 bits each) or ``(32, 16, 16)`` (8 bits each).

``"raw32"`` (opt-in, storage only)
    each 32-bit word is the float32 with that *bit pattern* (``int32.view(float32)``). This is
    the only way to fit 65,536 bits into 2,048 floats, i.e. the DC-AE latent shapes
    ``(32, 8, 8)``, ``(128, 4, 4)`` and ``(512, 2, 2)`` of a 256x256 mask, and it is only
    lossless while the tensor is *copied* (clone, ``.to(device)``, safetensors, ``torch.save``),
    never computed on: 1 word in 256 is a NaN/Inf pattern (all exponent bits set), others are
    denormals that flush-to-zero hardware destroys. There are 2**32 - 2**24 + 2 non-NaN float32
    patterns, and 2048 * log2(2**32 - 2**24 + 2) < 65,536, so *no* NaN-free code can map every
    256x256 mask into 2,048 float32 values: the seed's "65,536 bits = 2,048 float32" holds only
    for raw bit patterns.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from medgen.data.errors import DataError

SCHEMES = ("int", "raw32")
MAX_INT_BITS = 24  # float32 has a 24-bit significand: integers <= 2**24 are exact


def bits_per_value(
    mask_shape: Sequence[int], latent_shape: Sequence[int], scheme: str = "int"
) -> int:
    """Bits stored in each float for this pair of shapes; DataError when the scheme cannot."""
    if scheme not in SCHEMES:
        raise DataError(f"unknown mask codec scheme {scheme!r}; known: {', '.join(SCHEMES)}")
    mask_shape, latent_shape = tuple(mask_shape), tuple(latent_shape)
    if (
        len(mask_shape) < 1
        or any(int(s) < 1 for s in mask_shape + latent_shape)
        or not latent_shape
    ):
        raise DataError(
            f"mask shape {mask_shape} and latent shape {latent_shape} must be non-empty"
        )
    n_bits, n_values = math.prod(mask_shape), math.prod(latent_shape)
    k = -(-n_bits // n_values)
    limit = MAX_INT_BITS if scheme == "int" else 32
    if scheme == "raw32":
        k = 32
        if n_bits > 32 * n_values:
            raise DataError(
                f"mask shape {mask_shape} ({n_bits} bits) does not fit latent shape "
                f"{latent_shape} ({n_values} float32 x 32 bits = {32 * n_values} bits)"
            )
    elif k > limit:
        need = -(-n_bits // MAX_INT_BITS)
        raise DataError(
            f"mask shape {mask_shape} ({n_bits} bits) needs {k} bits per float in latent shape "
            f"{latent_shape}; the 'int' scheme stores at most {MAX_INT_BITS} (exact float32 "
            f"integers): use a latent with >= {need} values, or scheme='raw32' for storage only"
        )
    return k


def _as_tensor(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def encode_mask(mask, latent_shape: Sequence[int], scheme: str = "int") -> torch.Tensor:
    """Pack a binary ``(..., H, W)`` mask into a float32 ``(..., *latent_shape)`` tensor.

    The last two dims are the mask; leading dims are kept as batch dims. Values other than
    0 and 1 (or False/True) are a DataError.
    """
    m = _as_tensor(mask)
    if m.dim() < 2:
        raise DataError(f"mask must have at least 2 dims (..., H, W), got shape {tuple(m.shape)}")
    batch, plane = tuple(m.shape[:-2]), tuple(m.shape[-2:])
    latent_shape = tuple(int(s) for s in latent_shape)
    k = bits_per_value(plane, latent_shape, scheme)
    if m.dtype != torch.bool:
        if m.is_floating_point() and not torch.isfinite(m).all():
            raise DataError(f"mask of shape {tuple(m.shape)} holds NaN/Inf: it must be binary")
        bad = (m != 0) & (m != 1)
        if bad.any():
            value = m[bad].flatten()[0].item()
            raise DataError(
                f"mask of shape {tuple(m.shape)} is not binary: found value {value!r} "
                "(expected only 0 and 1)"
            )
    n_values = math.prod(latent_shape)
    bits = m.reshape(*batch, -1).to(torch.int64)
    pad = n_values * k - bits.shape[-1]
    bits = torch.nn.functional.pad(bits, (0, pad)).reshape(*batch, n_values, k)
    weights = torch.ones(k, dtype=torch.int64, device=bits.device) << torch.arange(
        k, device=bits.device
    )
    words = (bits * weights).sum(-1)
    if scheme == "int":
        out = words.to(torch.float32)
    else:
        out = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32).view(torch.float32)
    return out.reshape(*batch, *latent_shape)


def decode_mask(
    latent,
    mask_shape: Sequence[int],
    latent_shape: Sequence[int],
    scheme: str = "int",
    dtype: torch.dtype = torch.uint8,
) -> torch.Tensor:
    """Unpack :func:`encode_mask`'s ``(..., *latent_shape)`` output to a ``(..., H, W)`` mask.

    Values that are not words of the scheme (fractions, negatives, too large, or padding bits
    set) are a DataError: the latent was not produced by :func:`encode_mask` or was altered.
    """
    z = _as_tensor(latent)
    mask_shape = tuple(int(s) for s in mask_shape)
    latent_shape = tuple(int(s) for s in latent_shape)
    if len(mask_shape) != 2:
        raise DataError(f"mask_shape must be (H, W), got {mask_shape}")
    if z.dtype != torch.float32:
        raise DataError(f"latent must be float32, got {z.dtype} (shape {tuple(z.shape)})")
    if tuple(z.shape[z.dim() - len(latent_shape) :]) != latent_shape:
        raise DataError(f"latent of shape {tuple(z.shape)} does not end in {latent_shape}")
    k = bits_per_value(mask_shape, latent_shape, scheme)
    n_bits = math.prod(mask_shape)
    batch = tuple(z.shape[: z.dim() - len(latent_shape)])
    flat = z.reshape(*batch, -1)
    if scheme == "int":
        finite = torch.isfinite(flat)
        words = torch.where(finite, flat, 0.0).to(torch.int64)
        ok = finite & (words.to(torch.float32) == flat) & (words >= 0) & (words < 2**k)
        if not ok.all():
            value = flat[~ok].flatten()[0].item()
            raise DataError(
                f"latent of shape {tuple(z.shape)} holds {value!r}, not an integer in "
                f"[0, 2**{k}): it was not produced by encode_mask(scheme='int') or was altered"
            )
    else:
        words = flat.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    shifts = torch.arange(k, device=words.device)
    bits = ((words.unsqueeze(-1) >> shifts) & 1).reshape(*batch, -1)
    if bits[..., n_bits:].any():
        raise DataError(
            f"latent of shape {tuple(z.shape)} has padding bits set beyond the {mask_shape} "
            "mask: it was not produced by encode_mask for this mask shape"
        )
    return bits[..., :n_bits].reshape(*batch, *mask_shape).to(dtype)
