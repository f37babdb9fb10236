"""The ``data:`` section: which cache a run trains on, and the streaming loader over it.

A run reads a sharded cache built by ``medgen-train cache`` (``data.cache: PATH``), or names
a recipe (``data.recipe: mni152``, a bundled one, or a path to a cache YAML; any of its keys
can be overridden as ``data.recipe.size=16``) that ``fit`` builds (or reuses: shards are
keyed by content) before training. What the cache holds (channels, z-bins, classes, sizes,
spacing) comes from its manifest as a :class:`DataDescription`, saved with every checkpoint
(``data.json``) so that ``sample`` needs no cache. Training batches stream from a DataLoader
over the memory-mapped shards of ``train_split``, with the resumable, DDP-aware batch sampler
of :mod:`medgen.data` (shuffling and class-balanced oversampling).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated

from medgen.data import (
    CacheDataset,
    CacheRecipe,
    DataError,
    PairVolumes,
    ResumableBatchSampler,
    read_manifest,
)
from medgen.train.config.schema import Preset, setting, to_dict
from medgen.train.config.yaml_io import read_yaml
from medgen.train.engine.batches import LoaderBatches
from medgen.train.engine.distributed import DistContext
from medgen.train.errors import ConfigError
from medgen.train.latents.dataset import LatentDataset, is_latent_cache
from medgen.train.latents.space import describe_latent

RECIPES = Path(__file__).resolve().parents[1] / "configs" / "recipes"
DEPTH_MULTIPLE = 16  # pairs with data.depth null: padded depth divisible by 2^4 (UNet levels)


def find_recipe(name: str, key: str = "data.recipe") -> Path:
    """A recipe file at path ``name``, or the bundled recipe ``configs/recipes/<name>.yaml``."""
    for path in (Path(name), RECIPES / f"{name}.yaml"):
        if path.is_file():
            return path
    known = ", ".join(sorted(p.stem for p in RECIPES.glob("*.yaml")))
    raise ConfigError(f"{key}: {name!r} is neither a bundled recipe ({known}) nor a file")


def recipe_preset(name: str) -> dict:
    """The mapping of recipe ``name`` (see :func:`find_recipe`)."""
    return read_yaml(find_recipe(name))


def default_cache_root() -> Path:
    """Where recipes are cached: ``$MEDGEN_CACHE_DIR`` or ``~/.cache/medgen``."""
    return Path(os.environ.get("MEDGEN_CACHE_DIR") or Path.home() / ".cache" / "medgen")


def recipe_hash(recipe: CacheRecipe) -> str:
    """Hash of a recipe's content (everything but its output directory)."""
    d = to_dict(recipe)
    d.pop("out", None)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class DataSection:
    """Which cache and split to train on, and how batches are loaded."""

    cache: str = ""  # cache directory (built by `medgen-train cache`, or by data.recipe)
    recipe: Annotated[CacheRecipe | None, Preset(recipe_preset)] = None
    train_split: str = "train"
    eval_split: str = "val"  # held-out split scored at every evaluation ("" = none)
    modality_as: str = setting("channels", choices=("channels", "mode"))
    group_by_mode: bool = False  # modality_as=mode: every batch from one modality
    oversample: int = setting(1, min=1)  # class >= 1 items listed this many times per epoch
    crop: tuple[int, ...] | None = None  # volumes: random (D, H, W) crop at load time
    # pairs: thin slices per item (a random window of deeper items, -1 padding of shallower
    # ones, excluded from the loss); null: the deepest item's, rounded up to DEPTH_MULTIPLE
    depth: int | None = setting(None, min=1)
    num_workers: int = setting(0, min=0)
    prefetch_factor: int = setting(2, min=1)
    persistent_workers: bool = True
    pin_memory: bool | None = None  # None: on when training on CUDA
    verify: bool = True  # re-hash the shards before training

    def validate(self) -> None:
        """Cross-field rules."""
        if not self.cache and self.recipe is None:
            raise ConfigError("cache: name the cache directory, or give data.recipe")
        if self.cache and self.recipe is not None:
            raise ConfigError(
                f"cache: {self.cache!r} and data.recipe are both set; give one (a recipe builds "
                "its own cache, at data.recipe.out)"
            )
        if not self.train_split:
            raise ConfigError("train_split: must name a split of the cache (e.g. train)")
        if self.group_by_mode and self.modality_as != "mode":
            raise ConfigError("group_by_mode: needs modality_as=mode")
        if self.crop is not None and (len(self.crop) != 3 or min(self.crop) < 1):
            raise ConfigError(f"crop: expected 3 positive sizes (D, H, W), got {self.crop!r}")

    def cache_dir(self) -> Path:
        """The cache directory this section resolves to."""
        if self.recipe is None:
            return Path(self.cache)
        if self.recipe.out:
            return Path(self.recipe.out)
        return default_cache_root() / "recipes" / recipe_hash(self.recipe)[:16]


def with_recipe_out(data: DataSection) -> DataSection:
    """``data`` with the recipe's sources as absolute paths (the same recipe run from another
    directory names other files) and ``recipe.out`` set to where its cache goes."""
    from dataclasses import replace

    if data.recipe is None:
        return data
    sources = data.recipe.sources
    if isinstance(sources, tuple):
        sources = tuple(s if s == "mni152" else str(Path(s).absolute()) for s in sources)
    elif sources.root:  # a dataset folder in a known layout
        sources = replace(sources, root=str(Path(sources.root).absolute()))
    data = replace(data, recipe=replace(data.recipe, sources=sources))
    if data.recipe.out:
        return data
    return replace(data, recipe=replace(data.recipe, out=str(data.cache_dir())))


@dataclass
class DataDescription:
    """What the training data look like, as the task sees them (saved as ``data.json``)."""

    kind: str  # slices | volumes | pairs (thin volumes with their thick stack as a prior)
    spatial_dims: int
    channels: list[str]  # image channel names (modalities, or ["image"] with modality_as=mode)
    modalities: list[str]
    has_mask: bool
    labels: list[int]
    n_bins: int
    n_classes: int
    n_modes: int  # 0 unless modality_as=mode
    shape: list[int]  # spatial shape of an item (after a crop)
    spacing: list[float]  # mm, (z, y, x)
    orientation: str = ""  # the cache's canonical orientation (LPS / RAS), "" if it kept axes
    splits: dict = field(
        default_factory=dict
    )  # name -> {n_items, counts_per_bin, counts_per_class}
    cache: str = ""
    fingerprint: str = ""  # hash of the recipe and of every shard's sha256
    tokens: list[int] = field(default_factory=list)  # the z-bin x class tokens trained on
    latent: dict = field(default_factory=dict)  # latent space: autoencoder, scale factor

    def to_json(self) -> bytes:
        """The JSON bytes written as ``data.json``."""
        return json.dumps(asdict(self), indent=2).encode()

    @classmethod
    def from_json(cls, text: str | bytes) -> DataDescription:
        """The inverse of :meth:`to_json`."""
        return cls(**json.loads(text))


def describe(manifest: dict, data: DataSection, cache: Path) -> DataDescription:
    """The :class:`DataDescription` of a cache manifest under ``data``'s presentation."""
    kind = manifest["kind"]
    if data.depth is not None and kind != "pairs":
        raise ConfigError(f"data.depth: applies to 'pairs' caches; {cache} is a {kind!r} cache")
    modalities = list(manifest["modalities"])
    if kind == "pairs":
        spatial = list(_pairs(cache, data).shape)
    else:
        spatial = list(manifest["item_shape"])[1:]
    if data.crop is not None:
        if kind != "volumes":
            raise ConfigError("data.crop: random crops apply to volume caches only")
        if any(c > s for c, s in zip(data.crop, spatial, strict=True)):
            raise ConfigError(f"data.crop: {list(data.crop)} exceeds the cached volumes {spatial}")
        spatial = list(data.crop)
    mode = data.modality_as == "mode"
    shards = "".join(s["sha256"] for s in manifest["shards"])
    fingerprint = hashlib.sha256((manifest["recipe_hash"] + shards).encode()).hexdigest()
    return DataDescription(
        kind=kind,
        spatial_dims=len(spatial),
        channels=["image"] if mode else modalities,
        modalities=modalities,
        has_mask=bool(manifest["has_mask"]),
        labels=list(manifest["labels"]),
        n_bins=int(manifest["n_bins"]),
        n_classes=int(manifest["n_classes"]),
        n_modes=len(modalities) if mode else 0,
        shape=[int(s) for s in spatial],
        spacing=[float(s) for s in manifest["spacing"]],
        orientation=manifest["recipe"].get("orientation", ""),
        splits={
            name: {k: v for k, v in split.items() if k != "subjects"}
            for name, split in manifest["splits"].items()
        },
        cache=str(cache),
        fingerprint=fingerprint,
        latent=describe_latent(manifest, cache),
    )


def _pairs(cache: Path, data: DataSection, split: str | None = None) -> PairVolumes:
    """A pairs cache as fixed-depth volumes (``split`` None: the first split with items)."""
    manifest = read_manifest(cache)
    if split is None:
        split = next(k for k, v in manifest["splits"].items() if v.get("n_items"))
    try:
        return PairVolumes(
            CacheDataset(cache, split, verify=data.verify, modality_as=data.modality_as),
            depth=data.depth,
            multiple=DEPTH_MULTIPLE if data.depth is None else 1,
        )
    except DataError as exc:
        raise ConfigError(f"data.depth: {' '.join(str(exc).split())}") from None


def open_items(cache: Path, split: str, description: DataDescription, modality_as="channels"):
    """The items of ``split`` as a run trained on them saw them (sample's priors, evaluate's
    references): a pairs cache at the run's depth, any other cache as stored."""
    ds = CacheDataset(cache, split, modality_as=modality_as)
    if description.kind == "pairs":
        return PairVolumes(ds, depth=int(description.shape[0]))
    return ds


def open_split(cache: Path, split: str, data: DataSection, key: str) -> CacheDataset:
    """The dataset of ``split``; a missing or empty split is a ConfigError naming ``key``."""
    manifest = read_manifest(cache)
    have = {k: v.get("n_items", 0) for k, v in manifest["splits"].items()}
    if not have.get(split):
        listed = ", ".join(f"{k} ({n} items)" for k, n in have.items()) or "none"
        raise ConfigError(f"{key}: split {split!r} of {cache} is empty or absent; splits: {listed}")
    if is_latent_cache(manifest):  # made by medgen-train encode: whole items, all channels
        if data.crop is not None or data.modality_as != "channels":
            name = "crop" if data.crop is not None else "modality_as"
            raise ConfigError(
                f"data.{name}: {getattr(data, name)!r} needs the pixel cache; {cache} is a "
                "latent cache"
            )
        return LatentDataset(cache, split, verify=data.verify)
    if manifest["kind"] == "pairs":
        return _pairs(cache, data, split)
    return CacheDataset(
        cache,
        split,
        verify=data.verify,
        modality_as=data.modality_as,
        crop=data.crop,
    )


def check_classes(description: DataDescription, split: str) -> None:
    """Every class (and, for slices, every z-bin) must occur in the training split."""
    counts = description.splits[split]
    per_class = list(counts.get("counts_per_class") or [])
    per_class += [0] * (description.n_classes - len(per_class))
    absent = [c for c, n in enumerate(per_class) if n == 0]
    if absent:
        raise ConfigError(
            f"data.train_split: class {absent} absent from split {split!r} of "
            f"{description.cache} (counts per class {per_class}); the model could not learn it"
        )
    per_bin = counts.get("counts_per_bin") or []
    empty = [b for b, n in enumerate(per_bin) if n == 0]
    if description.kind == "slices" and empty:
        raise ConfigError(
            f"data.train_split: z-bin {empty} empty in split {split!r} of {description.cache} "
            f"(counts per bin {per_bin}); lower n_bins in the cache recipe"
        )


def make_batches(
    dataset: CacheDataset,
    data: DataSection,
    batch_size: int,
    seed: int,
    ctx: DistContext,
    cuda: bool,
) -> LoaderBatches:
    """The training batch source over ``dataset`` (resumable, sharded over ranks); every
    class >= 1 is oversampled ``data.oversample`` times."""
    labels = dataset.labels()
    try:
        sampler = ResumableBatchSampler(
            len(dataset),
            batch_size,
            seed=seed,
            rank=ctx.rank,
            world_size=ctx.world_size,
            labels=labels if data.oversample > 1 else None,
            oversample=data.oversample,
            positive=tuple(range(1, int(labels.max()) + 1)) or (1,),
            groups=dataset.groups() if data.group_by_mode else None,
        )
    except DataError as exc:  # e.g. no full global batch in an epoch
        raise ConfigError(
            f"training.batch_size: {batch_size} x {ctx.world_size} rank(s) does not fit split "
            f"{data.train_split!r} of {len(dataset)} items ({' '.join(str(exc).split())})"
        ) from None
    return LoaderBatches(
        dataset,
        sampler,
        num_workers=data.num_workers,
        pin_memory=cuda if data.pin_memory is None else data.pin_memory,
        prefetch_factor=data.prefetch_factor,
        persistent_workers=data.persistent_workers,
    )
