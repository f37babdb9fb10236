"""``medgen-train convert PATH OUT.nii.gz``: one series (or NIfTI) -> NIfTI with its geometry.

Written to a temporary name and renamed; voxels are float32 (CT in HU). Bad input is one line
on stderr and exit code 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

from medgen.train.commands.inspect import add_input_arguments, read_with_warnings
from medgen.train.commands.verb import add_verb


def register(subparsers) -> None:
    """Add ``convert`` to the CLI."""
    help_ = "DICOM series / ZIP (or NIfTI) -> NIfTI with its geometry"
    conv = add_verb(subparsers, "convert", convert_command, help_, __doc__)
    add_input_arguments(conv)
    conv.add_argument("out", type=Path, help="output file ending in .nii or .nii.gz")
    conv.add_argument(
        "--orient", choices=("LPS", "RAS"), help="reorient the voxel axes first (lossless)"
    )


def convert_command(args) -> int:
    """Read one series and write it as NIfTI."""
    from medgen.data import DataError, orientation_code, to_canonical, write_nifti

    if not str(args.out).endswith((".nii", ".nii.gz")):
        raise DataError(f"{args.out}: output must end in .nii or .nii.gz")
    vol, warned = read_with_warnings(args)
    if args.orient:
        vol = to_canonical(vol, args.orient)
    out = write_nifti(vol, args.out)
    for w in warned:
        print(f"medgen-train: warning: {w}", file=sys.stderr)
    z, y, x = vol.shape
    spacing = ", ".join(f"{s:g}" for s in vol.spacing)
    print(f"wrote {out}: {z} x {y} x {x} voxels, spacing {spacing} mm, {orientation_code(vol)}")
    return 0
