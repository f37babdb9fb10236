"""``build_cache(recipe)``: sources -> one shard per subject -> split -> manifest.

A build (1) checks the recipe and resolves the sources into subjects, (2) hashes every file of
every subject, (3) keys each subject's shard by the format, kind, processing recipe, subject
pseudonym and those hashes, (4) removes temporary files and shards no subject wants, (5) builds
the shards that are missing or untrusted (a progress bar; ``quiet`` hides it), then (6) splits
the subjects (it needs their classes), and (7) writes the manifest, last and atomically.
A killed build resumes with exactly the missing shards; changing only the split fields
rebuilds no shard. One builder per directory at a time (no locking).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from medgen.data.cache.arrays import BUILDERS
from medgen.data.cache.atomic import config_hash, exclusive
from medgen.data.cache.load import load_subject
from medgen.data.cache.recipe import LOCATION_FIELDS, CacheRecipe
from medgen.data.cache.shards import (
    FORMAT_VERSION,
    MANIFEST,
    SHARDS,
    shard_key,
    shard_name,
    sidecar_path,
    trusted,
    write_manifest,
    write_shard,
)
from medgen.data.cache.sources import Subject, content_sha256, resolve_sources, select_modalities
from medgen.data.cache.split import SPLITS, assign_splits
from medgen.data.cache.thick_series import load_thick
from medgen.data.errors import CacheError, CacheWarning, DataError


@dataclass
class BuildReport:
    """What a build did: shard files ``built`` now, ``reused`` from earlier runs, files
    ``removed`` (temporary, untrusted or stale), ``damaged`` (rebuilt, with a warning), and
    the ``manifest`` written."""

    directory: Path
    built: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)  # shards found damaged and rebuilt
    manifest: dict = field(default_factory=dict)

    def summary(self) -> str:
        """One line for a person: shards, items and the split."""
        m = self.manifest
        splits = ", ".join(
            f"{name} {s['n_items']} ({len(s['subjects'])} subject"
            f"{'' if len(s['subjects']) == 1 else 's'})"
            for name, s in m["splits"].items()
        )
        return (
            f"cache {self.directory}: {len(m['shards'])} shards ({len(self.built)} built, "
            f"{len(self.reused)} reused), {m['n_items']} {m['kind']}: {splits}; "
            f"per class {m['counts_per_class']}"
        )


def _check_thick(subjects: list[Subject], recipe: CacheRecipe, modalities) -> None:
    """A ``thick`` series (table column) needs ``kind: pairs`` and one modality."""
    s = next((s for s in subjects if s.thick is not None), None)
    if s is None:
        return
    table = s.where.rsplit(":", 1)[0]
    if recipe.kind != "pairs":
        raise DataError(
            f"{table}: column 'thick' (subject {s.id!r}) applies to kind: pairs only, "
            f"not {recipe.kind!r}; drop the column"
        )
    if len(modalities) != 1:
        raise DataError(
            f"{table}: column 'thick' (subject {s.id!r}) needs one modality, the recipe has "
            f"{', '.join(modalities)}; set modalities to the thin image's"
        )


def _check_subjects(subjects: list[Subject], recipe: CacheRecipe) -> None:
    with_mask = [s for s in subjects if s.mask is not None]
    needs = [f"{k}: mask" for k in ("z_from", "class_from") if getattr(recipe, k) == "mask"]
    if (with_mask and len(with_mask) < len(subjects)) or (needs and not with_mask):
        s = next(s for s in subjects if s.mask is None)
        why = f"{' and '.join(needs)} needs one" if needs else "other subjects have one"
        raise DataError(f"{s.where}: subject {s.id!r} has no mask ({why}); give every subject one")
    if recipe.class_from == "source":
        for s in subjects:
            if s.class_id is None:
                raise DataError(
                    f"class_from: 'source' needs a class for every subject; {s.where}: "
                    f"subject {s.id!r} has none"
                )


def _hash_sources(subjects, modalities, quiet: bool) -> list[list[str]]:
    bar = tqdm(
        subjects, desc="cache: hash sources", unit="subject", disable=True if quiet else None
    )
    hashes = []
    for s in bar:
        files = [s.images[m] for m in modalities] + ([s.mask] if s.mask is not None else [])
        thick = [f"thick:{content_sha256(s.thick)}"] if s.thick is not None else []
        hashes.append([content_sha256(f) for f in files] + thick)
    seen: dict[tuple, Subject] = {}
    for s, h in zip(subjects, hashes, strict=True):
        key = tuple(h[: len(modalities)])
        if key in seen:
            raise DataError(
                f"sources: subjects {seen[key].id!r} ({seen[key].where}) and {s.id!r} ({s.where}) "
                "have identical image files; a scan listed twice would leak across the split"
            )
        seen[key] = s
    return hashes


def prepare_cache_directory(directory: Path, names: list[str]) -> tuple[Path, list[str]]:
    """Ready ``directory`` for (re)writing a cache whose shards are named ``names``:
    ``(shard directory, names of the files removed)``. Refuses a ``manifest.json`` that is not
    a MedGen cache's; removes the manifest (the cache is incomplete until it is written
    again), temporary files and ``shard-*`` files not in ``names`` (or their sidecars); keeps
    the wanted shards for reuse. Call it holding :func:`~medgen.data.cache.atomic.exclusive`."""
    removed: list[str] = []
    manifest = directory / MANIFEST
    if manifest.exists():
        try:
            known = "format_version" in json.loads(manifest.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError):
            known = False
        if not known:
            raise CacheError(
                f"out: {directory} holds a {MANIFEST} that is not a MedGen cache's; "
                "choose another directory"
            )
    shard_dir = directory / SHARDS
    shard_dir.mkdir(parents=True, exist_ok=True)
    manifest.unlink(missing_ok=True)  # incomplete until the manifest is back
    for path in sorted(directory.glob(f".{MANIFEST}.*.tmp")):
        path.unlink()
        removed.append(path.name)
    wanted = set(names) | {sidecar_path(Path(n)).name for n in names}
    for path in sorted(shard_dir.iterdir()):
        stale = path.name.startswith("shard-") and path.name not in wanted
        if path.name.endswith(".tmp") or stale:
            path.unlink()
            removed.append(path.name)
    return shard_dir, removed


def _counts(arrays: dict[str, np.ndarray], n_bins: int) -> dict:
    z_bin = arrays.get("z_bin", np.zeros(len(arrays["class_id"]), np.int64))
    return {
        "counts_per_bin": np.bincount(z_bin, minlength=n_bins).tolist(),
        "counts_per_class": np.bincount(arrays["class_id"]).tolist(),
    }


def _build_one(subject, modalities, recipe, meta, shard_dir, name) -> dict:
    where = str(subject.images[modalities[0]])
    vols = load_subject(subject, modalities, recipe)
    extra = {}
    if subject.thick is not None:
        extra["thick"] = load_thick(subject, modalities[0], recipe)
    arrays, spacing = BUILDERS[recipe.kind](vols, recipe, subject.class_id, where, **extra)
    meta = {**meta, "spacing": list(spacing), **_counts(arrays, recipe.n_bins_stored)}
    return write_shard(shard_dir, name, arrays, meta)


def recipe_processing_hash(recipe: CacheRecipe, modalities) -> str:
    """The part of every shard key the recipe decides: a hash of the modalities and of every
    field of :meth:`CacheRecipe.processing` (all but where the data is and how it is split).
    The resolved ``modalities`` come last: the recipe's own ``modalities`` field (often ``()``,
    "all of them") must not overwrite them."""
    return config_hash({**recipe.processing(), "modalities": list(modalities)})


def build_cache(recipe: CacheRecipe, quiet: bool = False, wait: bool = False) -> BuildReport:
    """Build (or finish, or re-split) the cache ``recipe`` describes in ``recipe.out``.

    A build holds ``out/.lock``; a second one is refused, or with ``wait`` waits for the first
    (and then finds its shards finished)."""
    recipe.check()
    subjects = resolve_sources(recipe.sources)
    modalities = select_modalities(subjects, recipe.modalities)
    _check_subjects(subjects, recipe)
    _check_thick(subjects, recipe, modalities)
    hashes = _hash_sources(subjects, modalities, quiet)
    processing_hash = recipe_processing_hash(recipe, modalities)
    keys = [
        shard_key(recipe.kind, processing_hash, s.pseudonym, h)
        for s, h in zip(subjects, hashes, strict=True)
    ]
    names = [shard_name(k) for k in keys]
    directory = Path(recipe.out)
    with exclusive(directory, wait):
        return _build_locked(recipe, directory, subjects, modalities, hashes, names,
                             processing_hash, quiet)  # fmt: skip


def _build_locked(recipe, directory, subjects, modalities, hashes, names, processing_hash, quiet):
    report = BuildReport(directory)
    shard_dir, removed = prepare_cache_directory(directory, names)
    report.removed.extend(removed)
    sidecars, todo = {}, []
    for s, h, name in zip(subjects, hashes, names, strict=True):
        meta = trusted(shard_dir / name)
        if meta is not None and meta.get("processing_hash") == processing_hash:
            sidecars[name] = meta
            report.reused.append(name)
            continue
        if (shard_dir / name).exists() and sidecar_path(shard_dir / name).exists():
            # a finished shard whose bytes no longer match its sidecar: damaged on disk
            warnings.warn(
                f"{shard_dir / name}: damaged (sha256 differs from its sidecar); rebuilding it",
                CacheWarning,
                stacklevel=2,
            )
            report.damaged.append(name)
        for stale in (shard_dir / name, sidecar_path(shard_dir / name)):
            if stale.exists():
                stale.unlink()
                report.removed.append(stale.name)
        todo.append((s, h, name))
    bar = tqdm(todo, desc=f"cache {recipe.kind}", unit="subject", disable=True if quiet else None)
    for s, h, name in bar:
        meta = {"subject": s.pseudonym, "source_sha256": h, "processing_hash": processing_hash}
        sidecars[name] = _build_one(s, modalities, recipe, meta, shard_dir, name)
        report.built.append(name)
    shards = [sidecars[n] for n in names]
    splits = _split(subjects, shards, recipe)
    manifest = manifest_of(recipe, modalities, subjects, hashes, shards, splits)
    report.manifest = json.loads(json.dumps(manifest))  # the JSON types, as read back
    _warn_empty(report.manifest)
    write_manifest(directory, report.manifest)
    return report


def subject_class(sidecar: dict) -> int:
    """The class of a subject: the largest class among its items."""
    counts = sidecar["counts_per_class"]
    return max((c for c, n in enumerate(counts) if n), default=0)


def _split(subjects, shards, recipe) -> dict[str, str]:
    """``{subject pseudonym: split}``; records of one group (a BIDS subject's sessions) are
    split together: the group's class is its records' largest, its fixed split any record's."""
    by_pseudonym = {s.pseudonym: s for s in subjects}
    classes: dict[str, int] = {}
    fixed: dict[str, str] = {}
    for sc in shards:
        s = by_pseudonym[sc["subject"]]
        g = s.group_pseudonym
        classes[g] = max(classes.get(g, 0), subject_class(sc))
        fixed[g] = fixed.get(g) or s.split
    groups = assign_splits(
        classes, fixed, recipe.val_fraction, recipe.test_fraction, recipe.split_seed
    )
    splits = {s.pseudonym: groups[s.group_pseudonym] for s in subjects}
    present = set(splits.values())
    for name, fraction in (("val", recipe.val_fraction), ("test", recipe.test_fraction)):
        if fraction > 0 and name not in present:
            raise DataError(f"{name}_fraction: {fraction:g}, but the {name} split got no subject")
    if "train" not in present:
        raise DataError("split: no subject is in the train split; the table assigns all away")
    return splits


def _sum(lists: list[list[int]], length: int) -> list[int]:
    total = np.zeros(length, dtype=np.int64)
    for counts in lists:
        total[: len(counts)] += np.asarray(counts, dtype=np.int64)
    return total.tolist()


def _common_shape(shapes: list[list[int]]) -> list:
    return [dims[0] if len(set(dims)) == 1 else None for dims in zip(*shapes, strict=True)]


def _recipe_record(recipe, subjects, hashes) -> dict:
    record = {k: v for k, v in asdict(recipe).items() if k not in LOCATION_FIELDS}
    n_entries = len(recipe.sources) if isinstance(recipe.sources, tuple) else 1
    per_entry: dict[int, list] = {i: [] for i in range(n_entries)}
    for s, h in zip(subjects, hashes, strict=True):
        per_entry[s.entry].append([s.pseudonym, h, s.class_id, s.split])
    record["sources"] = [config_hash({"subjects": v}) for _, v in sorted(per_entry.items())]
    return record


def manifest_of(recipe, modalities, subjects, hashes, shards, splits) -> dict:
    """The manifest dict of a cache (see the medgen-data README, "Manifest")."""
    n_bins = recipe.n_bins_stored
    n_classes = max([len(sc["counts_per_class"]) for sc in shards] + [1])
    main = "thin" if recipe.kind == "pairs" else "image"
    record = _recipe_record(recipe, subjects, hashes)
    entries = [{**sc, "split": splits[sc["subject"]]} for sc in shards]
    split_info = {}
    for name in SPLITS:
        mine = [e for e in entries if e["split"] == name]
        if mine:
            split_info[name] = {
                "subjects": [e["subject"] for e in mine],
                "n_items": sum(e["n_items"] for e in mine),
                "counts_per_bin": _sum([e["counts_per_bin"] for e in mine], n_bins),
                "counts_per_class": _sum([e["counts_per_class"] for e in mine], n_classes),
            }
    return {
        "format_version": FORMAT_VERSION,
        "kind": recipe.kind,
        "recipe": record,
        "recipe_hash": config_hash(record),
        "modalities": list(modalities),
        "has_mask": any(s.mask is not None for s in subjects),
        "labels": list(recipe.labels),
        "n_bins": n_bins,
        "n_classes": n_classes,
        "item_shape": _common_shape([sc["shapes"][main][1:] for sc in shards]),
        "spacing": np.median([sc["spacing"] for sc in shards], axis=0).tolist(),
        "n_items": sum(sc["n_items"] for sc in shards),
        "counts_per_bin": _sum([sc["counts_per_bin"] for sc in shards], n_bins),
        "counts_per_class": _sum([sc["counts_per_class"] for sc in shards], n_classes),
        "splits": split_info,
        "shards": entries,
    }


def _warn_empty(manifest: dict) -> None:
    train = manifest["splits"]["train"]
    for what, counts in (("z-bin", "counts_per_bin"), ("class", "counts_per_class")):
        empty = [i for i, n in enumerate(train[counts]) if n == 0]
        if empty:
            warnings.warn(
                f"{manifest['kind']} cache: {what} {', '.join(map(str, empty))} has no item in "
                f"the train split (counts {train[counts]}); a model trained on it never sees it",
                CacheWarning,
                stacklevel=3,
            )
