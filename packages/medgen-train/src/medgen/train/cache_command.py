"""``medgen-train cache CONFIG``: volumes -> a sharded, resumable slice or pair cache.

The YAML config (see ``configs/cache_mni152_slices.yaml``) names the sources and the recipe;
paths and globs are relative to the working directory, ``mni152`` is the template that ships
with nilearn (T1 image + white-matter mask). Each source becomes one shard, keyed by the
sha256 of its file bytes and the recipe, so a rerun after a crash or with one more scan only
builds what is missing. The manifest stores the recipe and content hashes, never the source
paths (a directory name can be a patient's name). Bad input: exit 2 with one line.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import hashlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medgen.data import (
    DataError,
    Volume,
    mni152_path,
    percentile_scale,
    read_nifti,
    read_volume,
    window,
)
from medgen.data.cache import config_hash, file_sha256
from medgen.data.cache_shards import ShardSource, build_sharded_cache, verify_sharded_cache
from medgen.data.cache_sources import pair_arrays, slice_arrays
from medgen.data.slices import resize_stack
from medgen.train.config import load_config, to_dict
from medgen.train.errors import ConfigError, MedGenError
from medgen.train.progress import bars_disabled

TEMPLATE = "mni152"


@dataclass(frozen=True)
class CacheConfig:
    out: str = ""  # cache directory (required)
    kind: str = "slices"  # slices | pairs
    sources: tuple[str, ...] = ()  # NIfTI files, DICOM dirs/ZIPs, globs, or "mni152"
    z_range: tuple[int, int] = (40, 139)  # inclusive, array index along axis 0
    n_bins: int = 10
    size: int = 64  # in-plane size of slices / pair volumes
    window: str = ""  # CT window preset; "" = MR percentile scaling
    percentiles: tuple[float, float] = (0.5, 99.5)
    class_id: int = 0
    thickness: float = 5.0  # pairs: simulated slice thickness (mm)
    spacing: float | None = None  # pairs: thick slice spacing (mm); None = thickness
    profile: str = "box"  # pairs: box | gaussian


def recipe(cfg: CacheConfig) -> dict:
    """What the cache depends on besides the sources: stored in the manifest (no paths)."""
    keys = ["kind", "z_range", "n_bins", "size", "window", "percentiles", "class_id"]
    if cfg.kind == "pairs":
        keys += ["thickness", "spacing", "profile"]
    d = to_dict(cfg)
    return {"format": "medgen-train cache 1", **{k: d[k] for k in keys}}


def check(cfg: CacheConfig) -> None:
    if not cfg.out:
        raise ConfigError("out: the cache directory is required")
    if cfg.kind not in ("slices", "pairs"):
        raise ConfigError(f"kind: expected 'slices' or 'pairs', got {cfg.kind!r}")
    if not cfg.sources:
        raise ConfigError("sources: list at least one NIfTI file, DICOM dir/ZIP, glob or mni152")
    if cfg.n_bins < 1 or cfg.size < 8:
        raise ConfigError(f"n_bins >= 1 and size >= 8 expected, got {cfg.n_bins}, {cfg.size}")
    if cfg.profile not in ("box", "gaussian"):
        raise ConfigError(f"profile: expected 'box' or 'gaussian', got {cfg.profile!r}")


def expand_sources(entries: tuple[str, ...]) -> list[str]:
    """Paths in config order; globs sorted. A missing path or an empty glob is a ConfigError."""
    out: list[str] = []
    for i, entry in enumerate(entries):
        if entry == TEMPLATE:
            out.append(entry)
        elif glob.has_magic(entry):
            found = sorted(glob.glob(entry))
            if not found:
                raise ConfigError(f"sources[{i}]: {entry!r} matches no file")
            out += found
        elif not Path(entry).exists():
            raise ConfigError(f"sources[{i}]: {entry} does not exist")
        else:
            out.append(entry)
    return out


def content_hash(source: str) -> str:
    """sha256 of the source's bytes: a file, or every file of a directory (sorted hashes)."""
    if source == TEMPLATE:
        return hashlib.sha256(
            (file_sha256(mni152_path("t1")) + file_sha256(mni152_path("wm"))).encode()
        ).hexdigest()
    path = Path(source)
    if path.is_dir():
        hashes = sorted(file_sha256(p) for p in path.rglob("*") if p.is_file())
        if not hashes:
            raise DataError(f"{path}: empty directory")
        return hashlib.sha256("".join(hashes).encode()).hexdigest()
    return file_sha256(path)


def read_source(source: str, cfg: CacheConfig) -> tuple[Volume, Volume | None]:
    """The source as (image scaled to [-1, 1], mask probability in [0, 1] or None)."""
    if source == TEMPLATE:
        t1 = read_nifti(mni152_path("t1"), modality="MR")
        wm = read_nifti(mni152_path("wm"))
        # the "converted" template stores probabilities as uint8 with 255 = 1.0
        mask = dataclasses.replace(wm, array=wm.array / np.float32(255.0))
        raw = t1
    else:
        raw, mask = read_volume(source), None
    try:
        if cfg.window:
            scaled = window(raw.array, preset=cfg.window)
        else:
            scaled = percentile_scale(raw.array, *cfg.percentiles)
    except ValueError as exc:
        raise DataError(f"{source}: cannot scale intensities ({exc})") from None
    return dataclasses.replace(raw, array=scaled, meta={}), mask


def _pair_arrays(image: Volume, mask: Volume | None, cfg: CacheConfig) -> dict[str, np.ndarray]:
    z0, z1 = cfg.z_range
    if not 0 <= z0 <= z1 < image.shape[0]:
        raise DataError(f"z_range {cfg.z_range} outside the volume's {image.shape[0]} slices")
    sy, sx = (
        image.spacing[1] * image.shape[1] / cfg.size,
        image.spacing[2] * image.shape[2] / cfg.size,
    )
    thin_array = resize_stack(image.array[z0 : z1 + 1], cfg.size)
    thin = Volume(
        np.clip(thin_array, -1, 1), (image.spacing[0], sy, sx), image.origin, image.direction
    )
    label = None
    if mask is not None:
        binary = (resize_stack(mask.array[z0 : z1 + 1], cfg.size) > 0.5).astype(np.uint8)
        label = Volume(binary, thin.spacing, thin.origin, thin.direction)
    return pair_arrays(thin, cfg.thickness, cfg.spacing, cfg.profile, label, cfg.class_id)


def make_source(source: str, cfg: CacheConfig) -> ShardSource:
    key = hashlib.sha256(f"{content_hash(source)}:{config_hash(recipe(cfg))}".encode()).hexdigest()

    def make() -> dict[str, np.ndarray]:
        try:
            image, mask = read_source(source, cfg)
            if cfg.kind == "pairs":
                return _pair_arrays(image, mask, cfg)
            return slice_arrays(image, cfg.z_range, cfg.n_bins, cfg.size, mask, cfg.class_id)
        except DataError as exc:  # say which source, once (readers already name the file)
            if str(exc).startswith(str(source)):
                raise
            raise DataError(f"{source}: {exc}") from exc

    return ShardSource(key, make)


def run_cache(cfg: CacheConfig, quiet: bool = False, say: Callable[[str], None] = print) -> dict:
    """Build the cache ``cfg`` describes; returns the manifest."""
    check(cfg)
    sources = [make_source(s, cfg) for s in expand_sources(cfg.sources)]
    n_bins = cfg.n_bins if cfg.kind == "slices" else None
    report = build_sharded_cache(cfg.out, sources, recipe(cfg), cfg.kind, n_bins, quiet=quiet)
    m = report.manifest
    say(
        f"cache {cfg.out}: {m['n_shards']} shards ({len(report.built)} built, "
        f"{len(report.reused)} reused), {m['n_items']} {cfg.kind}; per class "
        f"{m['counts_per_class']}" + (f"; per bin {m['counts_per_bin']}" if n_bins else "")
    )
    return m


def _command(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(CacheConfig, args.config, list(args.overrides))
        if args.verify:
            damaged = verify_sharded_cache(cfg.out)
            if damaged:
                raise DataError(f"{cfg.out}: damaged shards: {', '.join(damaged)}")
            print(f"cache {cfg.out}: every shard matches its manifest hash")
            return 0
        run_cache(cfg, quiet=bars_disabled(args.quiet) is True)
    except (MedGenError, DataError, OSError) as exc:
        print(f"medgen-train cache: error: {exc}".splitlines()[0], file=sys.stderr)
        return 2
    return 0


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``cache`` subcommand to a ``parser.add_subparsers()`` object."""
    p = subparsers.add_parser(
        "cache",
        help="build a sharded slice or thick/thin pair cache from a YAML config",
        description=__doc__.split("\n\n")[1],
    )
    p.add_argument("config", help="YAML file (keys: see CacheConfig in cache_command.py)")
    p.add_argument("overrides", nargs="*", help="config overrides key=value (e.g. size=128)")
    p.add_argument("--verify", action="store_true", help="only recheck the shard hashes")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_command)
    return p
