import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import yaml

from medgen.data.cache_shards import (
    SHARDS,
    load_sharded_pairs,
    load_sharded_slices,
    read_sharded_manifest,
)
from medgen.train.cache_command import CacheConfig, register
from medgen.train.config import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PHI_DIR = "DOE_JANE_19700101"  # a directory named after a patient, as happens


def parser():
    p = argparse.ArgumentParser(prog="medgen-train")
    register(p.add_subparsers(dest="command", required=True))
    return p


def run(*argv):
    args = parser().parse_args(["cache", *map(str, argv)])
    return args.func(args)


def write_scan(path, seed, depth=30, side=48):
    z, y, x = np.mgrid[:depth, :side, :side].astype(np.float32)
    r = np.hypot(y - side / 2, x - side / 2 - seed)
    img = np.where(r < 10 + 6 * np.sin(np.pi * z / depth), 300.0 + 50 * seed, 0.0)
    image = sitk.GetImageFromArray(img.astype(np.float32))
    image.SetSpacing((0.8, 0.8, 1.0))
    sitk.WriteImage(image, str(path))


@pytest.fixture
def scans(tmp_path):
    d = tmp_path / PHI_DIR
    d.mkdir()
    for seed in range(2):
        write_scan(d / f"scan_{seed}.nii.gz", seed)
    return d


def write_config(tmp_path, **values):
    cfg = {"out": str(tmp_path / "cache"), "sources": [str(tmp_path / PHI_DIR / "*.nii.gz")]}
    cfg.update({"z_range": [5, 24], "n_bins": 4, "size": 16, **values})
    path = tmp_path / "cache.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_slices_cache_builds_resumes_and_keeps_no_path(tmp_path, scans, capsys):
    config = write_config(tmp_path)
    assert run(config, "--quiet") == 0
    assert "2 shards (2 built, 0 reused), 40 slices" in capsys.readouterr().out
    m = read_sharded_manifest(tmp_path / "cache")
    assert m["counts_per_bin"] == [10, 10, 10, 10] and m["config"]["size"] == 16
    s = load_sharded_slices(tmp_path / "cache")
    assert s.images.shape == (40, 1, 16, 16) and s.images.min() >= -1
    assert run(config, "--quiet") == 0
    assert "(0 built, 2 reused)" in capsys.readouterr().out
    write_scan(scans / "scan_2.nii.gz", 2)
    assert run(config, "--quiet") == 0
    assert "3 shards (1 built, 2 reused)" in capsys.readouterr().out
    for path in (tmp_path / "cache").rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            for text in (PHI_DIR, "scan_0", str(tmp_path)):
                for enc in ("utf-8", "utf-32-le"):
                    assert text.encode(enc) not in blob, f"{text} leaked into {path.name}"
    assert run(config, "--verify") == 0


def test_pairs_cache_and_overrides(tmp_path, scans, capsys):
    config = write_config(tmp_path, kind="pairs", thickness=5.0, profile="gaussian")
    assert run(config, "size=24", "z_range=0,29", "--quiet") == 0
    items = load_sharded_pairs(tmp_path / "cache")
    assert [i["thin"].shape for i in items] == [(1, 30, 24, 24)] * 2
    assert [i["thick"].shape for i in items] == [(1, 6, 24, 24)] * 2
    assert read_sharded_manifest(tmp_path / "cache")["config"]["profile"] == "gaussian"


def bad(capsys, *argv, match):
    assert run(*argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert match in err, err
    return err


def test_bad_input_exits_2_with_one_line(tmp_path, scans, capsys):
    bad(capsys, tmp_path / "missing.yaml", match="missing.yaml")
    bad(capsys, write_config(tmp_path, colour="red"), match="colour")
    bad(capsys, write_config(tmp_path, size="big"), match="size")
    bad(capsys, write_config(tmp_path, kind="volumes"), match="kind")
    bad(capsys, write_config(tmp_path, sources=["nowhere/*.nii"]), match="matches no file")
    bad(capsys, write_config(tmp_path, sources=[str(tmp_path / "x.nii")]), match="does not exist")
    bad(capsys, write_config(tmp_path, sources=[]), match="sources")
    bad(capsys, write_config(tmp_path, out=""), match="out")
    err = bad(capsys, write_config(tmp_path, z_range=[5, 99]), match="z_range")
    assert "scan_0.nii.gz" in err  # which source, not only what
    err = bad(capsys, write_config(tmp_path, kind="pairs", thickness=50.0), match="thickness 50")
    assert "scan_0.nii.gz" in err
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"\x1f\x8b not really gzip")
    bad(capsys, write_config(tmp_path, sources=[str(broken)]), match="broken.nii.gz")
    bad(capsys, write_config(tmp_path), "--verify", match="missing")


def test_verify_names_the_damaged_shard(tmp_path, scans, capsys):
    config = write_config(tmp_path)
    assert run(config, "--quiet") == 0
    shard = sorted((tmp_path / "cache" / SHARDS).glob("*.npz"))[0]
    shard.write_bytes(shard.read_bytes()[:-10] + b"0123456789")
    err = bad(capsys, config, "--verify", match="damaged shards")
    assert shard.name in err


@pytest.mark.parametrize("name", ["cache_mni152_slices.yaml", "cache_mni152_pairs.yaml"])
def test_shipped_configs_are_valid(name):
    cfg = load_config(CacheConfig, CONFIGS / name)
    assert cfg.sources == ("mni152",) and cfg.kind in ("slices", "pairs")


def test_mni152_slices_config_builds(tmp_path, capsys):
    pytest.importorskip("nilearn")
    out = tmp_path / "mni"
    config = CONFIGS / "cache_mni152_slices.yaml"
    assert run(config, f"out={out}", "size=16", "--quiet") == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["n_items"] == 100 and m["counts_per_bin"] == [10] * 10
    assert sum(m["counts_per_class"]) == 100
