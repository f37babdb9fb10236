"""DICOM pixel values: frame counts, decoding stored values, and rescaling them to float32.

``decode`` checks the header fields that say how to read the pixels
(:mod:`medgen.data.dicom.header`), then reads uncompressed little-endian 8/16/32-bit frames
straight from the PixelData bytes, and everything else (compressed, big-endian, packed bits,
float pixels) through pydicom's ``pixel_array``; both give the same values. When BitsStored
is less than BitsAllocated, the direct read checks that every stored value fits in BitsStored
(unsigned: the unused high bits are zero; signed: they are zero or a sign extension) and
sign-extends, where pydicom would silently mask a value that does not fit (BitsStored 12 and
a stored 5000 read as 904): a header that lies is a DataError naming the file. ``rescale`` applies RescaleSlope/RescaleIntercept
(so CT is in HU), else a Modality LUT Sequence through pydicom, else a plain cast.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataelem import RawDataElement

from medgen.data.dicom.header import check_bits
from medgen.data.dicom.sources import Member
from medgen.data.errors import DataError

PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
NATIVE_LITTLE_ENDIAN = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")  # implicit / explicit VR


def n_frames(ds, default: int | None = 1) -> int:
    """NumberOfFrames as an int; a malformed value is a DataError (or ``default`` if given)."""
    value = ds.get("NumberOfFrames", 1)
    try:
        return int(value or 1)
    except (TypeError, ValueError):
        if default is not None:
            return default
        raise DataError(f"invalid NumberOfFrames {value!r}") from None


def decode(member: Member, ds, where: str) -> np.ndarray:
    """The stored pixel values (one frame: (rows, cols); several: (frames, rows, cols))."""
    if not any(t in ds for t in PIXEL_TAGS):
        raise DataError(f"{where}: missing pixel data in {member.name}")
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise DataError(
            f"{where}: {member.name} is a colour image (SamplesPerPixel "
            f"{ds.SamplesPerPixel}); only greyscale series are volumes"
        )
    check_bits(ds, member.name, where)
    try:
        native = _native_dtype(ds)
        if native is None:
            return ds.pixel_array
        frames, rows, cols = n_frames(ds), int(ds.Rows), int(ds.Columns)
        count = frames * rows * cols
        need = count * native.itemsize
        data = _deferred_bytes(member, ds, need)
        if data is None:
            data = ds.PixelData
        if len(data) < need:
            raise ValueError(
                f"the number of bytes of pixel data is less than expected ({len(data)} vs "
                f"{need} bytes)"
            )
        stored = np.frombuffer(data, native, count=count)
        shape = (rows, cols) if frames == 1 else (frames, rows, cols)
    except Exception as exc:  # pydicom raises several types for truncated/compressed data
        raise DataError(
            f"{where}: cannot decode the pixel data of {member.name} (truncated file or "
            f"unsupported compression: {exc})"
        ) from exc
    bits = int(ds.get("BitsStored", 0) or 0)
    if bits < 8 * native.itemsize:
        stored = _within_stored_bits(stored, bits, member.name, where)
    return stored.reshape(shape)


def _within_stored_bits(raw: np.ndarray, bits: int, name: str, where: str) -> np.ndarray:
    """``raw`` (signed or unsigned words) as values of ``bits`` bits, checked to fit.

    Unsigned: every value below 2**bits. Signed (two's complement in ``bits`` bits): the
    unused high bits are all zero (then sign-extended here) or a correct sign extension.
    """
    signed = raw.dtype.kind == "i"
    word = raw.view(raw.dtype.str.replace("i", "u"))
    high = word >> np.array(bits, word.dtype)
    ones = np.array((1 << (8 * raw.dtype.itemsize - bits)) - 1, word.dtype)
    sign = (word >> np.array(bits - 1, word.dtype)) & np.array(1, word.dtype)
    if signed:
        bad = (high != 0) & ((high != ones) | (sign == 0))
    else:
        bad = high != 0
    if bad.any():
        example = raw[bad][0]
        lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
        raise DataError(
            f"{where}: {name} has BitsStored {bits} but {int(bad.sum())} stored value(s) do "
            f"not fit in {bits} bits (e.g. {int(example)}; {bits}-bit "
            f"{'signed' if signed else 'unsigned'} values are {lo}..{hi}); the header and the "
            "pixel data disagree"
        )
    if not signed:
        return raw
    low = word & np.array((1 << bits) - 1, word.dtype)
    offset = np.array(1 << (bits - 1), word.dtype)
    return ((low ^ offset).astype(np.int64) - int(offset)).astype(raw.dtype)


def _deferred_bytes(member: Member, ds, need: int) -> bytes | None:
    """PixelData bytes read straight from the file when the scan deferred them, else None.

    Same bytes as pydicom's deferred read (the element's value starts at ``value_tell``),
    without re-parsing the element; a short read comes back short (a truncated file).
    """
    elem = ds.get_item("PixelData")
    source = member.open() if not member.in_memory else None
    if not isinstance(elem, RawDataElement) or elem.value is not None:
        return None
    if not isinstance(source, str | Path) or elem.length == 0xFFFFFFFF:
        return None
    with open(source, "rb") as fh:
        fh.seek(elem.value_tell)
        return fh.read(min(need, elem.length))


def _native_dtype(ds) -> np.dtype | None:
    """The dtype of uncompressed little-endian 8/16/32-bit pixels, or None for pydicom."""
    syntax = str(getattr(ds, "file_meta", {}).get("TransferSyntaxUID", ""))
    bits = int(ds.get("BitsAllocated", 0) or 0)
    if (
        syntax not in NATIVE_LITTLE_ENDIAN
        or "PixelData" not in ds
        or bits not in (8, 16, 32)
        or not 0 < int(ds.get("BitsStored", 0) or 0) <= bits
    ):
        return None
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    return np.dtype(f"<{'i' if signed else 'u'}{bits // 8}")


def rescale(stored: np.ndarray, item, fallback=None, out=None) -> tuple[np.ndarray, bool]:
    """Apply RescaleSlope/Intercept from ``item`` (else ``fallback``) to float32.

    Computed in float64 and rounded once to float32, except when the result is exact in
    float32 anyway (slope 1, integer intercept, stored values of at most 16 bits). ``out``: a
    float32 array of ``stored``'s shape to write into (saves a copy when stacking slices).
    """
    values, rescaled = _rescaled(stored, item, fallback, out)
    if out is not None and values is not out:
        out[...] = values
        values = out
    return values, rescaled


def _rescaled(stored, item, fallback, out) -> tuple[np.ndarray, bool]:
    for source in (item, fallback):
        if source is not None and ("RescaleSlope" in source or "RescaleIntercept" in source):
            slope = float(source.get("RescaleSlope", 1.0) or 1.0)
            intercept = float(source.get("RescaleIntercept", 0.0) or 0.0)
            if (
                slope == 1.0
                and intercept.is_integer()
                and abs(intercept) < 2**23
                and stored.dtype.kind in "iu"
                and stored.dtype.itemsize <= 2
            ):
                if out is None:
                    out = np.empty(stored.shape, np.float32)
                out[...] = stored  # exact: at most 16-bit integers
                out += np.float32(intercept)
                return out, True
            return (stored.astype(np.float64) * slope + intercept).astype(np.float32), True
    if item is not None and "ModalityLUTSequence" in item:
        from pydicom.pixels import apply_modality_lut

        return np.asarray(apply_modality_lut(stored, item), dtype=np.float32), True
    return stored.astype(np.float32), False
