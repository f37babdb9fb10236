"""Run directories belong to their run.

A command that writes a run directory (``fit``, ``sample``, ``evaluate``, ``report``) first
*claims* it: the directory must be absent, empty, or marked as made by the same kind of
command (``.medgen-run.json``); an exclusive lock (``fcntl.flock`` on ``.lock``, released by
the kernel when the process dies) keeps a second writer out, and a refusal names the holder's
pid, host and command. Nothing of another run is ever deleted or rewritten: "start afresh"
(``--fresh``) moves the old directory aside to ``NAME.<timestamp>``. A directory this claim
created is removed again if the command fails before writing anything else.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import socket
import sys
import time
import uuid
from pathlib import Path

from medgen.data.cache.atomic import atomic_write_bytes, file_sha256
from medgen.train.errors import RunDirError

MARKER = ".medgen-run.json"
LOCK = ".lock"


def _describe(path: Path) -> str:
    try:
        info = json.loads(path.read_text())
        return f"pid {info['pid']} on {info['host']} ({info['command']}, since {info['since']})"
    except (OSError, ValueError, KeyError):
        return "another process"


def read_marker(path: str | Path) -> dict | None:
    """The marker of run directory ``path`` ({kind, run_id, created}), or None."""
    try:
        return json.loads((Path(path) / MARKER).read_text())
    except (OSError, ValueError):
        return None


def check_target(path: Path, kind: str) -> None:
    """Refuse, without writing, a ``path`` that a ``kind`` command may not use: a file, a
    directory of another kind or of no MedGen run, or one that cannot be written."""
    if path.exists() and not path.is_dir():
        raise RunDirError(f"{path}: is a file, not a run directory; choose another --out")
    if path.is_dir():
        marker = read_marker(path)
        if marker is None and any(p.name not in (LOCK,) for p in path.iterdir()):
            raise RunDirError(
                f"{path}: exists and is not a MedGen run directory (no {MARKER}); choose "
                "another --out (nothing was written)"
            )
        if marker is not None and marker.get("kind") != kind:
            raise RunDirError(
                f"{path}: is a {marker.get('kind')!r} directory, not a {kind!r} one; choose "
                "another --out"
            )
        if not os.access(path, os.W_OK | os.X_OK):
            raise RunDirError(f"{path}: not writable")
    else:
        parent = path.parent
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            raise RunDirError(f"{path}: cannot be created ({parent} is not a writable directory)")


class RunDir:
    """A claimed run directory: ``with RunDir(path, "fit").claim(fresh) as run: ...``."""

    def __init__(self, path: str | Path, kind: str) -> None:
        self.path = Path(path)
        self.kind = kind
        self.created = False
        self.moved_aside: Path | None = None
        self._fd: int | None = None

    def claim(self, fresh: bool = False) -> RunDir:
        """Check, optionally move the old directory aside, create, and lock."""
        if fresh and self.path.exists() and any(self.path.iterdir()):
            check_target(self.path, self.kind)  # never move a stranger's directory
            self._lock_or_fail(record=False)  # a running owner keeps its directory
            try:  # moved while locked: nobody starts writing into it in between
                aside = self.path.with_name(f"{self.path.name}.{time.strftime('%Y%m%d-%H%M%S')}")
                os.replace(self.path, aside)
                self.moved_aside = aside
            finally:
                self._unlock()
        check_target(self.path, self.kind)
        if not self.path.exists():
            try:
                self.path.mkdir(parents=True)
            except OSError as exc:
                raise RunDirError(f"{self.path}: cannot create ({exc.strerror})") from None
            self.created = True
        self._lock_or_fail()
        return self

    def _lock_or_fail(self, record: bool = True) -> None:
        lock = self.path / LOCK
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise RunDirError(f"{lock}: cannot open the lock ({exc.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunDirError(
                    f"{self.path}: in use by {_describe(lock)}; wait for it or choose another --out"
                ) from None
            raise
        if record:  # who holds it, for the message a second writer gets
            holder = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:3]]),
                "since": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder).encode(), 0)
        self._fd = fd

    def _unlock(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def mark(self) -> dict:
        """Write the marker if absent (call once the command starts writing); return it."""
        marker = read_marker(self.path)
        if marker is None:
            marker = {
                "kind": self.kind,
                "run_id": uuid.uuid4().hex,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }
            atomic_write_bytes(self.path / MARKER, json.dumps(marker, indent=2).encode())
        return marker

    def release(self, failed: bool = False) -> None:
        """After a failure, remove the directory if this claim created it and nothing but the
        lock and the marker is in it (still holding the lock); then unlock."""
        if failed and self.created and self._fd is not None:
            leftovers = [p for p in self.path.iterdir() if p.name not in (LOCK, MARKER)]
            if not leftovers:
                shutil.rmtree(self.path, ignore_errors=True)
        self._unlock()

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.release(failed=exc_type is not None)


class Staging:
    """Outputs written to ``OUT/.partial-<pid>/``, moved into ``OUT`` only when every one is
    written, and the manifest (the mark of a complete directory) last, so an interrupted
    command leaves no file that looks finished."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        for old in self.out.glob(".partial-*"):  # a killed earlier attempt of this directory
            shutil.rmtree(old, ignore_errors=True)
        self.dir = self.out / f".partial-{os.getpid()}"
        self.dir.mkdir(parents=True)

    def path(self, name: str) -> Path:
        """Where to write output ``name`` (a relative path) for now."""
        p = self.dir / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def commit(self, manifest_name: str, manifest: dict) -> Path:
        """Check every staged file (present, not empty), record sizes and sha256 in the
        manifest, move the files into place, then write the manifest."""
        files = {}
        for p in sorted(q for q in self.dir.rglob("*") if q.is_file()):
            size = p.stat().st_size
            if size == 0:
                raise RunDirError(f"{p}: written empty; nothing was moved into {self.out}")
            files[str(p.relative_to(self.dir))] = {
                "bytes": size,
                "sha256": file_sha256(p),
            }
        for name in files:
            target = self.out / name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.dir / name, target)
        shutil.rmtree(self.dir, ignore_errors=True)
        manifest = {**manifest, "files": files}
        atomic_write_bytes(self.out / manifest_name, json.dumps(manifest, indent=2).encode())
        return self.out / manifest_name

    def abandon(self) -> None:
        """Remove what was staged (after a failure)."""
        shutil.rmtree(self.dir, ignore_errors=True)
