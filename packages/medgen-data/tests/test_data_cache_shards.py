import json
import os
import select
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from medgen.data import CacheError, DataError, Volume, axial_slices
from medgen.data.cache_shards import (
    MANIFEST,
    SHARDS,
    ShardSource,
    build_sharded_cache,
    load_shard,
    load_sharded_pairs,
    load_sharded_slices,
    read_sharded_manifest,
    verify_sharded_cache,
    volume_key,
)
from medgen.data.cache_sources import pair_source
from medgen.data.collate import collate_padded

# The same synthetic sources in this process and in the child that gets SIGKILLed.
SOURCES = textwrap.dedent(
    """
    import numpy as np
    from medgen.data import Volume
    from medgen.data.cache_sources import slice_source

    CONFIG = {"kind": "slices", "z_range": [2, 17], "n_bins": 4, "size": 32}

    def volume(seed, depth=20, side=40, **kw):
        z, y, x = np.mgrid[:depth, :side, :side].astype(np.float32)
        r = np.hypot(y - side / 2 - seed, x - side / 2)
        radius = 6 + 8 * np.sin(np.pi * z / depth) + seed
        img = np.where(r < radius, 0.2 + 0.1 * seed, -1.0).astype(np.float32)
        prob = np.clip((radius - r) / 4, 0, 1).astype(np.float32)
        g = dict(spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=np.eye(3))
        return Volume(img, **g, **kw), Volume(prob, **g, **kw)

    def sources(n=3, **kw):
        out = []
        for seed in range(n):
            img, prob = volume(seed, **kw)
            out.append(slice_source(img, (2, 17), 4, 32, prob, class_id=seed % 2))
        return out
    """
)
ns: dict = {}
exec(SOURCES, ns)
CONFIG, sources, volume = ns["CONFIG"], ns["sources"], ns["volume"]


def build(directory, srcs=None, config=CONFIG, kind="slices"):
    return build_sharded_cache(directory, srcs or sources(), config, kind, n_bins=4, quiet=True)


def shard_files(directory):
    return sorted(p.name for p in (directory / SHARDS).iterdir())


def test_build_writes_shards_manifest_and_loads_the_slices(tmp_path):
    report = build(tmp_path)
    assert len(report.built) == 3 and not report.reused
    m = read_sharded_manifest(tmp_path)
    assert m["kind"] == "slices" and m["n_shards"] == 3 and m["n_items"] == 3 * 16
    assert m["config"] == CONFIG and len(m["config_hash"]) == 64
    assert m["counts_per_bin"] == [12, 12, 12, 12] and m["counts_per_class"] == [32, 16]
    assert m["dtypes"]["images"] == "<f4" and m["shards"][0]["shapes"]["images"] == [16, 1, 32, 32]
    assert all(len(s["source_sha256"]) == 64 and len(s["sha256"]) == 64 for s in m["shards"])
    loaded = load_sharded_slices(tmp_path)
    img, prob = volume(1)
    direct = axial_slices(img, (2, 17), 4, 32, prob, class_id=1)
    np.testing.assert_array_equal(loaded.images[16:32], direct.images)
    np.testing.assert_array_equal(loaded.masks[16:32], direct.masks)
    np.testing.assert_array_equal(loaded.token[16:32], direct.token)
    assert set(loaded.volume_id[16:32]) == {m["shards"][1]["source_sha256"][:16]}
    assert verify_sharded_cache(tmp_path) == []


def test_rebuild_skips_finished_shards_and_counts_what_it_rebuilds(tmp_path):
    first = build(tmp_path)
    again = build(tmp_path)
    assert again.built == [] and again.reused == first.built
    shard_dir = tmp_path / SHARDS
    (shard_dir / first.built[1]).unlink()  # a lost shard
    (shard_dir / first.built[2]).with_suffix(".json").unlink()  # killed before its sidecar
    resumed = build(tmp_path)
    assert resumed.built == first.built[1:] and resumed.reused == first.built[:1]
    # shards are reproducible: the same inputs give the same bytes and hashes
    assert read_sharded_manifest(tmp_path) == first.manifest


def test_verify_reports_the_damaged_shard_and_a_rebuild_replaces_only_it(tmp_path):
    first = build(tmp_path)
    victim = tmp_path / SHARDS / first.built[2]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    assert verify_sharded_cache(tmp_path) == [first.built[2]]
    with pytest.raises(CacheError, match=first.built[2]):
        load_sharded_slices(tmp_path)
    load_shard(tmp_path, first.manifest["shards"][0])  # the others still load
    again = build(tmp_path)
    assert again.built == [first.built[2]] and verify_sharded_cache(tmp_path) == []


def test_config_change_rebuilds_everything_and_removes_stale_shards(tmp_path):
    first = build(tmp_path)
    other = {**CONFIG, "note": "another recipe"}
    second = build(tmp_path, config=other)
    assert len(second.built) == 3 and not set(second.built) & set(first.built)
    assert set(first.built) <= set(second.removed)
    assert len(shard_files(tmp_path)) == 6  # 3 shards + 3 sidecars, nothing stale


PHI = ["DOE^JANE", "PHI-PID-424242", "St Elsewhere General", "19700101", "ACC-987654"]


def test_no_patient_identifier_reaches_any_file_of_the_cache(tmp_path):
    meta = {
        "PatientName": PHI[0],
        "PatientID": PHI[1],
        "InstitutionName": PHI[2],
        "PatientBirthDate": PHI[3],
        "AccessionNumber": PHI[4],
    }
    srcs = sources(2, id=PHI[0], meta=meta)  # a careless reader put the name in the id
    pair = volume(5, id=PHI[1], meta=meta)[0]
    build(tmp_path / "slices", srcs)
    build_sharded_cache(tmp_path / "pairs", [pair_source(pair, 5.0)], {"kind": "pairs"}, "pairs")
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) == 2 * 3 + 2 * 1
    for path in files:
        blob = path.read_bytes()
        for text in PHI:
            for enc in ("utf-8", "utf-16-le", "utf-32-le"):  # numpy str arrays are UTF-32
                assert text.encode(enc) not in blob, f"{text!r} ({enc}) leaked into {path.name}"


def test_volume_key_ignores_id_and_meta_but_not_voxels_or_geometry():
    a, _ = volume(0, id="x", meta={"PatientName": "A"})
    b, _ = volume(0, id="y")
    assert volume_key(a) == volume_key(b)
    c = Volume(a.array, (2.0, 1.0, 1.0), a.origin, a.direction)
    d = Volume(a.array + 1, a.spacing, a.origin, a.direction)
    assert len({volume_key(a), volume_key(c), volume_key(d)}) == 3


CHILD = SOURCES + textwrap.dedent(
    """
    import os, sys, time
    import medgen.data.cache_shards as cs

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
    cs.build_sharded_cache(sys.argv[1], sources(), CONFIG, "slices", n_bins=4, quiet=True)
    """
)


def test_sigkill_mid_write_leaves_no_shard_a_later_run_trusts(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    cache = tmp_path / "cache"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(cache)], stdout=subprocess.PIPE, text=True, env=env
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
    names = shard_files(cache)
    partial = [n for n in names if n.endswith(".tmp")]
    assert len(partial) == 1 and (cache / SHARDS / partial[0]).stat().st_size == half
    assert len([n for n in names if n.endswith(".npz")]) == 1  # only the finished one
    assert not (cache / MANIFEST).exists()
    with pytest.raises(CacheError, match="unfinished"):
        load_sharded_slices(cache)
    report = build(cache)
    assert len(report.reused) == 1 and len(report.built) == 2
    assert partial[0] in report.removed
    assert not [n for n in shard_files(cache) if n.endswith(".tmp")]
    assert verify_sharded_cache(cache) == []
    assert read_sharded_manifest(cache) == build(tmp_path / "fresh").manifest


def test_pairs_cache_loads_into_padded_batches(tmp_path):
    thin = [volume(s, depth=d)[0] for s, d in ((0, 20), (1, 13))]
    labels = [
        Volume((v.array > 0).astype(np.uint8), v.spacing, v.origin, v.direction) for v in thin
    ]
    srcs = [
        pair_source(v, 5.0, profile="gaussian", label=lab)
        for v, lab in zip(thin, labels, strict=True)
    ]
    build_sharded_cache(tmp_path, srcs, {"kind": "pairs", "thickness": 5.0}, "pairs", quiet=True)
    m = read_sharded_manifest(tmp_path)
    assert m["counts_per_class"] == [2] and m["counts_per_bin"] is None
    items = load_sharded_pairs(tmp_path)
    assert [i["thin"].shape for i in items] == [(1, 20, 40, 40), (1, 13, 40, 40)]
    assert [i["thick"].shape for i in items] == [(1, 4, 40, 40), (1, 2, 40, 40)]
    batch = collate_padded(items)
    assert batch["thick"].shape == (2, 1, 4, 40, 40) and (batch["thick"][1, :, 2:] == -1).all()
    assert (
        batch["thin_label_valid"][1, 0, :13].all()
        and not batch["thin_label_valid"][1, 0, 13:].any()
    )
    with pytest.raises(CacheError, match="not a slices cache"):
        load_sharded_slices(tmp_path)


def test_bad_sources_and_arguments(tmp_path):
    srcs = sources(1)
    with pytest.raises(DataError, match="unknown cache kind"):
        build_sharded_cache(tmp_path, srcs, CONFIG, "volumes")
    with pytest.raises(DataError, match="listed twice"):
        build_sharded_cache(tmp_path, srcs * 2, CONFIG, quiet=True)
    bad = ShardSource("ab" * 32, lambda: {"x": np.zeros(3), "name": np.array(["a", "b", "c"])})
    with pytest.raises(DataError, match="'name' has dtype"):
        build_sharded_cache(tmp_path, [bad], CONFIG, quiet=True)
    ragged = ShardSource("cd" * 32, lambda: {"x": np.zeros(3), "y": np.zeros(2)})
    with pytest.raises(DataError, match="common leading item dim"):
        build_sharded_cache(tmp_path, [ragged], CONFIG, quiet=True)
    with pytest.raises(CacheError, match="missing"):
        read_sharded_manifest(tmp_path / "nowhere")
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(CacheError, match="not valid JSON"):
        verify_sharded_cache(tmp_path)
    (tmp_path / MANIFEST).write_text(json.dumps({"format_version": 99}))
    with pytest.raises(CacheError, match="version 1"):
        read_sharded_manifest(tmp_path)
