"""LOCAL z-binning: bins subdivide the filtered ``z_range``, never the whole volume.

Slices are filtered to ``z_range`` first and binned second, so every bin receives slices
(JS-DDPM notes: global binning of z_range=(24, 93) into 50 bins left 19 bins unused).
``z_range`` is inclusive at both ends. Binning uses integer arithmetic, so bin edges do not
depend on floating-point rounding::

    z_bin = min(n_bins - 1, ((z - z_min) * n_bins) // (z_max - z_min))
"""

from __future__ import annotations


def _check(z_range: tuple[int, int], n_bins: int) -> tuple[int, int]:
    z_min, z_max = (int(v) for v in z_range)
    if z_min != z_range[0] or z_max != z_range[1]:
        raise ValueError(f"z_range must hold integers, got {z_range}")
    if z_max < z_min:
        raise ValueError(f"z_range {z_range} is empty: its end is before its start")
    if int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins}")
    return z_min, z_max


def normalize_z_local(z_index: int, z_range: tuple[int, int]) -> float:
    """Position of ``z_index`` within ``z_range`` as a float in [0, 1]."""
    z_min, z_max = _check(z_range, 1)
    if not z_min <= z_index <= z_max:
        raise ValueError(f"z_index {z_index} outside z_range [{z_min}, {z_max}]")
    return 0.0 if z_max == z_min else (z_index - z_min) / (z_max - z_min)


def quantize_z(z_index: int, z_range: tuple[int, int], n_bins: int) -> int:
    """Local bin of ``z_index`` in ``[0, n_bins)``; ``ValueError`` outside ``z_range``.

    >>> quantize_z(58, (24, 93), 10)
    4
    """
    z_min, z_max = _check(z_range, n_bins)
    if int(z_index) != z_index:
        raise ValueError(f"z_index must be an integer, got {z_index!r}")
    z_index = int(z_index)
    if not z_min <= z_index <= z_max:
        raise ValueError(f"z_index {z_index} outside z_range [{z_min}, {z_max}]")
    if z_max == z_min:
        return 0
    return min(n_bins - 1, ((z_index - z_min) * n_bins) // (z_max - z_min))


def z_bin_bounds(z_bin: int, z_range: tuple[int, int], n_bins: int) -> tuple[int, int]:
    """First and last z index (inclusive) that fall in ``z_bin``.

    ``ValueError`` if the bin is out of range or receives no integer index (more bins than
    slices).
    """
    z_min, z_max = _check(z_range, n_bins)
    if not 0 <= z_bin < n_bins:
        raise ValueError(f"z_bin {z_bin} outside [0, {n_bins})")
    members = [z for z in range(z_min, z_max + 1) if quantize_z(z, z_range, n_bins) == z_bin]
    if not members:
        raise ValueError(
            f"z_bin {z_bin} holds no slice: {n_bins} bins over {z_max - z_min + 1} slices"
        )
    return members[0], members[-1]


def z_bin_to_index(z_bin: int, z_range: tuple[int, int], n_bins: int) -> int:
    """A representative z index of ``z_bin`` (the middle of its slices, rounded down)."""
    first, last = z_bin_bounds(z_bin, z_range, n_bins)
    return (first + last) // 2


def class_token(z_bin: int, class_id: int, n_bins: int) -> int:
    """Conditioning token ``z_bin + n_bins * class_id`` (JS-DDPM's bin x class token)."""
    if not 0 <= z_bin < n_bins:
        raise ValueError(f"z_bin {z_bin} outside [0, {n_bins})")
    if class_id < 0:
        raise ValueError(f"class_id must be >= 0, got {class_id}")
    return int(z_bin) + int(n_bins) * int(class_id)
