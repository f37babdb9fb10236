"""BIDS datasets, read with pybids: ``sub-*/[ses-*/]anat/*_<suffix>.nii.gz`` + masks from
``derivatives/``.

```
bids/
  dataset_description.json
  sub-01/anat/sub-01_T1w.nii.gz, sub-01_FLAIR.nii.gz
  sub-02/ses-1/anat/sub-02_ses-1_T1w.nii.gz, ...
  derivatives/lesions/dataset_description.json      (with "GeneratedBy")
  derivatives/lesions/sub-01/anat/sub-01_desc-lesion_mask.nii.gz
```

Each (subject, session) is one record with one channel per ``anat`` suffix (``suffixes``, or
every suffix the dataset has), its mask the derivatives file with suffix ``mask_suffix`` of the
same subject and session. The sessions of one subject share a split (their ``group`` is the
subject), so a subject never straddles train and test. pybids is an optional dependency
(``pip install 'medgen-data[layouts]'``), imported only here. Checked, all problems at once: no
image with any of the suffixes, a session lacking one of them or holding two, a session
without a mask while others have one, a mask or channel on another grid.
"""

from __future__ import annotations

from pathlib import Path

from medgen.data.cache.sources import Subject
from medgen.data.errors import DataError
from medgen.data.layouts.dataset import LayoutDataset
from medgen.data.layouts.headers import grid, grid_mismatch
from medgen.data.layouts.problems import Problems

LAYOUT = "BIDS"
NIFTI = [".nii", ".nii.gz"]


def _bids_layout(root: Path):
    try:
        from bids import BIDSLayout
    except ImportError:
        raise DataError(
            f"{root}: reading a BIDS dataset needs pybids: pip install 'medgen-data[layouts]'"
        ) from None
    derivatives = (root / "derivatives").is_dir()
    try:
        return BIDSLayout(str(root), validate=False, derivatives=derivatives)
    except Exception as exc:  # pybids raises its own classes and ValueError
        reason = " ".join(str(exc).split())
        raise DataError(f"{root}: pybids cannot read it as BIDS ({reason})") from None


def _key(entities: dict) -> tuple[str, str]:
    return str(entities["subject"]), str(entities.get("session", ""))


def read_bids(
    root: str | Path, suffixes: tuple[str, ...] = (), mask_suffix: str = "mask"
) -> LayoutDataset:
    """Read and check the BIDS dataset at ``root`` (see the module docstring)."""
    root = Path(root)
    problems = Problems(root, LAYOUT)
    layout = _bids_layout(root)
    images = layout.get(scope="raw", datatype="anat", extension=NIFTI)
    found = sorted({f.entities["suffix"] for f in images})
    wanted = tuple(suffixes) or tuple(found)
    if not set(wanted) & set(found):
        asked = ", ".join(wanted) or "any"
        problems.add(root, f"no anat image with suffix {asked} (suffixes found: "
                           f"{', '.join(found) or 'none'})")  # fmt: skip
        problems.raise_if_any()
    by_session: dict[tuple[str, str], dict[str, list[Path]]] = {}
    for f in images:
        if f.entities["suffix"] in wanted:
            by_session.setdefault(_key(f.entities), {}).setdefault(f.entities["suffix"], []).append(
                Path(f.path)
            )
    sessions = {_key(f.entities) for f in layout.get(scope="raw", datatype="anat")}
    masks: dict[tuple[str, str], list[Path]] = {}
    for f in layout.get(scope="derivatives", suffix=mask_suffix, extension=NIFTI):
        masks.setdefault(_key(f.entities), []).append(Path(f.path))
    subjects = []
    for key in sorted(sessions):
        sub, ses = key
        folder = root / f"sub-{sub}" / (f"ses-{ses}" if ses else "") / "anat"
        channels = by_session.get(key, {})
        for suffix in wanted:
            files = channels.get(suffix, [])
            if not files:
                problems.add(folder, f"no {suffix} image (suffixes here: "
                                     f"{', '.join(sorted(channels)) or 'none'})")  # fmt: skip
            elif len(files) > 1:
                problems.add(files[1], f"a second {suffix} image of this session ({files[0].name})")
        mask = masks.get(key, [])
        if len(mask) > 1:
            problems.add(mask[1], f"a second {mask_suffix} of this session ({mask[0].name})")
        if masks and not mask:
            problems.add(
                folder, f"no derivatives *_{mask_suffix} mask, while other sessions have one"
            )
        if any(len(channels.get(s, [])) != 1 for s in wanted):
            continue
        files = {s: channels[s][0] for s in wanted}
        try:
            ref = grid(files[wanted[0]])
            for p in [*files.values(), *mask[:1]]:
                diff = grid_mismatch(ref, grid(p))
                if diff:
                    problems.add(p, f"not on the grid of {files[wanted[0]].name} ({diff})")
        except DataError as exc:
            problems.add(folder, str(exc))
        sid = f"sub-{sub}" + (f"_ses-{ses}" if ses else "")
        subjects.append(
            Subject(sid, files, mask[0] if mask else None, where=str(files[wanted[0]]),
                    group=f"sub-{sub}")
        )  # fmt: skip
    problems.raise_if_any()
    labels = {"background": (0,), "mask": (1,)} if masks else {}
    return LayoutDataset(
        "bids", root, subjects, wanted, labels, [], root / "dataset_description.json"
    )
