"""What ``evaluate`` (and ``downstream``) read: a samples directory (its manifest and arrays),
the data description of the run that made it, and the reference items as that run saw them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from medgen.data import DataError, read_manifest
from medgen.train.commands.sample import MANIFEST
from medgen.train.progress import bars_disabled
from medgen.train.tasks.data import DataDescription, open_items


def read_samples(samples: Path) -> tuple[dict, dict]:
    """(manifest, arrays) of a samples directory."""
    manifest_path = samples / MANIFEST
    if not manifest_path.is_file():
        raise DataError(
            f"{samples}: not a complete samples directory (no {MANIFEST}); make one with "
            "medgen-train sample"
        )
    manifest = json.loads(manifest_path.read_text())
    with np.load(samples / "samples.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    return manifest, arrays


def run_description(samples: Path, manifest: dict) -> DataDescription:
    """The data description of the run that made ``samples`` (how it saw its items): from the
    samples manifest, or for older samples the checkpoint's ``data.json``."""
    stored = manifest["data"].get("description")
    if stored:
        return DataDescription(**stored)
    path = Path(manifest["run"]) / "checkpoints" / str(manifest.get("checkpoint")) / "data.json"
    if not path.is_file():
        raise DataError(f"{samples}: its manifest predates data descriptions and {path} is "
                        "gone; sample again")  # fmt: skip
    return DataDescription.from_json(path.read_text())


def load_reference(cache: Path, split: str, description, n_modes: bool, quiet: bool) -> dict:
    """Every item of ``split`` as the run saw its data (a pairs cache at the run's depth):
    images (M, C, *spatial), masks, z-bins, classes, validity; ``items``: the dataset."""
    latent = (read_manifest(cache) if (cache / "manifest.json").is_file() else {}).get("latent")
    if latent:  # samples are in data space: compare them with data, not latents
        raise DataError(
            f"--reference {cache}: a latent cache (medgen-train encode); evaluate against the "
            f"pixel cache it was encoded from, {latent['source']['cache']}"
        )
    ds = open_items(cache, split, description, modality_as="mode" if n_modes else "channels")
    images, masks, bins, classes, modes, valid = [], [], [], [], [], []
    for i in tqdm(range(len(ds)), desc="reference", disable=bars_disabled(quiet)):
        item = ds[i]
        images.append(item["image"].numpy())
        if "mask" in item:
            masks.append(item["mask"][0].numpy() > 0)
        if "mode" in item:
            modes.append(int(item["mode"]))
        if "valid" in item:
            valid.append(item["valid"][0].numpy())
        bins.append(int(item["z_bin"]))
        classes.append(int(item["class_id"]))
    return {
        "images": np.stack(images),
        "masks": np.stack(masks) if masks else None,
        "z_bin": np.array(bins),
        "class_id": np.array(classes),
        "mode": np.array(modes) if modes else None,
        "valid": np.stack(valid) if valid else None,
        "items": ds,
    }
