"""``encode_cache``: a pixel cache -> a latent cache, one latent shard per pixel shard.

The latent cache is the same sharded format as the pixel cache (:mod:`medgen.data.cache`):
each shard holds the frozen autoencoder's raw latents of one subject's items (``latent``)
with every other array of the pixel shard carried over (masks at full resolution, z-bins,
classes, tokens, lesion voxels, the valid box of padded volumes); it is written to a temporary
name and renamed, its sidecar after it, and re-hashed before the manifest trusts it. The
manifest (written last) is the pixel cache's (kind, modalities, split, counts, recipe) with
the latent shards and a ``latent`` section: the channels encoded, the latent shape, the scale
factor (1 / std of the training split's stored latents) and the autoencoder's run, checkpoint
and weights sha256. A shard is keyed by its pixel shard's sha256, the weights' sha256 and the
channels, so an interrupted encode resumes with exactly the missing shards, a damaged shard
is rebuilt (with a warning), and another autoencoder rebuilds them all.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from medgen.data import CacheError, prepare_cache_directory, read_manifest, verify_cache
from medgen.data.cache.atomic import exclusive
from medgen.data.cache.shards import (
    FORMAT_VERSION,
    MANIFEST,
    SHARDS,
    open_shard,
    shard_name,
    trusted,
    write_manifest,
    write_shard,
)
from medgen.data.errors import CacheWarning
from medgen.models.spaces import raw_encode
from medgen.train.errors import ConfigError
from medgen.train.latents.autoencoder import AutoencoderRun
from medgen.train.latents.dataset import LATENT, is_latent_cache
from medgen.train.latents.scale import scale_of_latents
from medgen.train.tasks.diffusion.channels import ChannelLayout

SCALE_SPLIT = "train"


@dataclass
class EncodeReport:
    """What an encode did: shards ``built`` now, ``reused``, files ``removed`` (temporary or
    stale), ``damaged`` shards rebuilt, and the ``manifest`` written."""

    directory: Path
    built: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)
    manifest: dict = field(default_factory=dict)

    def summary(self) -> str:
        """One line for a person."""
        lat = self.manifest[LATENT]
        return (
            f"encode {self.directory}: {len(self.manifest['shards'])} shards ({len(self.built)} "
            f"built, {len(self.reused)} reused), {self.manifest['n_items']} items, latent "
            f"{lat['shape']} of {', '.join(lat['channels'])}, scale factor "
            f"{lat['scale_factor']:.6g} (1/std of the {SCALE_SPLIT} split)"
        )


def encoded_channels(ae: AutoencoderRun, manifest: dict, cache: Path) -> list[str]:
    """The data channels of the cache the autoencoder encodes, in its order (checked)."""
    names = ae.channels or ("image",)
    try:
        layout = ChannelLayout.from_config(
            names, (), list(manifest["modalities"]), bool(manifest["has_mask"])
        )
    except ConfigError as exc:
        raise ConfigError(
            f"{cache}: the autoencoder of {ae.run_dir} encodes {list(names)}, which this cache "
            f"does not hold ({exc})"
        ) from None
    ae.check_channels(layout.generate, f"{cache}")
    return list(layout.generate)


def check_source(ae: AutoencoderRun, cache: Path) -> tuple[dict, list[str], list[int]]:
    """(manifest, channels, latent shape) of a pixel cache the autoencoder can encode."""
    manifest = read_manifest(cache)
    if is_latent_cache(manifest):
        raise ConfigError(f"--cache: {cache} is already a latent cache; give the pixel cache")
    if manifest["kind"] not in ("slices", "volumes"):
        raise ConfigError(
            f"--cache: {cache} is a {manifest['kind']!r} cache; encode takes slices or volumes"
        )
    spatial = manifest["item_shape"][1:]
    if any(s is None for s in spatial):
        raise ConfigError(f"--cache: {cache} holds items of several sizes {spatial}")
    channels = encoded_channels(ae, manifest, cache)
    ae.check_shape(spatial, f"{cache / MANIFEST}")
    return manifest, channels, ae.latent_shape(spatial)


def latent_key(source_sha256: str, ae: AutoencoderRun, channels: list[str], chunks) -> str:
    """A latent shard's key: its pixel shard, the weights, the channels, the chunking."""
    blob = json.dumps([FORMAT_VERSION, LATENT, source_sha256, ae.sha256, channels, chunks])
    return hashlib.sha256(blob.encode()).hexdigest()


def _check_out(out: Path, cache: Path) -> None:
    if out.resolve() == cache.resolve():
        raise ConfigError(f"--out: {out} is the pixel cache itself; choose another directory")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out: {out} is a file; expected a directory")
    path = out / MANIFEST
    if path.is_file():
        try:
            existing = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            existing = None
        if not isinstance(existing, dict) or not is_latent_cache(existing):
            raise ConfigError(
                f"--out: {out} holds a cache that is not a latent cache; choose another directory"
            )
    elif out.is_dir() and any(p.name not in (SHARDS, ".lock") for p in out.iterdir()):
        raise ConfigError(f"--out: {out} is not empty and not a latent cache")
    for side in sorted((out / SHARDS).glob("shard-*.json")) if out.is_dir() else []:
        try:
            mine = "latent_key" in json.loads(side.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError):
            mine = False
        if not mine:  # e.g. an unfinished pixel cache: its shards are not ours to remove
            raise ConfigError(f"--out: {side} is not a latent shard's; choose another directory")


def chunked(ae: AutoencoderRun, chunks: int, overlap: int):
    """``x -> raw latent``: the autoencoder's encoding, in ``chunks`` pieces along the first
    spatial axis when > 1 (:func:`medgen.models.autoencoders.chunked_encode`; the unsplit
    result only for purely convolutional encoders with ``overlap`` >= their reach)."""
    if chunks == 1:
        return lambda x: raw_encode(ae.module, x)
    from medgen.models.autoencoders.chunked import chunked_encode

    return lambda x: chunked_encode(lambda part: raw_encode(ae.module, part), x, axis=0,
                                    num_splits=chunks, overlap=overlap,
                                    downsample=ae.factors[0])  # fmt: skip


@torch.no_grad()
def encode_items(encode, arrays: dict, layout, batch_size: int, device) -> np.ndarray:
    """The raw latents ``encode(x)`` (float32, never clamped) of every item of one pixel
    shard."""
    n = int(arrays["image"].shape[0])
    out = []
    for start in range(0, n, batch_size):
        part = slice(start, min(n, start + batch_size))
        batch = {"image": torch.from_numpy(np.array(arrays["image"][part]))}
        if "mask" in arrays:
            batch["mask"] = torch.from_numpy(np.array(arrays["mask"][part]))
        x = layout.x0(batch).to(device)
        out.append(encode(x).float().cpu().numpy())
    return np.concatenate(out)


def _latent_arrays(arrays: dict, latents: np.ndarray) -> dict[str, np.ndarray]:
    carried = {k: np.asarray(v) for k, v in arrays.items() if k != "image"}
    return {LATENT: latents, **carried}


def _train_latents(out: Path, entries: list[dict]) -> Iterator[torch.Tensor]:
    for entry in entries:
        if entry["split"] == SCALE_SPLIT:
            yield torch.from_numpy(np.array(open_shard(out, entry)[LATENT]))


def encode_cache(
    ae: AutoencoderRun,
    cache: str | Path,
    out: str | Path,
    *,
    batch_size: int = 8,
    chunks: int = 1,
    overlap: int = 2,
    device="cpu",
    quiet: bool = False,
) -> EncodeReport:
    """Encode every split of the pixel cache ``cache`` into the latent cache ``out`` (see the
    module docstring); everything is checked before anything is written."""
    cache, out = Path(cache), Path(out)
    if batch_size < 1:
        raise ConfigError(f"--batch-size: expected at least 1, got {batch_size}")
    if chunks < 1 or overlap < 0:
        raise ConfigError(f"--chunks: expected >= 1 (overlap >= 0), got {chunks} ({overlap})")
    source, channels, shape = check_source(ae, cache)
    if chunks > shape[1]:
        raise ConfigError(f"--chunks: {chunks} pieces of a latent axis of {shape[1]} voxels")
    _check_out(out, cache)
    damaged = verify_cache(cache, source["shards"])
    if damaged:
        raise CacheError(
            f"{cache / SHARDS / damaged[0]}: shard damaged or missing ({len(damaged)} bad); "
            "rebuild the pixel cache with medgen-train cache"
        )
    layout = ChannelLayout.from_config(
        channels, (), list(source["modalities"]), bool(source["has_mask"])
    )
    keys = [latent_key(e["sha256"], ae, channels, [chunks, overlap]) for e in source["shards"]]
    encode = chunked(ae, chunks, overlap)
    names = [shard_name(k) for k in keys]
    with exclusive(out):
        report = EncodeReport(out)
        shard_dir, removed = prepare_cache_directory(out, names)
        report.removed.extend(removed)
        entries = []
        bar = tqdm(total=int(source["n_items"]), desc="encode", unit="item",
                   disable=True if quiet else None)  # fmt: skip
        for entry, key, name in zip(source["shards"], keys, names, strict=True):
            meta = trusted(shard_dir / name)
            if meta is not None and meta.get("latent_key") == key:
                report.reused.append(name)
            else:
                if (shard_dir / name).exists():
                    warnings.warn(
                        f"{shard_dir / name}: damaged (sha256 differs from its sidecar); "
                        "encoding it again",
                        CacheWarning,
                        stacklevel=2,
                    )
                    report.damaged.append(name)
                arrays = open_shard(cache, entry)
                latents = encode_items(encode, arrays, layout, batch_size, device)
                carried = {k: entry[k] for k in ("subject", "spacing", "counts_per_bin",
                                                 "counts_per_class") if k in entry}  # fmt: skip
                write_shard(shard_dir, name, _latent_arrays(arrays, latents),
                            {**carried, "source_sha256": entry["sha256"], "latent_key": key})  # fmt: skip
                meta = trusted(shard_dir / name)  # re-read: only a verified shard is listed
                if meta is None:
                    raise CacheError(f"{shard_dir / name}: read back differently than written")
                report.built.append(name)
            entries.append({**meta, "split": entry["split"]})
            bar.update(int(entry["n_items"]))
        bar.close()
        scale = scale_of_latents(_train_latents(out, entries), f"{out} ({SCALE_SPLIT} split)")
        manifest = {k: v for k, v in source.items() if k != "shards"}
        manifest["shards"] = entries
        manifest[LATENT] = {
            "channels": channels,
            "shape": shape,
            "scale_factor": scale,
            "scale_split": SCALE_SPLIT,
            "autoencoder": ae.provenance(),
            "encode": {"chunks": chunks, "overlap": overlap},
            "source": {
                "cache": str(cache.absolute()),
                "recipe_hash": source["recipe_hash"],
                "shards": hashlib.sha256(
                    "".join(e["sha256"] for e in source["shards"]).encode()
                ).hexdigest(),
            },
        }
        report.manifest = json.loads(json.dumps(manifest))
        write_manifest(out, report.manifest)
    return report
