"""Run directories belong to their run: a lock, a marker of the kind, nothing of another run
deleted, --fresh moves aside, staged outputs appear only complete."""

import json
import multiprocessing
import os

import pytest

from medgen.train.errors import RunDirError
from medgen.train.rundir import MARKER, RunDir, Staging, check_target


def _hold(path, ready, release):
    with RunDir(path, "fit").claim():
        ready.set()
        release.wait(30)


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_hold, args=(tmp_path / "run", ready, release))
    proc.start()
    try:
        assert ready.wait(30)
        with pytest.raises(RunDirError, match=rf"in use by pid {proc.pid} on "):
            RunDir(tmp_path / "run", "fit").claim()
    finally:
        release.set()
        proc.join(30)
    RunDir(tmp_path / "run", "fit").claim().release()  # free again once the holder exits


def test_kinds_foreign_directories_and_files_are_refused_without_writing(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "thesis.tex").write_text("x")
    with pytest.raises(RunDirError, match="not a MedGen run directory"):
        RunDir(tmp_path / "notes", "fit").claim()
    assert sorted(p.name for p in (tmp_path / "notes").iterdir()) == ["thesis.tex"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunDirError, match="is a file"):
        check_target(tmp_path / "file", "fit")
    with RunDir(tmp_path / "samples", "samples").claim() as run:
        run.mark()
    with pytest.raises(RunDirError, match="is a 'samples' directory, not a 'fit' one"):
        RunDir(tmp_path / "samples", "fit").claim()


def test_a_directory_that_cannot_be_written_is_refused(readonly_dir):
    with pytest.raises(RunDirError, match="cannot be created"):
        check_target(readonly_dir / "run", "fit")


def test_fresh_moves_aside_and_a_failed_claim_leaves_nothing(tmp_path):
    path = tmp_path / "run"
    with RunDir(path, "fit").claim() as run:
        run.mark()
        (path / "metrics.csv").write_text("step\n1\n")
    run = RunDir(path, "fit").claim(fresh=True)
    run.release()
    assert run.moved_aside is not None and (run.moved_aside / "metrics.csv").is_file()
    assert json.loads((run.moved_aside / MARKER).read_text())["kind"] == "fit"
    new = tmp_path / "new"
    with pytest.raises(ValueError), RunDir(new, "fit").claim():
        raise ValueError("config check failed")
    assert not new.exists()  # created by the failed claim, so removed again


def test_staging_moves_files_in_only_when_complete(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    stage = Staging(out)
    stage.path("a.txt").write_text("a")
    stage.path("nifti/b.txt").write_text("b")
    assert not (out / "a.txt").exists()  # not yet
    stage.commit("manifest.json", {"kind": "x"})
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["files"]) == {"a.txt", "nifti/b.txt"}
    assert (out / "nifti" / "b.txt").read_text() == "b"
    broken = Staging(out)
    broken.path("empty.txt").touch()
    with pytest.raises(RunDirError, match="written empty"):
        broken.commit("manifest2.json", {})
    assert not (out / "empty.txt").exists() and not (out / "manifest2.json").exists()
    Staging(out)  # a new attempt removes what an interrupted one left
    assert [p.name for p in out.glob(".partial-*")] == [f".partial-{os.getpid()}"]
