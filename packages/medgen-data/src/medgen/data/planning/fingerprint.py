"""A dataset fingerprint, computed as nnU-Net v2 computes its own, plus what a generative
model's cache needs.

Per case (images read as stored, in array order ``(z, y, x)``; spacing in mm):

* ``shape``, ``spacing``, ``orientation`` (the 3-letter code of the file's axes);
* ``shape_after_crop``: the box of voxels where any channel is non-zero, holes filled
  (``scipy.ndimage.binary_fill_holes``), as nnU-Net crops before planning;
* intensities inside the foreground (label > 0, within that box), per channel: ``mean``,
  ``std``, ``median``, ``min``, ``max``, ``percentile_00_5``, ``percentile_99_5`` over every
  foreground voxel, and ``n`` samples drawn with replacement by
  ``numpy.random.RandomState(1234).choice`` (one generator per case, channels in order), where
  ``n = samples // number of cases``: nnU-Net's scheme (it uses ``samples = 10e7``);
* ``label_voxels`` per label value; ``lesions_mm3``: the volume of every connected component of
  label > 0 (``scipy.ndimage.label``, 26-connectivity), voxels x voxel volume;
* in canonical RAS orientation: ``foreground_box`` (inclusive ``[[z0, z1], [y0, y1], [x0, x1]]``
  of the head/body: a CT channel above -500 HU, an MR channel above -0.9 after 0.5/99.5
  percentile scaling, as the cache's ``z_from: foreground`` sees it) and ``lesion_per_slice``
  (label > 0 voxels of each axial slice that has any).

The dataset's ``intensity`` per channel is the statistics of all cases' samples pooled, as in
nnU-Net's ``dataset_fingerprint.json`` (``foreground_intensity_properties_per_channel``).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

import numpy as np

from medgen.data.cache.sources import Subject
from medgen.data.errors import DataError
from medgen.data.intensity import percentile_scale
from medgen.data.layouts.dataset import LayoutDataset
from medgen.data.orientation import orientation_code, to_canonical
from medgen.data.read import read_volume

SAMPLES = 10**7  # pooled foreground samples (nnU-Net: 10e7)
SEED = 1234  # nnU-Net's per-case seed
CT_NAME = re.compile(r"(^|[^a-z])ct([^a-z]|$)", re.IGNORECASE)
CT_BODY_HU = -500.0
MR_FOREGROUND = -0.9


def is_ct(channel: str) -> bool:
    """Whether a channel name says CT (nnU-Net's convention: the name ``CT``)."""
    return CT_NAME.search(channel) is not None


def _scipy():
    try:
        from scipy import ndimage
    except ImportError:
        raise DataError(
            "a dataset fingerprint needs scipy: pip install 'medgen-data[layouts]'"
        ) from None
    return ndimage


def _stats(values: np.ndarray) -> dict:
    if values.size == 0:
        return {k: float("nan") for k in ("mean", "std", "median", "min", "max",
                                           "percentile_00_5", "percentile_99_5")}  # fmt: skip
    p005, median, p995 = np.percentile(values, (0.5, 50.0, 99.5))
    return {
        "mean": float(np.mean(values)),
        "std": float(np.std(values)),
        "median": float(median),
        "min": float(np.min(values)),
        "max": float(np.max(values)),
        "percentile_00_5": float(p005),
        "percentile_99_5": float(p995),
    }


def _box(mask: np.ndarray) -> list[list[int]]:
    """Inclusive ``[[lo, hi], ...]`` of a non-empty boolean mask (empty: the whole array)."""
    out = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        out.append([int(hit[0]), int(hit[-1])] if hit.size else [0, mask.shape[axis] - 1])
    return out


@dataclass
class CaseFingerprint:
    """One case's fingerprint (module docstring); ``samples`` are not serialised."""

    case: str
    shape: list[int]
    spacing: list[float]
    orientation: str
    shape_after_crop: list[int]
    canonical_shape: list[int]
    canonical_spacing: list[float]
    foreground_box: list[list[int]]
    intensity: dict[str, dict]
    label_voxels: dict[str, int]
    lesions_mm3: list[float]
    lesion_per_slice: list[int]
    samples: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict:
        """JSON-ready (without the samples)."""
        d = asdict(self)
        d.pop("samples")
        return d


def case_fingerprint(
    subject: Subject, channels: tuple[str, ...], n_samples: int
) -> CaseFingerprint:
    """The fingerprint of one case (see the module docstring)."""
    ndimage = _scipy()
    vols = [read_volume(subject.images[c], volume_index=subject.volumes.get(c)) for c in channels]
    label = read_volume(subject.mask) if subject.mask is not None else None
    images = np.stack([v.array for v in vols])
    seg = np.rint(label.array).astype(np.int64) if label is not None else None
    nonzero = ndimage.binary_fill_holes((images != 0).any(axis=0))
    box = _box(nonzero)
    crop = tuple(slice(lo, hi + 1) for lo, hi in box)
    fg = seg[crop] > 0 if seg is not None else np.zeros(nonzero[crop].shape, bool)
    rs = np.random.RandomState(SEED)
    intensity, samples = {}, {}
    for c, image in zip(channels, images, strict=True):
        pixels = image[crop][fg]
        samples[c] = rs.choice(pixels, n_samples, replace=True) if pixels.size else pixels
        intensity[c] = _stats(pixels)
    spacing = vols[0].spacing
    voxel_mm3 = float(np.prod(spacing))
    label_voxels, lesions, per_slice = {}, [], []
    canon = [to_canonical(v, "RAS") for v in vols]
    if seg is not None:
        values, counts = np.unique(seg, return_counts=True)
        label_voxels = {str(int(v)): int(n) for v, n in zip(values, counts, strict=True)}
        components, n = ndimage.label(seg > 0, structure=np.ones((3, 3, 3), bool))
        sizes = np.bincount(components.ravel(), minlength=n + 1)[1:]
        lesions = [float(s * voxel_mm3) for s in sizes]
        canon_seg = to_canonical(label, "RAS").array > 0.5
        counts = canon_seg.sum(axis=(1, 2))
        per_slice = [int(n) for n in counts if n > 0]
    body = np.zeros(canon[0].shape, bool)
    for c, vol in zip(channels, canon, strict=True):
        if is_ct(c):
            body |= vol.array > CT_BODY_HU
        else:
            try:
                body |= percentile_scale(vol.array, 0.5, 99.5) > MR_FOREGROUND
            except ValueError:  # a constant channel has no foreground of its own
                pass
    return CaseFingerprint(
        case=subject.id,
        shape=list(vols[0].shape),
        spacing=[float(s) for s in spacing],
        orientation=orientation_code(vols[0]),
        shape_after_crop=[hi - lo + 1 for lo, hi in box],
        canonical_shape=list(canon[0].shape),
        canonical_spacing=[float(s) for s in canon[0].spacing],
        foreground_box=_box(body),
        intensity=intensity,
        label_voxels=label_voxels,
        lesions_mm3=lesions,
        lesion_per_slice=per_slice,
        samples=samples,
    )


@dataclass
class DatasetFingerprint:
    """Every case's fingerprint and the pooled foreground intensity statistics."""

    layout: str
    root: str
    channels: list[str]
    labels: dict[str, list[int]]
    cases: list[CaseFingerprint]
    intensity: dict[str, dict]
    n_test: int = 0
    fixed_splits: bool = False

    def to_dict(self) -> dict:
        """JSON-ready: the dataset fields, then ``cases`` without their samples."""
        d = {k: v for k, v in asdict(self).items() if k != "cases"}
        d["cases"] = [c.to_dict() for c in self.cases]
        return d

    def column(self, key: str) -> np.ndarray:
        """One per-case field stacked (e.g. ``spacing``: ``(n_cases, 3)``)."""
        return np.asarray([getattr(c, key) for c in self.cases], dtype=np.float64)

    def lesion_sizes(self) -> np.ndarray:
        """Every lesion's volume in mm^3, all cases pooled."""
        return np.asarray([v for c in self.cases for v in c.lesions_mm3], dtype=np.float64)


def fingerprint(
    dataset: LayoutDataset, samples: int = SAMPLES, progress=None
) -> DatasetFingerprint:
    """The fingerprint of the labelled cases of ``dataset`` (``progress``: wraps the loop)."""
    subjects = dataset.subjects
    if not subjects:
        raise DataError(f"{dataset.root}: no labelled case to fingerprint")
    per_case = int(samples // len(subjects))
    loop = progress(subjects) if progress is not None else subjects
    cases = [case_fingerprint(s, dataset.channels, per_case) for s in loop]
    pooled = {}
    for c in dataset.channels:
        parts = [case.samples[c] for case in cases if case.samples[c].size]
        pooled[c] = _stats(np.concatenate(parts) if parts else np.zeros(0, np.float32))
    return DatasetFingerprint(
        layout=dataset.layout,
        root=str(dataset.root),
        channels=list(dataset.channels),
        labels={k: list(v) for k, v in dataset.labels.items()},
        cases=cases,
        intensity=pooled,
        n_test=len(dataset.test),
        fixed_splits=any(s.split for s in subjects),
    )
