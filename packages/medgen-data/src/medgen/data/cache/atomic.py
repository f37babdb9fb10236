"""Atomic file writes and content hashes, the two things every cache file relies on.

A file is written to a temporary name beside its target (``.<name>.<random>.tmp``), flushed,
fsynced, renamed into place and the directory fsynced, so a crash leaves either the old file,
the new one, or a ``.tmp`` leftover that no reader trusts.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path

from medgen.data.errors import CacheError


def config_hash(config: dict) -> str:
    """sha256 of the canonical JSON form of ``config``."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 (hex) of the bytes of the file at ``path``, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def temp_file(path: Path, suffix: str = ".tmp") -> tuple[int, str]:
    """Create ``.<name>.<random><suffix>`` beside ``path`` (mode 0666 minus the umask, unlike
    ``mkstemp``'s 0600, so a cache shared by a group stays readable). Returns (fd, name)."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}{suffix}"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), str(tmp)
        except FileExistsError:
            continue
    raise CacheError(f"{path.parent}: cannot create a temporary file for {path.name}")


def fsync_dir(directory: Path) -> None:
    """Persist a rename in ``directory`` (best effort where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(
    path: Path, data: bytes, write: Callable[[object, bytes], object] | None = None
) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same directory and a rename.

    ``write(fh, data)`` replaces ``fh.write(data)`` (e.g. a chunked writer); the file is then
    flushed, fsynced, renamed into place and the directory fsynced.
    """
    fd, tmp = temp_file(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            if write is None:
                fh.write(data)
            else:
                write(fh, data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def exclusive(directory: Path, wait: bool = False):
    """Hold ``directory/.lock`` exclusively (``fcntl.flock``; the kernel releases it when the
    process dies): a second builder of the same cache is refused (or, with ``wait``, waits
    for the first) instead of interleaving shards. The lock file records only the pid."""
    directory.mkdir(parents=True, exist_ok=True)
    lock = directory / ".lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            os.close(fd)
            raise
        holder = lock.read_text().strip() or "?"
        if not wait:
            os.close(fd)
            raise CacheError(
                f"{directory}: another process (pid {holder}) is building this cache; wait "
                "for it to finish"
            ) from None
        fcntl.flock(fd, fcntl.LOCK_EX)  # the other builder finishes first
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
