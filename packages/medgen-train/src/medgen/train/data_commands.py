"""``medgen-train inspect`` and ``medgen-train convert``: look at and convert input volumes.

``register(subparsers)`` adds both commands to the CLI's subparsers. Each command handles its
own bad input: a :class:`medgen.data.DataError` becomes exit code 2 and one line on stderr
(``medgen-train: error: ...``), never a traceback. Nothing printed comes from a patient field:
series are shown by their salted keys, and the reader's ``Volume.meta`` holds no identifiers.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

PROG = "medgen-train"
EXIT_BAD_INPUT = 2


def register(subparsers) -> None:
    """Add ``inspect`` and ``convert`` to an ``argparse`` subparsers object."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("path", type=Path, help="DICOM directory, DICOMDIR, ZIP, .dcm or NIfTI")
    common.add_argument("--series", help="series key (from inspect) or SeriesInstanceUID")
    common.add_argument(
        "--resample-irregular",
        action="store_true",
        help="resample a DICOM series with gaps / non-uniform slice spacing onto uniform "
        "spacing (linear along the slice normal) instead of failing",
    )
    ins = subparsers.add_parser(
        "inspect",
        parents=[common],
        help="what is in a scan: series, shape, spacing, orientation, intensities, warnings",
        description="Show the series found and the geometry of the one that would be read "
        "(the largest, or --series). Never prints patient identifiers.",
    )
    ins.add_argument("--json", action="store_true", help="machine-readable output")
    ins.set_defaults(func=inspect_command)
    conv = subparsers.add_parser(
        "convert",
        parents=[common],
        help="DICOM series / ZIP (or NIfTI) -> NIfTI with its geometry",
        description="Read one series and write it as NIfTI (written to a temporary name, then "
        "renamed). Voxels are float32 (CT in HU).",
    )
    conv.add_argument("out", type=Path, help="output file ending in .nii or .nii.gz")
    conv.add_argument(
        "--orient", choices=("LPS", "RAS"), help="reorient the voxel axes first (lossless)"
    )
    conv.set_defaults(func=convert_command)


def _fail(exc: Exception) -> int:
    text = " ".join(str(exc).split())  # one line, whatever the message holds
    print(f"{PROG}: error: {text}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _read(args):
    """(volume, [warning texts]) for ``args.path``; warnings are collected, not printed."""
    from medgen.data import read_volume

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vol = read_volume(
            args.path,
            series=args.series,
            on_irregular="resample" if args.resample_irregular else "error",
        )
    return vol, [" ".join(str(w.message).split()) for w in caught]


def describe(args) -> dict:
    """The facts ``inspect`` shows, as a JSON-ready dict (no patient field in it)."""
    import numpy as np

    from medgen.data import list_series, orientation_code
    from medgen.data.read import input_kind

    kind = input_kind(args.path)
    series, skipped = [], 0
    if kind == "dicom":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = list_series(args.path)
        skipped = found.skipped
        series = [
            {
                "key": s.key,
                "modality": s.modality,
                "slices": s.n_slices,
                "rows": s.rows,
                "cols": s.cols,
                "description": s.description,
            }
            for s in found
        ]
    vol, warned = _read(args)
    a = vol.array
    return {
        "path": str(args.path),
        "format": vol.meta.get("source_format", kind),
        "series": series,
        "files_skipped": skipped,
        "read": vol.id,
        "shape_zyx": list(vol.shape),
        "spacing_zyx_mm": [round(float(s), 6) for s in vol.spacing],
        "origin_lps_mm": [round(float(o), 4) for o in vol.origin],
        "orientation": orientation_code(vol),
        "modality": vol.modality,
        "intensity": {
            "min": float(a.min()),
            "max": float(a.max()),
            "mean": round(float(a.mean(dtype=np.float64)), 4),
            "p1": float(np.percentile(a, 1)),
            "p99": float(np.percentile(a, 99)),
        },
        "warnings": warned,
    }


def _human(info: dict) -> str:
    lines = [f"path:        {info['path']} ({info['format']})"]
    if info["series"]:
        extra = f", {info['files_skipped']} other file(s) ignored" if info["files_skipped"] else ""
        lines.append(f"series:      {len(info['series'])} found{extra}")
        for s in info["series"]:
            mark = "*" if s["key"] == info["read"] else " "
            lines.append(
                f"  {mark} {s['key']}  {s['modality']:<3} {s['slices']:>4} slices  "
                f"{s['rows']}x{s['cols']}  {s['description']!r}"
            )
    z, y, x = info["shape_zyx"]
    i = info["intensity"]
    lines += [
        f"shape:       {z} x {y} x {x} (z, y, x)",
        "spacing:     " + ", ".join(f"{s:g}" for s in info["spacing_zyx_mm"]) + " mm (z, y, x)",
        "origin:      " + ", ".join(f"{o:g}" for o in info["origin_lps_mm"]) + " mm (LPS)",
        f"orientation: {info['orientation']}",
        f"modality:    {info['modality']}",
        f"intensity:   min {i['min']:g}, p1 {i['p1']:g}, mean {i['mean']:g}, "
        f"p99 {i['p99']:g}, max {i['max']:g}",
        "warnings:    " + ("none" if not info["warnings"] else f"{len(info['warnings'])}"),
    ]
    lines += [f"  - {w}" for w in info["warnings"]]
    return "\n".join(lines)


def inspect_command(args) -> int:
    from medgen.data import DataError

    try:
        info = describe(args)
    except (DataError, OSError) as exc:  # OSError: unreadable file or directory
        return _fail(exc)
    print(json.dumps(info, indent=2) if args.json else _human(info))
    return 0


def convert_command(args) -> int:
    from medgen.data import DataError, orientation_code, to_canonical, write_nifti

    try:
        if not str(args.out).endswith((".nii", ".nii.gz")):
            raise DataError(f"{args.out}: output must end in .nii or .nii.gz")
        vol, warned = _read(args)
        if args.orient:
            vol = to_canonical(vol, args.orient)
        out = write_nifti(vol, args.out)
    except (DataError, OSError) as exc:  # OSError: unreadable file or directory
        return _fail(exc)
    for w in warned:
        print(f"{PROG}: warning: {w}", file=sys.stderr)
    z, y, x = vol.shape
    spacing = ", ".join(f"{s:g}" for s in vol.spacing)
    print(f"wrote {out}: {z} x {y} x {x} voxels, spacing {spacing} mm, {orientation_code(vol)}")
    return 0
