"""Shard files: memory-mapped reads equal np.load, kills leave nothing trusted, no PHI on disk."""

import os
import select
import signal
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest

from medgen.data import CacheError, CacheRecipe, build_cache, open_shard, verify_cache
from medgen.data.cache.shards import MANIFEST, SHARDS, encode, read_manifest
from medgen.data.synthetic.dicom import FAKE_PATIENT, write_series


def test_open_shard_maps_every_array_equal_to_np_load_without_copying(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "image": rng.standard_normal((3, 2, 5, 7)).astype(np.float32),
        "mask": rng.integers(0, 2, (3, 1, 5, 7), dtype=np.uint8),
        "token": np.arange(3, dtype=np.int64),
        "odd": rng.standard_normal((3, 3)).astype(">f8"),  # big-endian survives
        "empty": np.zeros((0, 4), np.int16),
    }
    (tmp_path / SHARDS).mkdir()
    (tmp_path / SHARDS / "s.npz").write_bytes(encode(arrays))
    mapped = open_shard(tmp_path, {"file": "s.npz"})
    with np.load(tmp_path / SHARDS / "s.npz") as eager:
        assert list(mapped) == eager.files == list(arrays)
        for key in arrays:
            np.testing.assert_array_equal(mapped[key], eager[key])
            assert mapped[key].dtype == eager[key].dtype and mapped[key].shape == eager[key].shape
    for key in ("image", "mask", "token", "odd"):
        assert isinstance(mapped[key], np.memmap) and not mapped[key].flags.writeable
        assert mapped[key].ctypes.data % 64 == 0, f"{key} is not 64-byte aligned"
    assert encode(arrays) == encode(arrays)  # reproducible: same arrays, same bytes


def test_open_shard_refuses_compressed_or_broken_files(tmp_path):
    (tmp_path / SHARDS).mkdir()
    np.savez_compressed(tmp_path / SHARDS / "c.npz", a=np.zeros(100))
    with pytest.raises(CacheError, match=r"c.npz: member a.npy is not a stored .npy array"):
        open_shard(tmp_path, {"file": "c.npz"})
    (tmp_path / SHARDS / "b.npz").write_bytes(b"PK\x03\x04 broken")
    with pytest.raises(CacheError, match=r"b.npz: unreadable shard"):
        open_shard(tmp_path, {"file": "b.npz"})


def test_verify_reports_the_damaged_shard(tmp_path, subjects_csv):
    csv = subjects_csv(3)
    r = build_cache(CacheRecipe(out=str(tmp_path / "c"), sources=(str(csv),), n_bins=2), True)
    assert verify_cache(tmp_path / "c") == []
    victim = tmp_path / "c" / SHARDS / r.built[1]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    assert verify_cache(tmp_path / "c") == [r.built[1]]
    (tmp_path / "c" / SHARDS / r.built[2]).unlink()
    assert verify_cache(tmp_path / "c") == [r.built[1], r.built[2]]


PHI = ["DOE_JANE_19700101", "MRN00424242", "Doe^Jane", "PID-98765", "St Example Hospital"]


def test_no_patient_identifier_reaches_any_byte_of_the_cache(tmp_path, tools):
    root = tmp_path / "DOE_JANE_19700101"  # a directory named after the patient
    root.mkdir()
    img = tools.head(12, 16)
    tools.save(root / "MRN00424242_t1.nii.gz", img)
    tools.save(root / "MRN00424242_mask.nii.gz", tools.lesion(img.shape, [5, 6], (4, 7), (4, 7)))
    stored = (tools.head(12, 16, seed=1) * 10).astype(np.int16)
    write_series(
        root / "MRN00424243", stored, spacing=(2.0, 1.0, 1.0), patient=FAKE_PATIENT, modality="MR"
    )
    tools.save(
        root / "MRN00424243_mask.nii.gz", np.zeros(stored.shape), origin=(-20.0, -30.0, 40.0)
    )
    csv = tools.table(
        root / "MRN00424242.csv",
        ["subject", "image", "mask"],
        [
            ["MRN00424242", "MRN00424242_t1.nii.gz", "MRN00424242_mask.nii.gz"],
            ["MRN00424243", "MRN00424243", "MRN00424243_mask.nii.gz"],
        ],
    )
    for kind in ("slices", "volumes", "pairs"):
        out = tmp_path / kind
        build_cache(
            CacheRecipe(
                out=str(out),
                sources=(str(csv),),
                kind=kind,
                n_bins=2,
                size=16,
                thickness=4.0,
                shape=(12, 16, 16),
                val_fraction=0.4,
            ),
            quiet=True,
        )
        files = [p for p in out.rglob("*") if p.is_file()]
        assert len(files) == 1 + 2 * 2 + 1  # manifest, 2 shards + sidecars, the .lock (a pid)
        for path in files:
            blob = path.read_bytes()
            for text in (*PHI, *FAKE_PATIENT.values(), str(tmp_path)):
                for enc in ("utf-8", "utf-16-le", "utf-32-le"):  # numpy str arrays are UTF-32
                    assert text.encode(enc) not in blob, f"{text!r} ({enc}) leaked into {path}"


# The same sources in this process and in the child that gets SIGKILLed mid-write.
CHILD = textwrap.dedent(
    """
    import os, sys, time
    import medgen.data.cache.shards as cs
    from medgen.data import CacheRecipe, build_cache

    calls = [0]
    real_write = cs._write_file

    def write_then_hang(fh, data):
        calls[0] += 1
        if calls[0] == 2:  # the second shard: write half of it, then wait to be killed
            fh.write(data[: len(data) // 2])
            fh.flush()
            os.fsync(fh.fileno())
            print("MIDWRITE", len(data) // 2, flush=True)
            time.sleep(300)
        real_write(fh, data)

    cs._write_file = write_then_hang
    build_cache(CacheRecipe(out=sys.argv[1], sources=(sys.argv[2],), n_bins=2), quiet=True)
    """
)


def test_sigkill_mid_write_leaves_no_shard_a_later_run_trusts(tmp_path, subjects_csv):
    csv = subjects_csv(3)
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    cache = tmp_path / "cache"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(cache), str(csv)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 120)
        line = proc.stdout.readline() if ready else ""
        assert line.startswith("MIDWRITE"), f"child did not reach the second shard: {line!r}"
        half = int(line.split()[1])
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    names = sorted(p.name for p in (cache / SHARDS).iterdir())
    partial = [n for n in names if n.endswith(".tmp")]
    assert len(partial) == 1 and (cache / SHARDS / partial[0]).stat().st_size == half
    assert len([n for n in names if n.endswith(".npz")]) == 1  # only the finished one
    assert not (cache / MANIFEST).exists()
    with pytest.raises(CacheError, match="not a MedGen cache"):
        read_manifest(cache)
    recipe = CacheRecipe(out=str(cache), sources=(str(csv),), n_bins=2)
    report = build_cache(recipe, quiet=True)
    assert len(report.reused) == 1 and len(report.built) == 2 and partial[0] in report.removed
    assert not [p for p in (cache / SHARDS).iterdir() if p.name.endswith(".tmp")]
    assert verify_cache(cache) == []
    fresh = build_cache(
        CacheRecipe(out=str(tmp_path / "fresh"), sources=(str(csv),), n_bins=2), quiet=True
    )
    assert report.manifest == fresh.manifest


def test_shards_are_plain_stored_zips_of_npy(tmp_path, subjects_csv):
    csv = subjects_csv(1)
    r = build_cache(CacheRecipe(out=str(tmp_path / "c"), sources=(str(csv),), n_bins=2), True)
    with zipfile.ZipFile(tmp_path / "c" / SHARDS / r.built[0]) as zf:
        infos = zf.infolist()
        assert {i.compress_type for i in infos} == {zipfile.ZIP_STORED}
        assert [i.filename for i in infos] == [
            f"{k}.npy" for k in r.manifest["shards"][0]["shapes"]
        ]
        assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}
