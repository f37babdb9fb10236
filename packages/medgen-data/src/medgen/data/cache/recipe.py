"""``CacheRecipe``: everything a cache build needs to know, as a typed, checked value.

The fields use only ``str``/``int``/``float``/``bool``, ``tuple[...]`` and ``X | None`` so that a
typed YAML loader can parse them. :meth:`CacheRecipe.check` raises a one-line
:class:`~medgen.data.errors.DataError` that starts with the offending key.

Which fields decide what (the shard key and the manifest depend on this split):

* ``out`` and ``sources`` say where: they are never stored (sources only by content hash);
* ``val_fraction``, ``test_fraction``, ``split_seed`` say how subjects are split: changing them
  rewrites the manifest and rebuilds no shard;
* every other field decides the shard contents (:meth:`CacheRecipe.processing`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from medgen.data.errors import DataError
from medgen.data.intensity import WINDOW_PRESETS
from medgen.data.layouts.source import LayoutSource
from medgen.data.slicing.thick import PROFILES

KINDS = ("slices", "volumes", "pairs")
ORIENTATIONS = ("", "LPS", "RAS")
Z_FROM = ("range", "mask", "foreground")
IN_PLANE = ("fit", "crop")
CLASS_FROM = ("none", "mask", "source")
SPLIT_FIELDS = ("val_fraction", "test_fraction", "split_seed")
LOCATION_FIELDS = ("out", "sources")


@dataclass(frozen=True)
class CacheRecipe:
    """What to cache and how (see the medgen-data README for a table of every key).

    ``kind``: ``"slices"`` (2D axial slices with local z-bins), ``"volumes"`` (fixed-size 3D
    crops) or ``"pairs"`` (thin volume + thick slices: simulated, or a subject table's real
    ``thick`` series). ``sources``: ``"mni152"``, NIfTI files, DICOM directories / ZIPs /
    ``.dcm`` files, globs, or ``.csv`` subject tables; or one
    dataset folder in a known layout, ``{layout: nnunet | decathlon | bids | auto, root: PATH}``
    (:class:`~medgen.data.layouts.source.LayoutSource`).
    """

    out: str = ""
    kind: str = "slices"
    sources: tuple[str, ...] | LayoutSource = ()
    modalities: tuple[str, ...] = ()
    labels: tuple[int, ...] = (0, 1)
    orientation: str = ""
    spacing: tuple[float, float, float] | None = None
    window: str = ""
    percentiles: tuple[float, float] = (0.5, 99.5)
    z_from: str = "range"
    z_range: tuple[int, int] | None = None
    foreground_threshold: float = -0.9
    n_bins: int = 10
    size: int = 64
    in_plane: str = "fit"
    class_from: str = "none"
    min_lesion_voxels: int = 1
    val_fraction: float = 0.0
    test_fraction: float = 0.0
    split_seed: int = 0
    shape: tuple[int, int, int] = (64, 64, 64)
    thickness: float = 5.0
    thick_spacing: float | None = None
    profile: str = "box"

    def __post_init__(self) -> None:
        for f in fields(self):  # a list from Python callers becomes the declared tuple
            value = getattr(self, f.name)
            if isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))
        if isinstance(self.sources, dict):  # {layout: ..., root: ...} from Python callers
            object.__setattr__(self, "sources", LayoutSource(**self.sources))

    def check(self) -> CacheRecipe:
        """Raise a DataError naming the first bad key; return ``self`` when all are valid."""
        _check_names(self)
        _check_numbers(self)
        _check_z(self)
        return self

    def processing(self) -> dict:
        """The fields that decide shard contents: all but ``out``, ``sources`` and the split."""
        d = asdict(self)
        for key in (*LOCATION_FIELDS, *SPLIT_FIELDS):
            d.pop(key)
        return d

    @property
    def n_bins_stored(self) -> int:
        """z-bins of the stored items: ``n_bins`` for slices, 1 for volumes and pairs."""
        return self.n_bins if self.kind == "slices" else 1


def _fail(key: str, message: str) -> None:
    raise DataError(f"{key}: {message}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _choice(key: str, value, allowed) -> None:
    if value not in allowed:
        shown = ", ".join(repr(a) for a in allowed)
        _fail(key, f"expected one of {shown}, got {value!r}")


def _check_names(r: CacheRecipe) -> None:
    if not isinstance(r.out, str) or not r.out:
        _fail("out", "the cache directory is required")
    _choice("kind", r.kind, KINDS)
    if isinstance(r.sources, LayoutSource):
        r.sources.check("sources")
    elif not isinstance(r.sources, tuple) or not r.sources:
        _fail(
            "sources", "list at least one of mni152, a NIfTI file, a DICOM dir/ZIP, a glob, a .csv"
        )
    for i, s in enumerate(r.sources if isinstance(r.sources, tuple) else ()):
        if not isinstance(s, str) or not s:
            _fail(f"sources[{i}]", f"expected a non-empty path, glob or 'mni152', got {s!r}")
    if not isinstance(r.modalities, tuple) or not all(
        isinstance(m, str) and m for m in r.modalities
    ):
        _fail("modalities", f"expected a list of modality names, got {r.modalities!r}")
    if len(set(r.modalities)) != len(r.modalities):
        _fail("modalities", f"names must be unique, got {list(r.modalities)}")
    _choice("orientation", r.orientation, ORIENTATIONS)
    if r.window:
        _choice("window", r.window, ("", *WINDOW_PRESETS))
    _choice("z_from", r.z_from, Z_FROM)
    _choice("in_plane", r.in_plane, IN_PLANE)
    _choice("class_from", r.class_from, CLASS_FROM)
    _choice("profile", r.profile, PROFILES)


def _check_numbers(r: CacheRecipe) -> None:
    if not isinstance(r.labels, tuple) or not r.labels:
        _fail("labels", "list the mask values allowed, at least (0,)")
    if not all(_is_int(v) and 0 <= v <= 255 for v in r.labels):
        _fail("labels", f"expected integers in [0, 255], got {list(r.labels)}")
    if 0 not in r.labels:
        _fail("labels", f"must include 0 (background), got {list(r.labels)}")
    if r.spacing is not None and (
        len(r.spacing) != 3 or not all(_is_number(s) and s > 0 for s in r.spacing)
    ):
        _fail("spacing", f"expected 3 positive numbers (z, y, x) in mm or null, got {r.spacing!r}")
    p = r.percentiles
    if len(p) != 2 or not all(_is_number(v) for v in p) or not 0 <= p[0] < p[1] <= 100:
        _fail("percentiles", f"expected (lo, hi) with 0 <= lo < hi <= 100, got {p!r}")
    if not _is_number(r.foreground_threshold):
        _fail("foreground_threshold", f"expected a number, got {r.foreground_threshold!r}")
    if not _is_int(r.n_bins) or r.n_bins < 1:
        _fail("n_bins", f"expected an integer >= 1, got {r.n_bins!r}")
    if not _is_int(r.size) or r.size < 8:
        _fail("size", f"expected an integer >= 8, got {r.size!r}")
    if not _is_int(r.min_lesion_voxels) or r.min_lesion_voxels < 1:
        _fail("min_lesion_voxels", f"expected an integer >= 1, got {r.min_lesion_voxels!r}")
    for key in ("val_fraction", "test_fraction"):
        value = getattr(r, key)
        if not _is_number(value) or not 0 <= value < 1:
            _fail(key, f"expected a fraction in [0, 1), got {value!r}")
    if r.val_fraction + r.test_fraction >= 1:
        _fail(
            "val_fraction",
            f"val_fraction + test_fraction = {r.val_fraction + r.test_fraction:g} "
            "leaves no training subject; expected a sum < 1",
        )
    if not _is_int(r.split_seed) or r.split_seed < 0:
        _fail("split_seed", f"expected an integer >= 0, got {r.split_seed!r}")
    if len(r.shape) != 3 or not all(_is_int(s) and s >= 1 for s in r.shape):
        _fail("shape", f"expected 3 positive integers (D, H, W), got {r.shape!r}")
    if not _is_number(r.thickness) or r.thickness <= 0:
        _fail("thickness", f"expected a positive number of mm, got {r.thickness!r}")
    if r.thick_spacing is not None and (not _is_number(r.thick_spacing) or r.thick_spacing <= 0):
        _fail("thick_spacing", f"expected a positive number of mm or null, got {r.thick_spacing!r}")


def _check_z(r: CacheRecipe) -> None:
    if r.z_range is None:
        return
    z = r.z_range
    if len(z) != 2 or not all(_is_int(v) for v in z) or not 0 <= z[0] <= z[1]:
        _fail("z_range", f"expected [z0, z1] with 0 <= z0 <= z1 (inclusive), got {z!r}")
    if r.z_from != "range":
        _fail("z_range", f"applies to z_from: range only (z_from is {r.z_from!r}); set it to null")
    count = z[1] - z[0] + 1
    if r.kind == "slices" and r.n_bins > count:
        _fail("n_bins", f"{r.n_bins} bins over the {count} slices of z_range [{z[0]}, {z[1]}]")
