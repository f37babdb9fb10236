"""``medgen-train inspect PATH``: what a scan holds, without patient identifiers.

Series are shown by their salted keys, and the reader's ``Volume.meta`` holds no identifiers.
Bad input (a :class:`medgen.data.DataError`) is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

from medgen.train.commands.verb import add_verb


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    """The input arguments ``inspect`` and ``convert`` share."""
    parser.add_argument("path", type=Path, help="DICOM directory, DICOMDIR, ZIP, .dcm or NIfTI")
    parser.add_argument("--series", help="series key (from inspect) or SeriesInstanceUID")
    parser.add_argument(
        "--resample-irregular",
        action="store_true",
        help="resample a DICOM series with gaps / non-uniform slice spacing onto uniform "
        "spacing (linear along the slice normal) instead of failing",
    )


def register(subparsers) -> None:
    """Add ``inspect`` to the CLI."""
    help_ = "what is in a scan: series, shape, spacing, orientation, intensities, warnings"
    ins = add_verb(subparsers, "inspect", inspect_command, help_, __doc__)
    add_input_arguments(ins)
    ins.add_argument("--json", action="store_true", help="machine-readable output")


def read_with_warnings(args):
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
    vol, warned = read_with_warnings(args)
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
    """Print what ``args.path`` holds (bad input: a DataError, one line, exit 2)."""
    info = describe(args)
    print(json.dumps(info, indent=2) if args.json else _human(info))
    return 0
