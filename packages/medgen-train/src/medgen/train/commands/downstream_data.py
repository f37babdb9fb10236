"""The data of a ``downstream`` run: a real split with masks (:class:`Split`), a samples
directory as synthetic training items (:class:`Synthetic`), and the checks that keep the test
subjects apart from everything trained on (the segmenter's data and the generator's)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medgen.data import CacheDataset, DataError, read_manifest
from medgen.data.cache.atomic import file_sha256
from medgen.train.commands.evaluate_inputs import read_samples
from medgen.train.commands.paired_plan import parse_reference
from medgen.train.errors import ConfigError
from medgen.train.evaluation.downstream import ArrayItems


def image_hashes(manifest: dict, split: str) -> set[str]:
    """sha256 of every image file (not mask: empty masks are alike) of ``split``'s subjects."""
    n = len(manifest["modalities"])
    shards = [s for s in manifest["shards"] if s["split"] == split]
    return {h for s in shards for h in s.get("source_sha256", [])[:n]}


class Split:
    """One split of a cache with masks: its dataset, subjects and scan-file hashes."""

    def __init__(self, key: str, text: str, default: str) -> None:
        self.key = key
        self.cache, self.split = parse_reference(text, default)
        try:
            manifest = read_manifest(self.cache)
        except DataError as exc:
            raise ConfigError(f"{key}: {' '.join(str(exc).split())}") from None
        have = {k: v.get("n_items", 0) for k, v in manifest["splits"].items()}
        if not have.get(self.split):
            listed = ", ".join(f"{k} ({n} items)" for k, n in have.items()) or "none"
            raise ConfigError(
                f"{key}: split {self.split!r} of {self.cache} is empty or absent; splits: {listed}"
            )
        if manifest["kind"] not in ("slices", "volumes") or not manifest["has_mask"]:
            what = "has no masks" if manifest["kind"] != "pairs" else "is a pairs cache"
            raise ConfigError(
                f"{key}: {self.cache} {what}; segmentation needs a slices or volumes cache with "
                "masks"
            )
        self.manifest = manifest
        self.sha256 = file_sha256(self.cache / "manifest.json")
        self.subjects = set(manifest["splits"][self.split]["subjects"])
        self.scans = image_hashes(manifest, self.split)
        try:
            self.dataset = CacheDataset(self.cache, self.split)
        except DataError as exc:
            raise ConfigError(f"{key}: {' '.join(str(exc).split())}") from None

    @property
    def name(self) -> str:
        """``CACHE:split``."""
        return f"{self.cache}:{self.split}"

    def record(self) -> dict:
        """Provenance for the protocol."""
        return {
            "data": self.name,
            "n_items": len(self.dataset),
            "n_subjects": len(self.subjects),
            "hash_name": "manifest sha256",
            "sha256": self.sha256,
            "recipe_hash": self.manifest["recipe_hash"],
        }


def refuse_overlap(test: Split, subjects: set, scans: set, what: str) -> None:
    """A ConfigError when ``test`` shares a subject or a scan file with ``what``."""
    shared = sorted(test.subjects & subjects)
    if shared:
        raise ConfigError(
            f"test: {test.name} shares subject(s) {', '.join(shared)} with {what}; the test "
            "split must hold subjects nothing was trained on"
        )
    if test.scans & scans:
        raise ConfigError(
            f"test: {test.name} shares {len(test.scans & scans)} scan file(s) (by sha256) with "
            f"{what}; the test split must hold scans nothing was trained on"
        )


def check_like(key: str, split: Split, test: Split) -> None:
    """A ConfigError naming ``key`` when ``split`` and ``test`` come from unlike caches."""
    a, b = split.manifest, test.manifest
    for field in ("kind", "item_shape", "modalities"):
        if a[field] != b[field]:
            raise ConfigError(
                f"{key}: {split.name} has {field} {a[field]}, the test data {test.name} "
                f"{b[field]}; train and test on caches of one recipe"
            )


class Synthetic:
    """The (image, mask) items of a samples directory, checked against the test data."""

    def __init__(self, directory: str, test: Split) -> None:
        self.dir = Path(directory)
        try:
            manifest, arrays = read_samples(self.dir)
        except (DataError, OSError, ValueError) as exc:
            raise ConfigError(f"synthetic: {' '.join(str(exc).split())}") from None
        channels = manifest.get("channels", [])
        if "masks" not in arrays:
            raise ConfigError(
                f"synthetic: {self.dir} holds samples without a mask channel (channels "
                f"{channels}); sample a model trained with task.generate [image, mask]"
            )
        if "mode" in arrays:
            raise ConfigError(
                f"synthetic: {self.dir} holds one modality per sample (modality_as: mode); "
                "segmentation needs every modality of an item together"
            )
        expected = [len(test.manifest["modalities"]), *test.manifest["item_shape"][1:]]
        if list(arrays["images"].shape[1:]) != expected:
            raise ConfigError(
                f"synthetic: {self.dir} samples are {list(arrays['images'].shape[1:])} "
                f"(channels, *size), the test data {test.name} {expected}"
            )
        if not np.isfinite(arrays["images"]).all():
            raise ConfigError(f"synthetic: {self.dir / 'samples.npz'} holds NaN or inf images")
        recorded = manifest.get("files", {}).get("samples.npz", {}).get("sha256")
        self.sha256 = file_sha256(self.dir / "samples.npz")
        if recorded and recorded != self.sha256:
            raise ConfigError(
                f"synthetic: {self.dir / 'samples.npz'} differs from its manifest (sha256); "
                "sample again"
            )
        self.items = ArrayItems(arrays["images"], arrays["masks"])
        self.manifest = manifest
        self.generator_data = manifest.get("data", {})

    def check_leak(self, test: Split, say) -> str:
        """Refuse a generator trained on a test subject; says how the check went."""
        cache, split = self.generator_data.get("cache"), self.generator_data.get("train_split")
        if not cache or not split:
            say(f"downstream: warning: {self.dir} does not name the generator's training data; "
                "cannot check it against the test subjects")  # fmt: skip
            return "not checked: the samples manifest names no training data"
        try:
            manifest = read_manifest(cache)
            info = manifest["splits"][split]
        except (DataError, KeyError):
            say(f"downstream: warning: the generator's training data {cache}:{split} is not "
                "readable here; cannot check it against the test subjects")  # fmt: skip
            return f"not checked: {cache}:{split} not readable"
        scans = image_hashes(manifest, split)
        what = f"the generator's training split {cache}:{split}"
        refuse_overlap(test, set(info["subjects"]), scans, what)
        return f"checked: no subject or scan of {cache}:{split} in the test split"

    def record(self) -> dict:
        """Provenance for the protocol."""
        return {
            "data": str(self.dir),
            "n_items": len(self.items),
            "hash_name": "samples.npz sha256",
            "sha256": self.sha256,
            "samples_request_hash": self.manifest.get("request_hash"),
            "generator_run": self.manifest.get("run"),
            "generator_step": self.manifest.get("step"),
            "generator_training_data": (
                f"{self.generator_data.get('cache')}:{self.generator_data.get('train_split')}"
            ),
        }
