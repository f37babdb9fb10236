"""Shared fixtures of medgen-train's tests."""

import os
import subprocess

import pytest
import torch


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


# --- latent diffusion (test_latent_cache.py, test_latent_diffusion.py) -------------------------


class ToyAutoencoder(torch.nn.Module):
    """A purely convolutional autoencoder implementing the Autoencoder protocol: encode is a
    ``downsample``-strided patch conv times ``gain`` (latents well outside [-1, 1]), decode a
    3-tap conv in latent space (reach 1 latent voxel: chunked decoding with overlap >= 1 is
    exact) and a transposed patch conv."""

    def __init__(self, spatial_dims=2, in_channels=2, latent_channels=3, downsample=2, gain=4.0):
        super().__init__()
        conv = torch.nn.Conv2d if spatial_dims == 2 else torch.nn.Conv3d
        up = torch.nn.ConvTranspose2d if spatial_dims == 2 else torch.nn.ConvTranspose3d
        self.spatial_dims, self.in_channels = spatial_dims, in_channels
        self.latent_channels, self.downsample, self.gain = latent_channels, downsample, gain
        self.enc = conv(in_channels, latent_channels, downsample, stride=downsample)
        self.mix = conv(latent_channels, latent_channels, 3, padding=1)
        self.dec = up(latent_channels, in_channels, downsample, stride=downsample)

    def encode(self, x):
        from medgen.models.autoencoders.protocol import check_divisible

        check_divisible(x.shape, self.spatial_dims, self.downsample, "ToyAutoencoder")
        return self.enc(x) * self.gain

    def decode(self, z):
        return self.dec(self.mix(z / self.gain))

    def forward(self, x):
        from medgen.models.autoencoders.protocol import AutoencoderOutput

        z = self.encode(x)
        return AutoencoderOutput(self.decode(z), z)

    def latent_shape(self, shape):
        return (shape[0], self.latent_channels, *(s // self.downsample for s in shape[2:]))


def make_toy_run(path, seed=0, channels=("image", "mask"), **cfg):
    """A directory standing for an autoencoder fit run: toy.json + weights.safetensors."""
    import json

    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    cfg = {"in_channels": len(channels), **cfg}
    torch.manual_seed(seed)
    net = ToyAutoencoder(**cfg)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()},
              str(path / "weights.safetensors"))  # fmt: skip
    (path / "toy.json").write_text(json.dumps({"cfg": cfg, "channels": list(channels)}))
    return path


def load_toy_run(run_dir, checkpoint="best", device="cpu"):
    """What load_autoencoder returns, for a toy run."""
    import json
    from pathlib import Path

    from safetensors.torch import load_file

    from medgen.data.cache.atomic import file_sha256
    from medgen.train.errors import CheckpointError

    run_dir = Path(run_dir)
    if not (run_dir / "toy.json").is_file():
        raise CheckpointError(f"{run_dir}: no checkpoint to use")
    meta = json.loads((run_dir / "toy.json").read_text())
    net = ToyAutoencoder(**meta["cfg"])
    net.load_state_dict(load_file(str(run_dir / "weights.safetensors")))
    info = {
        "run_dir": str(run_dir),
        "checkpoint": "step_00000001",
        "step": 1,
        "sha256": file_sha256(run_dir / "weights.safetensors"),
        "spatial_dims": net.spatial_dims,
        "in_channels": net.in_channels,
        "latent_channels": net.latent_channels,
        "downsample": net.downsample,
        "channels": meta["channels"],
    }
    return net.to(device), info


def make_pixel_cache(root, kind="slices", n=5, depth=12, side=20, **recipe):
    """A small cache of ``n`` synthetic subjects (image + lesion mask) with train, val and
    test splits; returns its directory."""
    import csv

    import numpy as np

    from medgen.data import CacheRecipe, Volume, build_cache, write_nifti

    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        rng = np.random.default_rng(i)
        _, y, x = np.mgrid[:depth, :side, :side].astype(np.float32)
        r = np.hypot(y - side / 2, x - side / 2)
        bright = 50.0 + 30.0 * i + 20 * rng.random(r.shape)
        img = np.where(r < side * (0.25 + 0.1 * i / n), bright, 0)
        mask = np.zeros(img.shape, np.uint8)
        if i % 2 == 0:
            mask[4:7, 8:12, 8:12] = 1
        for name, arr in ((f"s{i}.nii.gz", img), (f"s{i}_mask.nii.gz", mask)):
            write_nifti(Volume(arr.astype(np.float32), (2.0, 1.0, 1.0), (0.0, 0.0, 0.0),
                               np.eye(3)), root / name)  # fmt: skip
        rows.append([f"s{i}", f"s{i}.nii.gz", f"s{i}_mask.nii.gz"])
    with (root / "subjects.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([["subject", "image", "mask"], *rows])
    settings = dict(kind=kind, n_bins=2, size=16, class_from="mask", val_fraction=0.2,
                    test_fraction=0.2, shape=(8, 16, 16))  # fmt: skip
    settings.update(recipe)
    out = root / f"cache_{kind}"
    build_cache(CacheRecipe(out=str(out), sources=(str(root / "subjects.csv"),), **settings),
                quiet=True)  # fmt: skip
    return out


@pytest.fixture
def toy_runs(monkeypatch):
    """Autoencoder runs without the autoencoder task: ``make_toy_run`` directories, loaded by
    ``load_toy_run`` in place of ``medgen.train.tasks.autoencoder.load.load_autoencoder``."""
    from types import SimpleNamespace

    from medgen.train.latents import autoencoder

    monkeypatch.setattr(autoencoder, "load_autoencoder", load_toy_run)
    return SimpleNamespace(make_run=make_toy_run, load=load_toy_run, make_cache=make_pixel_cache,
                           Toy=ToyAutoencoder)  # fmt: skip
