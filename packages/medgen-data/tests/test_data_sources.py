"""Source entries -> subjects: tables (with line numbers in every error), paths, globs, mni152."""

import re

import numpy as np
import pytest

from medgen.data import DataError, mni152_path, pseudonym, resolve_sources
from medgen.data.cache.sources import read_table, select_modalities, subject_name


@pytest.fixture
def files(tmp_path, tools):
    for name in ("a_t1", "a_t2", "b_t1", "b_t2", "a_mask", "b_mask", "c"):
        tools.save(tmp_path / f"{name}.nii.gz", np.zeros((4, 8, 8)))
    return tmp_path


HEADER = ["subject", "image", "mask", "class", "split", "modality"]


def test_table_with_modalities_masks_and_relative_paths(files, tools):
    (files / "sub").mkdir()
    csv = tools.table(
        files / "sub" / "t.csv",
        HEADER,
        [
            ["A", "../a_t1.nii.gz", "../a_mask.nii.gz", "1", "val", "t1"],
            ["A", "../a_t2.nii.gz", "", "", "", "t2"],  # mask/class/split given on one row
            ["B", str(files / "b_t2.nii.gz"), "", "0", "", "t2"],  # absolute path
            ["B", "../b_t1.nii.gz", "../b_mask.nii.gz", "0", "", "t1"],
        ],
    )
    a, b = read_table(csv)
    assert a.id == "A" and a.images == {
        "t1": files / "sub/../a_t1.nii.gz",
        "t2": files / "sub/../a_t2.nii.gz",
    }
    assert a.mask == files / "sub/../a_mask.nii.gz" and a.class_id == 1 and a.split == "val"
    assert b.class_id == 0 and b.split == "" and b.images["t2"] == files / "b_t2.nii.gz"
    assert a.where == f"{csv}:2" and b.where == f"{csv}:4"
    assert select_modalities([a, b], ()) == ("t1", "t2")
    assert select_modalities([a, b], ("t2",)) == ("t2",)
    assert a.pseudonym == pseudonym("subject:A") and re.fullmatch("[0-9a-f]{16}", a.pseudonym)


def test_table_without_modality_column_is_plain_image(files, tools):
    csv = tools.table(files / "t.csv", ["subject", "image"], [["A", "a_t1.nii.gz"]])
    (a,) = read_table(csv)
    assert a.images == {"image": files / "a_t1.nii.gz"} and a.mask is None and a.class_id is None


# (header, rows, error pattern); "CSV" stands for the table's path
TABLE_ERRORS = [
    (["subject", "image", "age"], [["A", "a_t1.nii.gz", "3"]], "CSV:1: unknown column 'age'"),
    (["subject", "mask"], [["A", "a_mask.nii.gz"]], "CSV:1: missing subject/image column"),
    (["subject", "image", "image"], [["A", "a", "b"]], "CSV:1: a column is named twice"),
    (HEADER, [["A", "nope.nii.gz", "", "", "", ""]], "CSV:2: image nope.nii.gz: no such file"),
    (
        HEADER,
        [["A", "a_t1.nii.gz", "", "", "", ""], ["B", "b_t1.nii.gz", "gone.nii.gz", "", "", ""]],
        "CSV:3: mask gone.nii.gz: no such",
    ),
    (
        HEADER,
        [["A", "a_t1.nii.gz", "", "", "", "t1"], ["A", "a_t2.nii.gz", "", "", "", "t1"]],
        "CSV:3: subject 'A' modality 't1' is already listed on line 2",
    ),
    (
        HEADER,
        [["A", "a_t1.nii.gz", "", "1", "", "t1"], ["A", "a_t2.nii.gz", "", "0", "", "t2"]],
        "CSV:3: subject 'A' class 0 differs from line 2 \\(1\\)",
    ),
    (
        HEADER,
        [
            ["A", "a_t1.nii.gz", "a_mask.nii.gz", "", "", "t1"],
            ["A", "a_t2.nii.gz", "b_mask.nii.gz", "", "", "t2"],
        ],
        "CSV:3: subject 'A' mask .*b_mask.nii.gz differs from line 2",
    ),
    (
        HEADER,
        [["A", "a_t1.nii.gz", "", "", "train", "t1"], ["A", "a_t2.nii.gz", "", "", "test", "t2"]],
        "CSV:3: subject 'A' split test differs from line 2 \\(train\\)",
    ),
    (HEADER, [["A", "a_t1.nii.gz", "", "x", "", ""]], "CSV:2: class 'x': expected an integer >= 0"),
    (HEADER, [["A", "a_t1.nii.gz", "", "-1", "", ""]], "CSV:2: class '-1': expected an integer"),
    (HEADER, [["A", "a_t1.nii.gz", "", "", "validation", ""]], "CSV:2: split 'validation': exp"),
    (HEADER, [["", "a_t1.nii.gz", "", "", "", ""]], "CSV:2: subject and image must not be empty"),
    (["subject", "image"], [["A", "a_t1.nii.gz", "extra"]], "CSV:2: 3 fields, the header has 2"),
]


@pytest.mark.parametrize("header,rows,pattern", TABLE_ERRORS, ids=range(len(TABLE_ERRORS)))
def test_table_errors_name_the_csv_and_line(files, tools, header, rows, pattern):
    csv = tools.table(files / "t.csv", header, rows)
    with pytest.raises(DataError, match="^" + pattern.replace("CSV", re.escape(str(csv)))) as e:
        read_table(csv)
    assert "\n" not in str(e.value)


def test_a_missing_modality_names_the_subject(files, tools):
    csv = tools.table(
        files / "t.csv",
        ["subject", "image", "modality"],
        [["A", "a_t1.nii.gz", "t1"], ["A", "a_t2.nii.gz", "t2"], ["B", "b_t1.nii.gz", "t1"]],
    )
    subjects = resolve_sources((str(csv),))
    with pytest.raises(DataError, match=rf"{re.escape(str(csv))}:4: subject 'B' has no 't2' image"):
        select_modalities(subjects, ())
    with pytest.raises(DataError, match="subject 'A' has no 'flair' image"):
        select_modalities(subjects, ("flair", "t1"))
    assert select_modalities(subjects, ("t1",)) == ("t1",)


def test_paths_globs_and_the_template(files):
    subjects = resolve_sources(("mni152", str(files / "c.nii.gz"), str(files / "b_*.nii.gz")))
    assert [s.id for s in subjects] == ["mni152", "c", "b_mask", "b_t1", "b_t2"]
    assert [s.entry for s in subjects] == [0, 1, 2, 2, 2]
    mni = subjects[0]
    assert mni.images == {"image": mni152_path("t1")} and mni.mask == mni152_path("wm")
    assert mni.mask_kind == "probability"
    assert subjects[1].images == {"image": files / "c.nii.gz"} and subjects[1].mask is None


def test_subject_names_drop_the_extension():
    from pathlib import Path

    names = ["x.nii.gz", "x.nii", "x.ZIP", "x.dcm", "x_dir", "x.y.nii.gz"]
    assert [subject_name(Path(n)) for n in names] == ["x", "x", "x", "x", "x_dir", "x.y"]


def test_source_errors_name_the_entry(files):
    with pytest.raises(DataError, match=r"^sources\[1\]: '.*/\*.nii' matches no file$"):
        resolve_sources(("mni152", str(files / "*.nii")))
    with pytest.raises(DataError, match=r"^sources\[0\]: .*missing.nii.gz: no such file"):
        resolve_sources((str(files / "missing.nii.gz"),))
    with pytest.raises(
        DataError, match=r"subject 'c' is listed by sources\[0\] and by sources\[1\]"
    ):
        resolve_sources((str(files / "c.nii.gz"), str(files / "c.nii.gz")))
