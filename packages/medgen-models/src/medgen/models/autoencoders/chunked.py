"""Chunked encode / decode of large volumes along one axis, and MONAI's sliding window.

:func:`chunked_decode` splits a latent into ``num_splits`` contiguous chunks along one spatial
axis (MAISI's ``num_splits`` idea, applied to the whole decoder), gives each ``overlap``
latent voxels of context on both sides, decodes it and keeps only the part that belongs to the
chunk. The result is written into one preallocated output, so peak memory is about the output
plus one chunk's activations instead of the whole volume's activations.

Exactness. Where every output voxel depends only on latent voxels within ``r`` of its own
position along the axis (a purely convolutional decoder: ``r`` is its receptive-field radius
in latent voxels), ``overlap >= r`` gives the unsplit result up to float rounding (1e-5 is
tested). :func:`required_overlap` measures ``r`` by autograd: it decodes a probe latent,
back-propagates from the output voxels of the probe's central latent row and returns the
farthest latent row with a non-zero gradient; ``None`` when the gradient reaches the probe's
ends (GroupNorm, attention: every output depends on the whole volume, so chunks differ from
the unsplit decode by an amount that depends on the data; see the package README for the
figures measured). The same holds for :func:`chunked_encode` with input chunks aligned to
multiples of ``downsample``.

:func:`sliding_window_decode` runs MONAI's ``SlidingWindowInferer`` over the latent (patches
blended with Gaussian or constant weights): no exactness claim, for comparison.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch
from monai.inferers import SlidingWindowInferer

Fn = Callable[[torch.Tensor], torch.Tensor]


def chunk_bounds(n: int, num_splits: int) -> list[tuple[int, int]]:
    """``num_splits`` contiguous ``[start, stop)`` ranges covering ``range(n)``, sizes within 1."""
    if not 1 <= num_splits <= n:
        raise ValueError(
            f"num_splits must be in [1, {n}] (the axis has {n} voxels), got {num_splits}"
        )
    edges = [i * n // num_splits for i in range(num_splits + 1)]
    return list(itertools.pairwise(edges))


def _dim(t: torch.Tensor, axis: int, who: str) -> int:
    spatial = t.ndim - 2
    if spatial < 1 or not -spatial <= axis < spatial:
        raise ValueError(
            f"{who}: axis must index one of the {spatial} spatial axes of a tensor of shape "
            f"{tuple(t.shape)} (0 = first spatial axis), got {axis}"
        )
    return 2 + axis % spatial


def _check(num_splits: int, overlap: int, downsample: int, who: str) -> None:
    if overlap < 0 or downsample < 1 or num_splits < 1:
        raise ValueError(
            f"{who}: need num_splits >= 1, overlap >= 0 and downsample >= 1, got "
            f"num_splits={num_splits}, overlap={overlap}, downsample={downsample}"
        )


def _run_chunks(
    fn: Fn,
    src: torch.Tensor,
    dim: int,
    bounds,
    overlap: int,
    scale_in: int,
    scale_out: float,
    n: int,
    who: str,
) -> torch.Tensor:
    """Apply ``fn`` chunk by chunk (chunk units: ``n`` positions) and stitch the centres."""
    out = None
    for a, b in bounds:
        lo, hi = max(0, a - overlap), min(n, b + overlap)
        y = fn(src.narrow(dim, lo * scale_in, (hi - lo) * scale_in))
        expected = round((hi - lo) * scale_in * scale_out)
        if y.shape[dim] != expected:
            raise ValueError(
                f"{who}: a chunk of {(hi - lo) * scale_in} voxels along dim {dim} gave "
                f"{y.shape[dim]}, expected {expected}: is downsample right?"
            )
        step = round(scale_in * scale_out)
        if out is None:
            shape = list(y.shape)
            shape[dim] = n * step
            out = y.new_empty(shape)
        out.narrow(dim, a * step, (b - a) * step).copy_(
            y.narrow(dim, (a - lo) * step, (b - a) * step)
        )
        del y
    return out


def chunked_decode(
    decode: Fn,
    z: torch.Tensor,
    axis: int = 0,
    num_splits: int = 4,
    overlap: int = 2,
    downsample: int = 1,
) -> torch.Tensor:
    """``decode(z)`` computed in ``num_splits`` chunks along spatial ``axis`` (0 = first).

    Each chunk gets ``overlap`` latent voxels of context on both sides (clipped at the ends);
    only its own ``downsample`` x (chunk length) output voxels are kept. ``decode`` must map a
    latent of length L along the axis to an output of length ``L * downsample``.
    """
    _check(num_splits, overlap, downsample, "chunked_decode")
    dim = _dim(z, axis, "chunked_decode")
    n = z.shape[dim]
    return _run_chunks(
        decode, z, dim, chunk_bounds(n, num_splits), overlap, 1, downsample, n, "chunked_decode"
    )


def chunked_encode(
    encode: Fn,
    x: torch.Tensor,
    axis: int = 0,
    num_splits: int = 4,
    overlap: int = 2,
    downsample: int = 1,
) -> torch.Tensor:
    """``encode(x)`` computed in ``num_splits`` chunks along spatial ``axis``.

    Chunks are cut at multiples of ``downsample`` (so every chunk's strided layers see the same
    phase as the whole input), with ``overlap`` *latent* voxels (``overlap * downsample`` input
    voxels) of context on both sides.
    """
    _check(num_splits, overlap, downsample, "chunked_encode")
    dim = _dim(x, axis, "chunked_encode")
    size = x.shape[dim]
    if size % downsample:
        raise ValueError(
            f"chunked_encode: axis {axis} has size {size}, not divisible by downsample {downsample}"
        )
    n = size // downsample
    return _run_chunks(
        encode,
        x,
        dim,
        chunk_bounds(n, num_splits),
        overlap,
        downsample,
        1 / downsample,
        n,
        "chunked_encode",
    )


@torch.enable_grad()
def required_overlap(
    fn: Fn, probe: torch.Tensor, axis: int = 0, downsample: int = 1, direction: str = "decode"
) -> int | None:
    """The overlap (latent voxels) that makes chunking along ``axis`` exact, measured.

    ``probe`` is a latent (``direction="decode"``) or an input (``"encode"``) of batch 1, long
    enough along ``axis`` to contain the receptive field (e.g. 32 latent voxels). The function
    back-propagates from the outputs at the central latent row (random weights, so no
    cancellation) and returns the largest distance, in latent voxels, of an input row with a
    non-zero gradient. ``None`` when the gradient reaches either end of the probe: the network
    mixes the whole axis (GroupNorm, attention) or the probe is too short; no finite overlap is
    then exact.
    """
    if direction not in ("decode", "encode"):
        raise ValueError(
            f"required_overlap: direction must be 'decode' or 'encode', got {direction!r}"
        )
    dim = _dim(probe, axis, "required_overlap")
    src = probe.detach().clone().requires_grad_(True)
    y = fn(src)
    n_lat = src.shape[dim] if direction == "decode" else y.shape[dim]
    c = n_lat // 2
    f_out = downsample if direction == "decode" else 1
    rows = y.narrow(dim, c * f_out, f_out)
    weight = torch.randn(rows.shape, generator=torch.Generator().manual_seed(0)).to(rows)
    (rows * weight).sum().backward()
    g = src.grad.abs().transpose(dim, -1).reshape(-1, src.shape[dim]).sum(0)
    hit = torch.nonzero(g).flatten()
    if hit.numel() == 0:
        return 0
    first, last = int(hit[0]), int(hit[-1])
    if first == 0 or last == src.shape[dim] - 1:
        return None
    f_in = 1 if direction == "decode" else downsample
    return max(c - first // f_in, last // f_in - c)


def sliding_window_decode(
    decode: Fn,
    z: torch.Tensor,
    roi_size: Sequence[int] | int,
    overlap: float = 0.25,
    mode: str = "gaussian",
    sw_batch_size: int = 1,
) -> torch.Tensor:
    """``decode`` over latent patches of ``roi_size`` through MONAI's ``SlidingWindowInferer``.

    MONAI infers the output zoom (``downsample``) from the first patch and blends overlapping
    patches (``mode`` ``"gaussian"`` or ``"constant"``); patches get no context beyond their
    own borders, so the result is not the unsplit decode (see the README's measured figures).
    """
    spatial = z.ndim - 2
    roi = (int(roi_size),) * spatial if isinstance(roi_size, int) else tuple(roi_size)
    if len(roi) != spatial:
        raise ValueError(f"sliding_window_decode: roi_size {roi} must have {spatial} entries")
    inferer = SlidingWindowInferer(
        roi_size=roi, sw_batch_size=sw_batch_size, overlap=overlap, mode=mode, progress=False
    )
    return inferer(z, decode)
