"""Shared fixtures of medgen-train's tests."""

import os
import subprocess

import pytest


def _mount_tmpfs(path, options):
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")


@pytest.fixture
def small_disk(tmp_path):
    """A 2.5 MiB tmpfs (root only): the place to run out of disk space."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path = tmp_path / "disk"
    path.mkdir()
    _mount_tmpfs(path, "size=2560k")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)  # lazy: open handles


@pytest.fixture
def readonly_dir(tmp_path):
    """A directory nobody can write into: a read-only tmpfs when running as root (root writes
    through permission bits), else a directory with mode 0500."""
    path = tmp_path / "readonly"
    path.mkdir()
    if os.geteuid() == 0:
        _mount_tmpfs(path, "ro,size=1m")
        try:
            yield path
        finally:
            subprocess.run(["umount", "-l", str(path)], check=False)  # lazy: open handles
    else:
        os.chmod(path, 0o500)
        try:
            yield path
        finally:
            os.chmod(path, 0o700)
