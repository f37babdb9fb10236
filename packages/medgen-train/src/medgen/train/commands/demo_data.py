"""``medgen-train demo-data OUT``: a small multi-subject data set to try every command on.

Built from the MNI152 template that ships with nilearn (no download): each subject is the
template under a random smooth deformation and intensity change, half of them with
synthetic lesions of several shapes and sizes and their masks; some subjects are written as
DICOM series, the rest as NIfTI. ``OUT/subjects.csv`` lists them (subject, image, mask,
class), ready for a recipe's ``sources``. With ``--layout nnunet|decathlon|bids`` the subjects (two
channels, T1 and T2, and their lesion labels) are written as a dataset in that layout instead,
to try ``medgen-train plan`` and a layout source on.
"""

from __future__ import annotations

import argparse

from medgen.data import write_demo_dataset, write_layout_dataset
from medgen.train.commands.verb import add_verb


def _command(args: argparse.Namespace) -> int:
    if args.layout:
        root = write_layout_dataset(
            args.out, args.layout, n_subjects=args.subjects, spacing_mm=args.spacing,
            seed=args.seed,
        )  # fmt: skip
        print(f"demo-data: {args.subjects} cases, T1 + T2 and lesion labels, {args.layout} "
              f"layout -> {root}")  # fmt: skip
        return 0
    csv = write_demo_dataset(
        args.out,
        n_subjects=args.subjects,
        dicom_subjects=args.dicom,
        spacing_mm=args.spacing,
        seed=args.seed,
    )
    print(f"demo-data: {args.subjects} subjects -> {csv}")
    return 0


def register(subparsers) -> None:
    """Add ``demo-data`` to the CLI."""
    help_ = "write a small multi-subject NIfTI + DICOM data set with lesions and a CSV"
    p = add_verb(subparsers, "demo-data", _command, help_, __doc__)
    p.add_argument("out", help="output directory (created)")
    p.add_argument("--subjects", type=int, default=6, help="number of subjects (default 6)")
    p.add_argument("--dicom", type=int, help="subjects written as DICOM (default: 2)")
    p.add_argument("--spacing", type=float, default=2.0, help="voxel size in mm (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layout", choices=("nnunet", "decathlon", "bids"),
                   help="write an nnU-Net v2 / Decathlon / BIDS dataset instead of a CSV")  # fmt: skip
