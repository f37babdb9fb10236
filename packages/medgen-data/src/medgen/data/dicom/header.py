"""Sense checks of the DICOM header fields that say how to read the pixels.

pydicom and SimpleITK accept these without a word; each one that lies would put wrong
intensities into a cache (an image inverted, HU off by a factor, a colour map read as
grey). Checked before the pixel values are trusted:

- ``PhotometricInterpretation`` must be MONOCHROME1 or MONOCHROME2 (one sample per pixel):
  PALETTE COLOR stores indices into a colour map, RGB/YBR colour triples, so neither is a
  greyscale intensity. A missing value is read as MONOCHROME2 (the only greyscale reading of
  single-sample data) with a warning; MONOCHROME1 and MONOCHROME2 mixed within one series is
  an error (a display inversion of some slices only). A MONOCHROME1 series is read as its
  stored (modality) values, not inverted, with a warning: for CT the rescaled values are HU
  either way, and inverting would change them.
- ``BitsAllocated`` in {1, 8, 16, 32, 64}, ``1 <= BitsStored <= BitsAllocated``,
  ``HighBit == BitsStored - 1`` (data shifted within the word would be misread),
  ``PixelRepresentation`` 0 or 1. Whether the stored values fit in ``BitsStored`` is checked
  on the pixels themselves (:func:`medgen.data.dicom.pixels.decode`).
- ``RescaleSlope`` / ``RescaleIntercept``: numbers, finite, slope not zero (a zero slope
  turns every voxel into the intercept).

Every error is a :class:`DataError` naming the file and the field.
"""

from __future__ import annotations

import math
import warnings

from medgen.data.errors import DataError

GREYSCALE = ("MONOCHROME1", "MONOCHROME2")
BITS_ALLOCATED = (1, 8, 16, 32, 64)
FLOAT_PIXELS = ("FloatPixelData", "DoubleFloatPixelData")


def photometric(ds, name: str, where: str) -> str:
    """The greyscale PhotometricInterpretation of ``ds`` (MONOCHROME1/2, "" when missing),
    else a DataError."""
    value = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    if value and value not in GREYSCALE:
        kind = "colour-map indices" if value == "PALETTE COLOR" else "colour values"
        raise DataError(
            f"{where}: {name} has PhotometricInterpretation {value} ({kind}, not greyscale "
            "intensities); only MONOCHROME1/MONOCHROME2 series are volumes"
        )
    return value


def check_bits(ds, name: str, where: str) -> None:
    """BitsAllocated / BitsStored / HighBit / PixelRepresentation consistent, else DataError."""
    if any(tag in ds for tag in FLOAT_PIXELS):
        return  # float pixels carry no stored-bits fields
    allocated = _int(ds, "BitsAllocated", name, where, default=16)
    stored = _int(ds, "BitsStored", name, where, default=allocated)
    high = _int(ds, "HighBit", name, where, default=stored - 1)
    representation = _int(ds, "PixelRepresentation", name, where, default=0)
    if allocated not in BITS_ALLOCATED:
        raise DataError(
            f"{where}: {name} has BitsAllocated {allocated}; DICOM allows {list(BITS_ALLOCATED)}"
        )
    if not 1 <= stored <= allocated:
        raise DataError(
            f"{where}: {name} has BitsStored {stored} with BitsAllocated {allocated} "
            "(must be 1..BitsAllocated)"
        )
    if high != stored - 1:
        raise DataError(
            f"{where}: {name} has HighBit {high} with BitsStored {stored} (expected "
            f"{stored - 1}); pixel values shifted within the word are not supported"
        )
    if representation not in (0, 1):
        raise DataError(
            f"{where}: {name} has PixelRepresentation {representation} (0 unsigned, 1 signed)"
        )


def check_rescale(item, name: str, where: str) -> None:
    """RescaleSlope / RescaleIntercept of ``item`` (a dataset or a functional-group item)
    are finite numbers and the slope is not zero, else a DataError naming the field."""
    if item is None:
        return
    for tag in ("RescaleSlope", "RescaleIntercept"):
        if tag not in item:
            continue
        raw = item.get(tag)
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise DataError(f"{where}: {name} has {tag} {raw!r}, not a number") from None
        if not math.isfinite(value) or (tag == "RescaleSlope" and value == 0.0):
            raise DataError(
                f"{where}: {name} has {tag} {value:g}; the rescaled values would be "
                f"{'constant' if value == 0.0 else 'non-finite'}"
            )


def series_photometric(values: list[tuple[str, str]], where: str) -> None:
    """One PhotometricInterpretation per series: ``values`` are (file name, value) pairs.

    Missing values count as MONOCHROME2, with a warning naming how many files lack it;
    mixed MONOCHROME1/MONOCHROME2 is a DataError naming one file of each; a MONOCHROME1
    series is read as stored (not inverted) with a warning saying so.
    """
    missing = [n for n, v in values if not v]
    if missing:
        warnings.warn(
            f"{where}: {len(missing)} file(s) without PhotometricInterpretation (e.g. "
            f"{missing[0]}); read as MONOCHROME2",
            stacklevel=4,
        )
    values = [(n, v or "MONOCHROME2") for n, v in values]
    kinds = {v for _, v in values}
    if len(kinds) > 1:
        first = {v: n for n, v in reversed(values)}
        raise DataError(
            f"{where}: mixed PhotometricInterpretation between slices ("
            + ", ".join(f"{first[v]} is {v}" for v in sorted(kinds))
            + "); some slices would be displayed inverted"
        )
    if kinds == {"MONOCHROME1"}:
        warnings.warn(
            f"{where}: PhotometricInterpretation MONOCHROME1 (high values displayed dark); "
            "read as the stored modality values, not inverted",
            stacklevel=4,
        )


def _int(ds, tag: str, name: str, where: str, default: int) -> int:
    raw = ds.get(tag)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except (TypeError, ValueError):
        raise DataError(f"{where}: {name} has {tag} {raw!r}, not an integer") from None
