"""Source entries -> :class:`Subject` records: the template, paths, globs and CSV tables.

* ``"mni152"``: one subject ``mni152``: modality ``image`` = the T1 template, mask = the
  white-matter probability map (a probability: resized bilinearly, then ``> 0.5``).
* a path or glob: one subject per NIfTI file, DICOM directory, ZIP or ``.dcm`` file; modality
  ``image``, no mask; subject id = the name without its extension.
* a ``.csv`` table with the columns ``subject``, ``image`` (required), ``mask``, ``class``,
  ``split``, ``modality``, ``thick`` (optional); paths relative to the table's folder. ``thick``
  is a real thick series of the subject (``kind: pairs`` only, see
  :mod:`~medgen.data.cache.thick_series`). Rows of one subject
  with different modalities are co-registered images of it; ``mask``, ``class`` and ``split``
  given on any of its rows must agree.

Raw subject ids and paths live only in these in-memory records (and in error messages): a
cache stores :attr:`Subject.pseudonym` and content hashes.
"""

from __future__ import annotations

import csv
import glob
import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path

from medgen.data.cache.atomic import file_sha256
from medgen.data.errors import DataError
from medgen.data.templates import mni152_path
from medgen.data.volume import pseudonym

TEMPLATE = "mni152"
COLUMNS = ("subject", "image", "mask", "class", "split", "modality", "thick")
SPLITS = ("train", "val", "test")
PLAIN_MODALITY = "image"


@dataclass(frozen=True)
class Subject:
    """One subject: its co-registered images by modality, an optional mask, table fields.

    ``where`` says where it was listed (``"subjects.csv:4"``, ``"sources[1]"``) for errors,
    ``entry`` the index of its ``sources`` entry; ``mask_kind`` is ``"labels"`` (integer label
    map) or ``"probability"`` (values in [0, 1]). ``volumes`` gives, for a modality stored as
    one volume of a 4D file (Decathlon), its volume index. ``group`` ties records that must
    share a split (the sessions of one BIDS subject); empty: the record is its own group.
    ``thick``: a real thick series of the subject (the table's ``thick`` column), or None.
    """

    id: str
    images: dict[str, Path]
    mask: Path | None = None
    mask_kind: str = "labels"
    class_id: int | None = None
    split: str = ""
    where: str = ""
    entry: int = 0
    volumes: dict[str, int] = field(default_factory=dict)
    group: str = ""
    thick: Path | None = None

    @property
    def pseudonym(self) -> str:
        """The id a cache stores: ``pseudonym("subject:<id>")`` (16 hex characters)."""
        return pseudonym(f"subject:{self.id}")

    @property
    def group_pseudonym(self) -> str:
        """The pseudonym of the split group: ``pseudonym("subject:<group or id>")``."""
        return pseudonym(f"subject:{self.group or self.id}")

    def files(self) -> list[Path]:
        """Image files (by modality name), then the mask and the thick series, if any."""
        out = [self.images[m] for m in sorted(self.images)]
        return out + [p for p in (self.mask, self.thick) if p is not None]


def content_sha256(path: Path) -> str:
    """sha256 of a file, or of a directory's files (their sorted hashes; names play no part)."""
    if path.is_dir():
        hashes = sorted(file_sha256(p) for p in path.rglob("*") if p.is_file())
        if not hashes:
            raise DataError(f"{path}: empty directory; expected DICOM files")
        return hashlib.sha256("".join(hashes).encode()).hexdigest()
    return file_sha256(path)


def subject_name(path: Path) -> str:
    """The subject id of a plain source: its name without ``.nii.gz``/``.nii``/``.zip``/... ."""
    name = path.name
    for suffix in (".nii.gz", ".nii", ".zip", ".dcm"):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def template_subject() -> Subject:
    """The MNI152 T1 template with its white-matter probability map."""
    return Subject(
        TEMPLATE,
        {PLAIN_MODALITY: mni152_path("t1")},
        mni152_path("wm"),
        mask_kind="probability",
        where=TEMPLATE,
    )


def _plain(path: Path, where: str) -> Subject:
    return Subject(subject_name(path), {PLAIN_MODALITY: path}, where=where)


def _agree(table: str, line: int, subject: str, key: str, rows: dict, value) -> None:
    """Merge ``value`` of ``key`` into the subject's record; a disagreement is a DataError."""
    if value in ("", None):
        return
    old = rows.get(key)
    if old is not None and old[0] != value:
        raise DataError(
            f"{table}:{line}: subject {subject!r} {key} {value!s} differs from line {old[1]} "
            f"({old[0]!s}); every row of a subject must give the same {key}"
        )
    rows.setdefault(key, (value, line))


def _row_value(table: str, line: int, key: str, text: str):
    if key == "class" and text:
        if not text.isdigit():
            raise DataError(f"{table}:{line}: class {text!r}: expected an integer >= 0")
        return int(text)
    if key == "split" and text not in ("", *SPLITS):
        raise DataError(f"{table}:{line}: split {text!r}: expected train, val, test or empty")
    return text


def _existing(table: Path, line: int, column: str, text: str) -> Path:
    path = Path(text) if Path(text).is_absolute() else table.parent / text
    if not path.exists():
        raise DataError(f"{table}:{line}: {column} {text}: no such file or directory ({path})")
    return path


def read_table(table: str | Path) -> list[Subject]:
    """The subjects of a CSV table (see the module docstring); errors name the line."""
    table = Path(table)
    try:
        with table.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = [h.strip() for h in next(reader, [])]
            rows = [(reader.line_num, row) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{table}: cannot read the CSV table ({exc})") from exc
    unknown = [h for h in header if h not in COLUMNS]
    if unknown or "subject" not in header or "image" not in header:
        problem = f"unknown column {unknown[0]!r}" if unknown else "missing subject/image column"
        raise DataError(f"{table}:1: {problem}; expected columns {', '.join(COLUMNS)}")
    if len(set(header)) != len(header):
        raise DataError(f"{table}:1: a column is named twice ({', '.join(header)})")
    merged: dict[str, dict] = {}
    for line, row in rows:
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise DataError(f"{table}:{line}: {len(row)} fields, the header has {len(header)}")
        cells = {h: c.strip() for h, c in zip(header, row, strict=True)}
        subject, modality = cells["subject"], cells.get("modality", "") or PLAIN_MODALITY
        if not subject or not cells["image"]:
            raise DataError(f"{table}:{line}: subject and image must not be empty")
        record = merged.setdefault(subject, {"images": {}, "line": line})
        if modality in record["images"]:
            first = record["images"][modality][1]
            raise DataError(
                f"{table}:{line}: subject {subject!r} modality {modality!r} is already listed "
                f"on line {first}"
            )
        record["images"][modality] = (_existing(table, line, "image", cells["image"]), line)
        if cells.get("mask"):
            _agree(
                table, line, subject, "mask", record, _existing(table, line, "mask", cells["mask"])
            )
        if cells.get("thick"):
            thick = _existing(table, line, "thick", cells["thick"])
            _agree(table, line, subject, "thick", record, thick)
        for key in ("class", "split"):
            _agree(
                table, line, subject, key, record, _row_value(table, line, key, cells.get(key, ""))
            )
    return [
        Subject(
            subject,
            {m: p for m, (p, _) in sorted(r["images"].items())},
            r["mask"][0] if "mask" in r else None,
            class_id=r["class"][0] if "class" in r else None,
            split=r["split"][0] if "split" in r else "",
            where=f"{table}:{r['line']}",
            thick=r["thick"][0] if "thick" in r else None,
        )
        for subject, r in merged.items()
    ]


def expand(entry: str, index: int) -> list[Subject]:
    """The subjects of one ``sources`` entry (``index`` names it in errors)."""
    where = f"sources[{index}]"
    if entry == TEMPLATE:
        return [template_subject()]
    if glob.has_magic(entry):
        found = sorted(glob.glob(entry))
        if not found:
            raise DataError(f"{where}: {entry!r} matches no file")
        out = []
        for p in found:
            out += read_table(p) if p.lower().endswith(".csv") else [_plain(Path(p), where)]
        return out
    path = Path(entry)
    if not path.exists():
        raise DataError(f"{where}: {entry}: no such file or directory")
    if path.suffix.lower() == ".csv":
        return read_table(path)
    return [_plain(path, where)]


def resolve_sources(entries) -> list[Subject]:
    """All subjects of all ``sources`` entries, in order; a subject listed twice is an error.

    ``entries``: a tuple of paths, globs, tables and ``mni152``, or one
    :class:`~medgen.data.layouts.source.LayoutSource` (a dataset folder)."""
    if not isinstance(entries, tuple | list):
        from medgen.data.layouts.read import read_layout  # layouts build on this module

        return read_layout(entries).subjects
    subjects: list[Subject] = []
    seen: dict[str, Subject] = {}
    for i, entry in enumerate(entries):
        for s in expand(entry, i):
            if s.id in seen:
                raise DataError(
                    f"sources: subject {s.id!r} is listed by {seen[s.id].where} and by {s.where}"
                )
            seen[s.id] = s
            subjects.append(replace(s, entry=i))
    return subjects


def select_modalities(subjects: list[Subject], wanted: tuple[str, ...]) -> tuple[str, ...]:
    """The channel order: ``wanted``, or every modality found (sorted); each subject needs all."""
    names = tuple(wanted) or tuple(sorted({m for s in subjects for m in s.images}))
    for s in subjects:
        missing = [m for m in names if m not in s.images]
        if missing:
            raise DataError(
                f"{s.where}: subject {s.id!r} has no {missing[0]!r} image; every subject needs "
                f"the modalities {', '.join(names)}"
            )
    return names
