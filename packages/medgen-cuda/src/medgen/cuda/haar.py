"""Orthonormal Haar wavelet transforms (2D / 3D, single and multi-level) with autograd.

Layout (WDM-3D compatible): for x of shape (B, C, D, H, W), ``haar_dwt(x)`` has shape
(B, 8*C, D/2, H/2, W/2) with channel ``s*C + c`` holding subband ``s`` of input channel ``c``
(subband-major, subband index outer). Subbands, first letter = first spatial axis (D):
``LLL, LLH, LHL, LHH, HLL, HLH, HHL, HHH``, i.e. s = 4*bD + 2*bH + bW with b = 1 for the high
band. 2D: (B, C, H, W) -> (B, 4*C, H/2, W/2) with ``LL, LH, HL, HH``. Per axis the low band is
(x[2k] + x[2k+1]) / sqrt(2) and the high band (x[2k] - x[2k+1]) / sqrt(2) (PyWavelets 'haar',
mode='periodization'), so the transform is orthonormal: energy is preserved and the inverse is
the adjoint. Gradients: the backward of the DWT is the IDWT and vice versa.
"""

from __future__ import annotations

import torch

from . import reference
from ._extension import get_extension, record

__all__ = ["haar_dwt", "haar_dwt_multilevel", "haar_idwt", "haar_idwt_multilevel"]


def _check_out(out: torch.Tensor, like: torch.Tensor, shape: tuple, op: str) -> None:
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"{op}: out must be a torch.Tensor, got {type(out).__name__}")
    if tuple(out.shape) != shape or out.dtype != like.dtype or out.device != like.device:
        raise ValueError(
            f"{op}: out must have shape {shape}, dtype {like.dtype} and device {like.device}; "
            f"got {tuple(out.shape)}, {out.dtype}, {out.device}"
        )
    if not out.is_contiguous():
        raise ValueError(f"{op}: out must be contiguous")
    if out.untyped_storage().data_ptr() == like.untyped_storage().data_ptr():
        raise ValueError(f"{op}: out shares memory with the input; use a separate tensor")
    if torch.is_grad_enabled() and (out.requires_grad or like.requires_grad):
        raise RuntimeError(f"{op}(out=...) does not support autograd; call it without out=")


def _dwt(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    nd = reference.check_haar_input(x, "x", inverse=False)
    if out is not None:
        shape = (x.shape[0], x.shape[1] << nd, *(s // 2 for s in x.shape[2:]))
        _check_out(out, x, shape, "haar_dwt")
    ext = get_extension(x.device.type)
    if ext is not None:
        y = ext.haar_dwt(x, out)
    else:
        y = reference.haar_dwt_impl(x)
        y = y if out is None else out.copy_(y)
    record(ext, x.device.type)
    return y


def _idwt(w: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    nd = reference.check_haar_input(w, "w", inverse=True)
    if out is not None:
        shape = (w.shape[0], w.shape[1] >> nd, *(s * 2 for s in w.shape[2:]))
        _check_out(out, w, shape, "haar_idwt")
    ext = get_extension(w.device.type)
    if ext is not None:
        x = ext.haar_idwt(w, out)
    else:
        x = reference.haar_idwt_impl(w)
        x = x if out is None else out.copy_(x)
    record(ext, w.device.type)
    return x


class _HaarDWT(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return _dwt(x)

    @staticmethod
    def backward(ctx, grad):
        return _HaarIDWT.apply(grad.contiguous())


class _HaarIDWT(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w):
        return _idwt(w)

    @staticmethod
    def backward(ctx, grad):
        return _HaarDWT.apply(grad.contiguous())


def haar_dwt(x: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """Single-level orthonormal Haar DWT: 2D for (B, C, H, W), 3D for (B, C, D, H, W).

    Every spatial size must be even (odd sizes raise ValueError naming the axis); any aspect
    ratio works (depth may exceed height/width). Returns (B, 4*C or 8*C, *spatial/2) in the input
    dtype, subband-major (see the module docstring). float16/bfloat16 compute in float32.

    ``out``: a contiguous tensor of the result's shape, dtype and device, not overlapping ``x``,
    to write into (and return) instead of allocating: for loops over large volumes, where a
    fresh allocation costs page faults that can exceed the transform itself. No autograd.
    """
    if out is not None:
        return _dwt(x, out)
    if torch.is_grad_enabled() and x.requires_grad:
        return _HaarDWT.apply(x)
    return _dwt(x)  # no graph to record: skip the autograd.Function overhead (~20 us)


def haar_idwt(w: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """Inverse (= adjoint) of :func:`haar_dwt`: (B, 4*C | 8*C, ...) -> (B, C, *2*spatial).

    ``out`` as for :func:`haar_dwt`."""
    if out is not None:
        return _idwt(w, out)
    if torch.is_grad_enabled() and w.requires_grad:
        return _HaarIDWT.apply(w)
    return _idwt(w)


def haar_dwt_multilevel(x: torch.Tensor, levels: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """J-level Haar DWT on the low band. Returns ``(low, highs)``.

    ``highs[j]`` holds the 3 (2D) or 7 (3D) detail subbands of level j + 1 (finest first), in the
    same subband-major order without the leading LL/LLL block; ``low`` is the level-J low band.
    Every spatial size must be divisible by 2**levels.
    """
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    low, highs = x, []
    for _ in range(levels):
        c = low.shape[1]
        w = haar_dwt(low)
        low = w[:, :c]
        highs.append(w[:, c:])
    return low, highs


def haar_idwt_multilevel(low: torch.Tensor, highs: list[torch.Tensor]) -> torch.Tensor:
    """Inverse of :func:`haar_dwt_multilevel`."""
    for h in reversed(highs):
        low = haar_idwt(torch.cat((low, h), dim=1))
    return low
