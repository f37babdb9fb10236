"""Shard files (format 2): one per subject, atomic, verified, and readable without a copy.

Layout of a cache directory::

    manifest.json                 written last (atomically): recipe, modalities, split, shards
    shards/shard-<key>.npz        one subject's arrays: an uncompressed, reproducible .npz
    shards/shard-<key>.json       its sidecar: sha256 of the .npz, item count, shapes, counts

A shard is written to a temporary file, fsynced and renamed; its sidecar is written the same
way *after* it. A build trusts a shard only when its sidecar exists and the shard's sha256
matches it, so a build killed at any point leaves nothing a later run trusts.

The ``.npz`` is a ZIP of ``.npy`` members stored uncompressed (``ZIP_STORED``) with fixed
timestamps (same arrays, same bytes) and a padding extra field that puts every member's data
on a 64-byte boundary; ``.npy`` headers are padded to 64 bytes too, so every array starts
64-byte aligned in the file. :func:`open_shard` maps the file once (``np.memmap``) and gives
every array as a view at its member's data offset: no copy, no decompression.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import zipfile
from pathlib import Path

import numpy as np

from medgen.data.cache.atomic import atomic_write_bytes, file_sha256
from medgen.data.errors import CacheError

MANIFEST = "manifest.json"
SHARDS = "shards"
FORMAT_VERSION = 2
CHUNK = 1 << 20
ALIGN = 64
PAD_EXTRA_ID = 0xD935  # the extra-field id zipalign uses for alignment padding
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # ZIP local file header, 30 bytes
_ZIP64_EXTRA = 20  # zipfile adds this to a local header with force_zip64


def shard_name(key: str) -> str:
    """File name of the shard whose key (hex) is ``key``."""
    return f"shard-{key[:24]}.npz"


def shard_key(kind: str, processing_hash: str, subject: str, source_sha256: list[str]) -> str:
    """sha256 of the format, kind, processing-recipe hash, subject pseudonym and file hashes."""
    blob = json.dumps([FORMAT_VERSION, kind, processing_hash, subject, list(source_sha256)])
    return hashlib.sha256(blob.encode()).hexdigest()


def sidecar_path(shard: Path) -> Path:
    """The sidecar ``.json`` beside a shard ``.npz``."""
    return shard.with_suffix(".json")


def _padding(offset: int, name: str) -> bytes:
    """An extra field that puts the member data of a local header at ``offset`` on ALIGN."""
    fixed = offset + _LOCAL_HEADER.size + len(name.encode()) + _ZIP64_EXTRA
    pad = -fixed % ALIGN
    pad += ALIGN if pad < 4 else 0
    return struct.pack("<HH", PAD_EXTRA_ID, pad - 4) + b"\0" * (pad - 4)


def encode(arrays: dict[str, np.ndarray]) -> bytes:
    """The bytes of an uncompressed, aligned, reproducible ``.npz`` holding ``arrays``."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, value in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.extra = _padding(buf.tell(), info.filename)
            with zf.open(info, "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.ascontiguousarray(value), allow_pickle=False)
    return buf.getvalue()


def _write_file(fh, data: bytes) -> None:
    """Write in chunks (a kill can land between them; the SIGKILL test uses this seam)."""
    view = memoryview(data)
    for start in range(0, len(view), CHUNK):
        fh.write(view[start : start + CHUNK])


def write_shard(shard_dir: Path, name: str, arrays: dict[str, np.ndarray], meta: dict) -> dict:
    """Write the shard ``name`` and then its sidecar (``meta`` + file facts); return the sidecar."""
    data = encode(arrays)
    atomic_write_bytes(shard_dir / name, data, write=_write_file)  # _write_file: a test seam
    sidecar = {
        "file": name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "n_items": int(next(iter(arrays.values())).shape[0]),
        "shapes": {k: list(v.shape) for k, v in arrays.items()},
        "dtypes": {k: v.dtype.str for k, v in arrays.items()},
        **meta,
    }
    atomic_write_bytes(sidecar_path(shard_dir / name), json.dumps(sidecar, indent=1).encode())
    return sidecar


def trusted(shard: Path) -> dict | None:
    """The sidecar of ``shard`` if both exist and the shard's sha256 matches it, else None."""
    side = sidecar_path(shard)
    if not (shard.is_file() and side.is_file()):
        return None
    try:
        meta = json.loads(side.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    ok = isinstance(meta, dict) and meta.get("sha256") == file_sha256(shard)
    return meta if ok else None


def write_manifest(directory: Path, manifest: dict) -> None:
    """Write ``manifest.json`` atomically (the last file of a build)."""
    atomic_write_bytes(directory / MANIFEST, json.dumps(manifest, indent=1).encode())


def read_manifest(directory: str | Path) -> dict:
    """The manifest of a format-2 cache; a CacheError says what the directory is instead."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise CacheError(f"{directory}: not a MedGen cache (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CacheError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or "format_version" not in manifest:
        raise CacheError(f"{path}: not a MedGen cache manifest (no format_version)")
    version = manifest["format_version"]
    if version != FORMAT_VERSION:
        advice = (
            "rebuild it with `medgen-train cache CONFIG`"
            if isinstance(version, int) and version < FORMAT_VERSION
            else "upgrade medgen-data to read it"
        )
        raise CacheError(
            f"{directory}: cache format {version}, this medgen-data reads format "
            f"{FORMAT_VERSION}; {advice}"
        )
    return manifest


def verify_cache(directory: str | Path, entries: list[dict] | None = None) -> list[str]:
    """Re-hash the shards (of ``entries``, default all); return the missing or damaged files."""
    shard_dir = Path(directory) / SHARDS
    if entries is None:
        entries = read_manifest(directory)["shards"]
    damaged = []
    for entry in entries:
        path = shard_dir / entry["file"]
        if not path.is_file() or file_sha256(path) != entry["sha256"]:
            damaged.append(entry["file"])
    return damaged


def _member_array(path: Path, fh, whole: np.memmap, info: zipfile.ZipInfo) -> np.ndarray:
    if info.compress_type != zipfile.ZIP_STORED or not info.filename.endswith(".npy"):
        raise CacheError(f"{path}: member {info.filename} is not a stored .npy array")
    fh.seek(info.header_offset)
    header = _LOCAL_HEADER.unpack(fh.read(_LOCAL_HEADER.size))
    if header[0] != b"PK\x03\x04":
        raise CacheError(f"{path}: bad ZIP local header for {info.filename}")
    fh.seek(info.header_offset + _LOCAL_HEADER.size + header[-2] + header[-1])
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
    if dtype.hasobject:
        raise CacheError(f"{path}: member {info.filename} holds Python objects")
    start, nbytes = fh.tell(), int(np.prod(shape)) * dtype.itemsize
    if start + nbytes > whole.size:
        raise CacheError(f"{path}: member {info.filename} runs past the end of the file")
    flat = whole[start : start + nbytes].view(dtype)
    return flat.reshape(shape, order="F" if fortran else "C")


def open_shard(directory: str | Path, entry: dict) -> dict[str, np.ndarray]:
    """The arrays of one manifest ``entry``: read-only views of one ``np.memmap`` of the shard
    file (one mapping per shard, whatever its number of arrays)."""
    path = Path(directory) / SHARDS / entry["file"]
    try:
        whole = np.memmap(path, dtype=np.uint8, mode="r")
        with path.open("rb") as fh, zipfile.ZipFile(fh) as zf:
            return {
                info.filename[: -len(".npy")]: _member_array(path, fh, whole, info)
                for info in zf.infolist()
            }
    except (OSError, zipfile.BadZipFile, ValueError, struct.error) as exc:
        raise CacheError(f"{path}: unreadable shard ({exc})") from None
