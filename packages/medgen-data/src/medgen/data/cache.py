"""A slice cache on disk: written atomically, described by a manifest, reused when it matches.

Layout of a cache directory::

    slices.npz       the SliceSet arrays
    manifest.json    shapes, dtypes, counts per bin and class, config hash, array hashes

The arrays are written to a temporary name and renamed into place, then the manifest is
written the same way: a cache without a manifest is incomplete and is rebuilt, so a crash
never leaves a cache that looks finished. Nothing in it identifies a patient: volume ids are
pseudonyms and the config holds no source paths unless the caller puts them there.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from medgen.data.errors import CacheError
from medgen.data.slices import SliceSet

MANIFEST = "manifest.json"
ARRAYS_FILE = "slices.npz"
FORMAT_VERSION = 1


def config_hash(config: dict) -> str:
    """sha256 of the canonical JSON form of ``config``."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def temp_file(path: Path, suffix: str = ".tmp") -> tuple[int, str]:
    """Create ``.<name>.<random><suffix>`` beside ``path`` (mode 0666 minus the umask, unlike
    ``mkstemp``'s 0600, so a cache shared by a group stays readable). Returns (fd, name)."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}{suffix}"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), str(tmp)
        except FileExistsError:
            continue
    raise CacheError(f"{path.parent}: cannot create a temporary file for {path.name}")


def fsync_dir(directory: Path) -> None:
    """Persist a rename in ``directory`` (best effort where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(
    path: Path, data: bytes, write: Callable[[object, bytes], object] | None = None
) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same directory and a rename.

    ``write(fh, data)`` replaces ``fh.write(data)`` (e.g. a chunked writer); the file is then
    flushed, fsynced, renamed into place and the directory fsynced.
    """
    fd, tmp = temp_file(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            if write is None:
                fh.write(data)
            else:
                write(fh, data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _array_hashes(slices: SliceSet) -> dict[str, str]:
    return {
        k: hashlib.sha256(np.ascontiguousarray(getattr(slices, k)).tobytes()).hexdigest()
        for k in SliceSet.ARRAYS
    }


def write_cache(directory: str | Path, slices: SliceSet, config: dict, n_bins: int) -> dict:
    """Write ``slices`` and its manifest into ``directory`` atomically; return the manifest."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MANIFEST).unlink(missing_ok=True)  # mark incomplete until the end
    fd, tmp = temp_file(directory / ARRAYS_FILE, suffix=".tmp.npz")
    os.close(fd)
    try:
        np.savez(tmp, **{k: getattr(slices, k) for k in SliceSet.ARRAYS})
        os.replace(tmp, directory / ARRAYS_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    manifest = {
        "format_version": FORMAT_VERSION,
        "config": config,
        "config_hash": config_hash(config),
        "n_slices": len(slices),
        "shapes": {k: list(getattr(slices, k).shape) for k in SliceSet.ARRAYS},
        "dtypes": {k: str(getattr(slices, k).dtype) for k in SliceSet.ARRAYS},
        "counts_per_bin": slices.counts_per_bin(n_bins),
        "counts_per_class": np.bincount(slices.class_id).astype(int).tolist(),
        "mask_fraction": float(slices.masks.mean()) if len(slices) else 0.0,
        "array_sha256": _array_hashes(slices),
    }
    atomic_write_bytes(directory / MANIFEST, json.dumps(manifest, indent=2).encode())
    return manifest


def read_manifest(directory: str | Path) -> dict | None:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CacheError(f"{path}: manifest is not valid JSON ({exc})") from exc


def load_cache(directory: str | Path, verify: bool = True) -> SliceSet:
    """Load a finished cache; with ``verify`` recompute the array hashes against the manifest."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    if manifest is None:
        raise CacheError(f"{directory}: no {MANIFEST}; the cache is missing or incomplete")
    try:
        with np.load(directory / ARRAYS_FILE, allow_pickle=False) as npz:
            slices = SliceSet(**{k: npz[k] for k in SliceSet.ARRAYS})
    except (OSError, KeyError, ValueError) as exc:
        raise CacheError(f"{directory / ARRAYS_FILE}: unreadable cache arrays ({exc})") from exc
    if verify:
        bad = [k for k, h in _array_hashes(slices).items() if manifest["array_sha256"].get(k) != h]
        if bad:
            raise CacheError(f"{directory / ARRAYS_FILE}: hash mismatch for {', '.join(bad)}")
    return slices


def build_or_load(
    directory: str | Path,
    config: dict,
    n_bins: int,
    build: Callable[[], SliceSet],
) -> tuple[SliceSet, dict, bool]:
    """Reuse the cache in ``directory`` when its config hash matches, else ``build()`` and write.

    Returns ``(slices, manifest, reused)``.
    """
    manifest = read_manifest(directory)
    if manifest is not None and manifest.get("config_hash") == config_hash(config):
        try:
            return load_cache(directory), manifest, True
        except CacheError as exc:  # damaged: say so, then rebuild below
            warnings.warn(f"rebuilding damaged slice cache: {exc}", RuntimeWarning, stacklevel=2)
    slices = build()
    manifest = write_cache(directory, slices, config, n_bins)
    return slices, manifest, False
