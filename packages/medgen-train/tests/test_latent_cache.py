"""Latent caches (``medgen-train encode``): latents equal to encoding the items directly, the
metadata carried over, the scale factor from the training split only, resume after an
interrupted write, a damaged shard encoded again, refusals before anything is written."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from medgen.data import CacheDataset, read_manifest
from medgen.data.cache import shards as shard_io
from medgen.train.cli import main
from medgen.train.latents.autoencoder import AutoencoderRun
from medgen.train.latents.cache import encode_cache
from medgen.train.latents.dataset import LatentDataset
from medgen.train.tasks.diffusion.channels import ChannelLayout


@pytest.fixture
def pixel(tmp_path, toy_runs):
    return toy_runs.make_cache(tmp_path / "data")


def _direct(ae_dir: Path, cache: Path, split: str, channels=("image", "mask")):
    """Each item of ``split`` encoded one by one by a freshly loaded autoencoder: the latents
    (float64 numpy), and the items."""
    from medgen.train.latents.autoencoder import load_autoencoder

    net, _ = load_autoencoder(ae_dir, "best", "cpu")
    ds = CacheDataset(cache, split)
    layout = ChannelLayout.from_config(channels, (), ds.manifest["modalities"], True)
    items = [ds[i] for i in range(len(ds))]
    with torch.no_grad():
        z = [net.encode(layout.x0({k: v[None] for k, v in it.items()}))[0] for it in items]
    return np.stack([t.double().numpy() for t in z]), items


def test_latents_equal_encoding_the_items_and_the_metadata_carries_over(tmp_path, toy_runs, pixel):
    ae_dir = toy_runs.make_run(tmp_path / "ae")
    report = encode_cache(AutoencoderRun.open(ae_dir), pixel, tmp_path / "lat", batch_size=5,
                          quiet=True)  # fmt: skip
    source, manifest = read_manifest(pixel), read_manifest(tmp_path / "lat")
    assert len(report.built) == len(source["shards"]) and not report.reused
    for key in ("kind", "modalities", "splits", "item_shape", "n_bins", "counts_per_class"):
        assert manifest[key] == source[key], key
    lat = manifest["latent"]
    assert lat["shape"] == [3, 8, 8] and lat["channels"] == ["image", "mask"]
    assert lat["autoencoder"]["sha256"] == AutoencoderRun.open(ae_dir).sha256
    for split in ("train", "val", "test"):
        direct, items = _direct(ae_dir, pixel, split)
        ds = LatentDataset(tmp_path / "lat", split)
        assert len(ds) == len(items)
        stored = np.stack([ds[i]["latent"].double().numpy() for i in range(len(ds))])
        np.testing.assert_allclose(stored, direct, rtol=1e-6, atol=1e-6)
        for i, item in enumerate(items):
            got = ds[i]
            for key in ("mask", "token", "z_bin", "class_id"):
                assert torch.equal(got[key], item[key]), (split, i, key)
        assert list(ds.subjects()) == list(CacheDataset(pixel, split).subjects())
    assert np.abs(stored).max() > 1.0  # never clamped (the toy's gain puts latents past 1)


def test_the_scale_factor_is_one_over_std_of_the_training_split_only(tmp_path, toy_runs, pixel):
    ae_dir = toy_runs.make_run(tmp_path / "ae", seed=3)
    encode_cache(AutoencoderRun.open(ae_dir), pixel, tmp_path / "lat", quiet=True)
    scale = read_manifest(tmp_path / "lat")["latent"]["scale_factor"]
    manifest = read_manifest(tmp_path / "lat")
    stored = []
    for entry in manifest["shards"]:  # read with np.load, not through the cache's reader
        if entry["split"] == "train":
            with np.load(tmp_path / "lat" / "shards" / entry["file"]) as npz:
                stored.append(npz["latent"].astype(np.float64))
    stored = np.concatenate(stored)
    assert scale == pytest.approx(1.0 / np.std(stored, ddof=1), rel=1e-12)
    train = _direct(ae_dir, pixel, "train")[0]  # encoded item by item: float32 rounding apart
    expected = 1.0 / np.std(train, ddof=1)
    assert len(train) == len(stored) and scale == pytest.approx(expected, rel=1e-6)
    everything = np.concatenate([train, *(_direct(ae_dir, pixel, s)[0] for s in ("val", "test"))])
    assert abs(1.0 / np.std(everything, ddof=1) / expected - 1) > 1e-3  # the test can tell


def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".lock"}  # fmt: skip


def test_an_interrupted_encode_resumes_with_the_missing_shards_and_ends_equal(
    tmp_path, toy_runs, pixel, monkeypatch
):
    ae = AutoencoderRun.open(toy_runs.make_run(tmp_path / "ae"))
    encode_cache(ae, pixel, tmp_path / "whole", quiet=True)
    real, calls = shard_io._write_file, []

    def failing(fh, data):  # the third shard's write dies half-way (disk full, a kill)
        calls.append(1)
        if len(calls) == 3:
            fh.write(data[: len(data) // 2])
            raise OSError(28, "No space left on device")
        real(fh, data)

    monkeypatch.setattr(shard_io, "_write_file", failing)
    with pytest.raises(OSError, match="No space"):
        encode_cache(ae, pixel, tmp_path / "lat", quiet=True)
    monkeypatch.setattr(shard_io, "_write_file", real)
    out = tmp_path / "lat"
    assert not (out / "manifest.json").exists()  # nothing looks finished
    assert len(list((out / "shards").glob("shard-*.npz"))) == 2
    report = encode_cache(ae, pixel, out, quiet=True)
    assert len(report.reused) == 2 and len(report.built) == len(read_manifest(pixel)["shards"]) - 2
    assert not list(out.rglob("*.tmp"))
    assert _tree(out) == _tree(tmp_path / "whole")


def test_a_damaged_shard_is_encoded_again_and_the_cache_ends_equal(tmp_path, toy_runs, pixel):
    ae = AutoencoderRun.open(toy_runs.make_run(tmp_path / "ae"))
    out = tmp_path / "lat"
    encode_cache(ae, pixel, out, quiet=True)
    before = _tree(out)
    victim = sorted((out / "shards").glob("shard-*.npz"))[1]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="damaged"):
        report = encode_cache(ae, pixel, out, quiet=True)
    assert report.damaged == [victim.name] and report.built == [victim.name]
    assert _tree(out) == before


def test_another_autoencoder_encodes_every_shard_again(tmp_path, toy_runs, pixel):
    out = tmp_path / "lat"
    encode_cache(AutoencoderRun.open(toy_runs.make_run(tmp_path / "a")), pixel, out, quiet=True)
    report = encode_cache(AutoencoderRun.open(toy_runs.make_run(tmp_path / "b", seed=1)), pixel,
                          out, quiet=True)  # fmt: skip
    assert not report.reused and len(report.removed) == 2 * len(report.built)  # .npz + .json


def test_volumes_keep_their_valid_box_and_chunked_encoding_of_a_conv_encoder_is_exact(
    tmp_path, toy_runs
):
    pixel = toy_runs.make_cache(tmp_path / "data", kind="volumes", shape=(8, 16, 16))
    ae_dir = toy_runs.make_run(tmp_path / "ae", spatial_dims=3, latent_channels=2)
    ae = AutoencoderRun.open(ae_dir)
    encode_cache(ae, pixel, tmp_path / "lat", quiet=True)
    encode_cache(ae, pixel, tmp_path / "chunked", chunks=2, overlap=0, quiet=True)
    a, b = LatentDataset(tmp_path / "lat", "train"), LatentDataset(tmp_path / "chunked", "train")
    px = CacheDataset(pixel, "train")
    for i in range(len(a)):
        assert a[i]["latent"].shape == (2, 4, 8, 8)
        torch.testing.assert_close(a[i]["latent"], b[i]["latent"], rtol=1e-5, atol=1e-5)
        for key in ("valid", "mask"):
            assert torch.equal(a[i][key], px[i][key]), key
    assert read_manifest(tmp_path / "chunked")["latent"]["encode"] == {"chunks": 2, "overlap": 0}


@pytest.mark.parametrize(
    "case, message",
    [
        ("channels", "1 channel(s) ['image'], but the autoencoder of"),
        ("downsample", "does not divide by the autoencoder's downsample factor 3"),
        ("dims", "2D items [16, 16], but the autoencoder of"),
        ("out_is_cache", "is the pixel cache itself"),
        ("out_foreign", "is not empty and not a latent cache"),
        ("out_pixel_shards", "is not a latent shard's; choose another directory"),
        ("latent_source", "is already a latent cache"),
        ("not_a_cache", "not a MedGen cache"),
        ("no_run", "RUN_DIR:"),
    ],
)
def test_bad_input_is_one_line_and_exit_2_before_anything_is_written(
    tmp_path, toy_runs, pixel, capsys, case, message
):
    kw = {"channels": {"channels": ("image",), "in_channels": 2}, "downsample": {"downsample": 3},
          "dims": {"spatial_dims": 3}}.get(case, {})  # fmt: skip
    ae = toy_runs.make_run(tmp_path / "ae", **kw)
    cache, out = pixel, tmp_path / "lat"
    if case == "out_is_cache":
        out = pixel
    elif case == "out_foreign":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    elif case == "out_pixel_shards":  # an unfinished pixel cache: no manifest yet
        shutil.copytree(pixel / "shards", out / "shards")
    elif case == "latent_source":
        encode_cache(AutoencoderRun.open(ae), pixel, tmp_path / "first", quiet=True)
        cache = tmp_path / "first"
    elif case == "not_a_cache":
        cache = tmp_path / "nothing"
        cache.mkdir()
    elif case == "no_run":
        ae = tmp_path / "missing"
    before = sorted(p.name for p in out.iterdir()) if out.is_dir() else None
    code = main(["encode", str(ae), "--cache", str(cache), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err
    assert (sorted(p.name for p in out.iterdir()) if out.is_dir() else None) == before


def test_the_encode_command_prints_a_summary_and_records_the_autoencoder(
    tmp_path, toy_runs, pixel, capsys
):
    ae = toy_runs.make_run(tmp_path / "ae")
    args = ["encode", str(ae), "--cache", str(pixel), "--out", str(tmp_path / "lat"),
            "--batch-size", "3", "--device", "cpu", "--quiet"]  # fmt: skip
    assert main(args) == 0
    assert main(args[:-1]) == 0
    out = capsys.readouterr().out
    assert "5 shards (0 built, 5 reused), 60 items, latent [3, 8, 8] of image, mask" in out, out
    lat = json.loads((tmp_path / "lat" / "manifest.json").read_text())["latent"]
    assert lat["autoencoder"]["run"] == str(ae.absolute()) and lat["autoencoder"]["step"] == 1
    assert lat["source"]["cache"] == str(pixel.absolute()) and lat["scale_split"] == "train"
