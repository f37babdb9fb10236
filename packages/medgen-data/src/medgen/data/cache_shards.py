"""Sharded, resumable training caches: one shard per source volume, each written atomically.

Layout of a cache directory::

    manifest.json                 written last: kind, config + hash, shards, counts, dtypes
    shards/shard-<key>.npz        the arrays of one source (uncompressed, reproducible .npz)
    shards/shard-<key>.json       its sidecar: sha256 of the .npz, item count, shapes, counts

``<key>`` is a hash of the format version, the cache kind, the config hash and the source's
content hash, so a changed config or source gets a new shard. A shard is written to a
temporary file, fsynced and renamed; its sidecar is written the same way *after* it. A build
trusts a shard only when its sidecar exists and the shard's sha256 matches it, so a build
killed at any point (mid-write, between the renames) leaves nothing a later run would trust:
the next build deletes leftover temporary files, rebuilds exactly the untrusted shards and
reuses the rest. One builder per directory at a time (no locking).

No patient identifiers: a source is recorded only by its content hash (callers pass no
paths), ``volume_id`` arrays are replaced by that hash's first 16 hex digits, ``Volume.meta``
is never read, and string arrays from the caller are otherwise refused.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from medgen.data.cache import atomic_write_bytes, config_hash, file_sha256
from medgen.data.errors import CacheError, DataError
from medgen.data.slices import SliceSet
from medgen.data.volume import Volume

MANIFEST = "manifest.json"
SHARDS = "shards"
FORMAT_VERSION = 1
KINDS = ("slices", "pairs")
CHUNK = 1 << 20


@dataclass(frozen=True)
class ShardSource:
    """One unit of work: ``make()`` returns the shard's arrays, every one with the same leading
    item dimension; ``key`` is the source's content hash (hex), its only recorded trace."""

    key: str
    make: Callable[[], dict[str, np.ndarray]]


@dataclass
class BuildReport:
    directory: Path
    built: list[str] = field(default_factory=list)  # shard files written by this run
    reused: list[str] = field(default_factory=list)  # finished shards kept from earlier runs
    removed: list[str] = field(default_factory=list)  # temporary, untrusted or stale files
    manifest: dict = field(default_factory=dict)


def volume_key(volume: Volume) -> str:
    """Content hash of a Volume: voxels, dtype, shape and geometry; never ``id`` or ``meta``."""
    h = hashlib.sha256()
    arr = np.ascontiguousarray(volume.array)
    h.update(f"{arr.dtype.str}{arr.shape}".encode())
    h.update(memoryview(arr).cast("B"))  # no copy of the voxels
    geometry = (volume.spacing, volume.origin, np.asarray(volume.direction).ravel().tolist())
    h.update(json.dumps(geometry, default=float).encode())
    return h.hexdigest()


def shard_name(kind: str, cfg_hash: str, source_key: str) -> str:
    blob = f"{FORMAT_VERSION}:{kind}:{cfg_hash}:{source_key}".encode()
    return f"shard-{hashlib.sha256(blob).hexdigest()[:24]}.npz"


def _write_file(fh, data: bytes) -> None:
    """Write in chunks (a kill can land between them; the tests rely on this seam)."""
    view = memoryview(data)
    for start in range(0, len(view), CHUNK):
        fh.write(view[start : start + CHUNK])


def _atomic_write(path: Path, data: bytes) -> None:
    atomic_write_bytes(path, data, write=_write_file)  # looked up per call: a test seam


def _counts(arrays: dict[str, np.ndarray], n_bins: int | None) -> dict:
    out = {}
    if n_bins and "z_bin" in arrays:
        out["counts_per_bin"] = np.bincount(arrays["z_bin"], minlength=n_bins).tolist()
    if "class_id" in arrays:
        out["counts_per_class"] = np.bincount(arrays["class_id"]).tolist()
    return out


def _check_arrays(arrays, source_key: str) -> dict[str, np.ndarray]:
    where = f"shard source {source_key[:16]}"
    if not isinstance(arrays, dict) or not arrays:
        raise DataError(f"{where}: make() must return a non-empty dict of arrays")
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    n = {v.shape[0] if v.ndim else None for v in arrays.values()}
    if len(n) != 1 or None in n:
        shapes = {k: v.shape for k, v in arrays.items()}
        raise DataError(f"{where}: arrays need one common leading item dim, got {shapes}")
    if "volume_id" in arrays:  # the only per-source string: replaced by the pseudonym
        arrays["volume_id"] = np.array([source_key[:16]] * len(arrays["volume_id"]))
    for k, v in arrays.items():
        if v.dtype.hasobject or (v.dtype.kind in "US" and k != "volume_id"):
            raise DataError(f"{where}: array {k!r} has dtype {v.dtype}; only numbers are cached")
    return arrays


def _encode(arrays: dict[str, np.ndarray]) -> bytes:
    """An uncompressed ``.npz`` with fixed zip timestamps: same arrays, same bytes, same hash."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, value in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(info, "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.ascontiguousarray(value), allow_pickle=False)
    return buf.getvalue()


def _sidecar_path(shard: Path) -> Path:
    return shard.with_suffix(".json")


def _trusted(shard: Path) -> dict | None:
    """The sidecar of ``shard`` if both exist and the shard's sha256 matches it."""
    side = _sidecar_path(shard)
    if not (shard.is_file() and side.is_file()):
        return None
    try:
        meta = json.loads(side.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return meta if meta.get("sha256") == file_sha256(shard) else None


def build_sharded_cache(
    directory: str | Path,
    sources: Sequence[ShardSource],
    config: dict,
    kind: str = "slices",
    n_bins: int | None = None,
    quiet: bool = False,
) -> BuildReport:
    """Build (or finish) the cache in ``directory``; finished, intact shards are reused.

    ``config`` must describe the cache without paths or identifiers (it is stored in the
    manifest). Returns a :class:`BuildReport` naming the shards built and reused.
    """
    if kind not in KINDS:
        raise DataError(f"unknown cache kind {kind!r}; known: {', '.join(KINDS)}")
    directory = Path(directory)
    shard_dir = directory / SHARDS
    shard_dir.mkdir(parents=True, exist_ok=True)
    report = BuildReport(directory)
    cfg_hash = config_hash(config)
    names = [shard_name(kind, cfg_hash, s.key) for s in sources]
    if len(set(names)) != len(names):
        raise DataError("two cache sources have the same content hash: a volume is listed twice")
    (directory / MANIFEST).unlink(missing_ok=True)  # incomplete until the manifest is back
    for path in sorted(directory.glob(f".{MANIFEST}.*.tmp")):
        path.unlink()
        report.removed.append(path.name)
    wanted = set(names) | {_sidecar_path(Path(n)).name for n in names}
    for path in sorted(shard_dir.iterdir()):
        if path.name.endswith(".tmp") or (
            path.name.startswith("shard-") and path.name not in wanted
        ):
            path.unlink()
            report.removed.append(path.name)
    entries, todo = {}, []
    for source, name in zip(sources, names, strict=True):
        meta = _trusted(shard_dir / name)
        if meta is not None and meta.get("config_hash") == cfg_hash:
            entries[name] = meta
            report.reused.append(name)
            continue
        for stale in (shard_dir / name, _sidecar_path(shard_dir / name)):
            if stale.exists():
                stale.unlink()
                report.removed.append(stale.name)
        todo.append((source, name))
    bar = tqdm(todo, desc=f"cache {kind}", unit="shard", disable=True if quiet else None)
    for source, name in bar:
        arrays = _check_arrays(source.make(), source.key)
        data = _encode(arrays)
        _atomic_write(shard_dir / name, data)
        meta = {
            "file": name,
            "source_sha256": source.key,
            "config_hash": cfg_hash,
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data),
            "n_items": int(next(iter(arrays.values())).shape[0]),
            "shapes": {k: list(v.shape) for k, v in arrays.items()},
            "dtypes": {k: v.dtype.str for k, v in arrays.items()},
            **_counts(arrays, n_bins),
        }
        atomic_write_bytes(_sidecar_path(shard_dir / name), json.dumps(meta, indent=1).encode())
        entries[name] = meta
        report.built.append(name)
    report.manifest = _manifest(kind, config, cfg_hash, n_bins, [entries[n] for n in names])
    atomic_write_bytes(directory / MANIFEST, json.dumps(report.manifest, indent=2).encode())
    return report


def _manifest(kind, config, cfg_hash, n_bins, shards) -> dict:
    total_bins = np.zeros(n_bins or 0, dtype=np.int64)
    classes: list[int] = []
    for s in shards:
        if n_bins and "counts_per_bin" in s:
            total_bins += np.asarray(s["counts_per_bin"], dtype=np.int64)
        for c, count in enumerate(s.get("counts_per_class", [])):
            classes += [0] * (c + 1 - len(classes))
            classes[c] += count
    return {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "config": config,
        "config_hash": cfg_hash,
        "n_items": sum(s["n_items"] for s in shards),
        "n_shards": len(shards),
        "counts_per_bin": total_bins.tolist() if n_bins else None,
        "counts_per_class": classes,
        "dtypes": shards[0]["dtypes"] if shards else {},
        "shards": shards,
    }


def read_sharded_manifest(directory: str | Path) -> dict:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise CacheError(f"{path}: missing; the sharded cache is absent or its build unfinished")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CacheError(f"{path}: manifest is not valid JSON ({exc})") from exc
    if manifest.get("format_version") != FORMAT_VERSION or "shards" not in manifest:
        raise CacheError(f"{path}: not a version {FORMAT_VERSION} sharded cache manifest")
    return manifest


def verify_sharded_cache(directory: str | Path) -> list[str]:
    """Recompute every shard's sha256; return the names of missing or damaged shards."""
    shard_dir = Path(directory) / SHARDS
    damaged = []
    for entry in read_sharded_manifest(directory)["shards"]:
        path = shard_dir / entry["file"]
        if not path.is_file() or file_sha256(path) != entry["sha256"]:
            damaged.append(entry["file"])
    return damaged


def load_shard(directory: str | Path, entry: dict, verify: bool = True) -> dict[str, np.ndarray]:
    """Arrays of one manifest ``entry``; with ``verify`` a hash mismatch is a CacheError."""
    path = Path(directory) / SHARDS / entry["file"]
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CacheError(f"{path}: cannot read shard ({exc})") from exc
    if verify and hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise CacheError(f"{path}: shard damaged (sha256 differs from the manifest)")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:
        raise CacheError(f"{path}: unreadable shard ({exc})") from exc


def load_sharded_slices(directory: str | Path, verify: bool = True) -> SliceSet:
    """All shards of a ``slices`` cache concatenated into one :class:`SliceSet`."""
    manifest = read_sharded_manifest(directory)
    if manifest["kind"] != "slices":
        raise CacheError(f"{directory}: a {manifest['kind']!r} cache, not a slices cache")
    parts = [load_shard(directory, e, verify) for e in manifest["shards"]]
    if not parts:
        raise CacheError(f"{directory}: the cache holds no shards")
    return SliceSet.concatenate([SliceSet(**{k: p[k] for k in SliceSet.ARRAYS}) for p in parts])


def load_sharded_pairs(directory: str | Path, verify: bool = True) -> list[dict[str, np.ndarray]]:
    """Items of a ``pairs`` cache: one dict per pair (leading item dim removed), ready for
    :func:`medgen.data.collate.collate_padded`."""
    manifest = read_sharded_manifest(directory)
    if manifest["kind"] != "pairs":
        raise CacheError(f"{directory}: a {manifest['kind']!r} cache, not a pairs cache")
    items = []
    for entry in manifest["shards"]:
        arrays = load_shard(directory, entry, verify)
        n = next(iter(arrays.values())).shape[0]
        items += [{k: v[i] for k, v in arrays.items()} for i in range(n)]
    return items
