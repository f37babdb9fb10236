"""CT thick-to-thin interpolation as a diffusion task on a pairs cache (seed 002): the pairs
cache described at the run's depth, the thick stack on the thin grid as the ``thick`` prior,
the -1 padding excluded from the loss (the seed's padding and masked-loss bugs), the prior
encoded by a latent space's autoencoder (``task.encode_priors``), and the whole path through
the CLI in subprocesses: fit an autoencoder on the thin volumes -> fit the latent model with
the encoded prior -> sample one volume per held-out subject -> evaluate against linear and
cubic interpolation."""

import json
import math
import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from medgen.data import CacheRecipe, build_cache, read_manifest, write_demo_dataset
from medgen.models import spaces
from medgen.train.config.fit import FitConfig
from medgen.train.config.schema import apply_overrides, validate
from medgen.train.errors import ConfigError
from medgen.train.tasks.data import DEPTH_MULTIPLE, DataSection, describe, open_split
from medgen.train.tasks.diffusion.channels import ChannelLayout
from medgen.train.tasks.diffusion.task import DiffusionModel

SMALL = ["model.channels=8,16", "model.attention_levels=false,false", "model.norm_num_groups=8", "model.num_head_channels=8",
         "task.eval_samples=2", "training.steps=2", "training.batch_size=2",
         "training.warmup_steps=1", "training.log_every=1", "training.eval_every=2",
         "training.checkpoint_every=2", "--quiet"]  # fmt: skip


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """A pairs cache of 5 demo subjects: 3 mm thin slices, 9 mm slabs, 16 x 16 in plane."""
    root = tmp_path_factory.mktemp("ct")
    write_demo_dataset(root / "demo", n_subjects=5, spacing_mm=4.0, dicom_subjects=0)
    recipe = CacheRecipe(out=str(root / "pairs"), kind="pairs",
                         sources=(str(root / "demo" / "subjects.csv"),), orientation="RAS",
                         spacing=(3.0, 8.0, 8.0), size=16, thickness=9.0,
                         val_fraction=0.2, test_fraction=0.2)  # fmt: skip
    build_cache(recipe, quiet=True)
    return root / "pairs"


def _config(*overrides):
    tiny = ["data.cache=x", "model.channels=8,16", "model.attention_levels=false,false",
            "model.norm_num_groups=8", "model.num_head_channels=8", "task.tokens=false", "task.generate=image"]  # fmt: skip
    return validate(apply_overrides(FitConfig(), [*tiny, *overrides]))


def test_a_pairs_cache_is_described_at_the_run_depth(pairs):
    manifest = read_manifest(pairs)
    d = describe(manifest, DataSection(cache=str(pairs)), pairs)
    assert d.kind == "pairs" and d.spatial_dims == 3
    assert d.shape[0] % DEPTH_MULTIPLE == 0 and d.shape[1:] == [16, 16]
    items = open_split(pairs, "train", DataSection(cache=str(pairs)), "data.train_split")
    depths = [int(items[i]["depth"]) for i in range(len(items))]
    assert max(depths) % DEPTH_MULTIPLE  # the fixture needs rounding up
    assert d.shape[0] == math.ceil(max(depths) / DEPTH_MULTIPLE) * DEPTH_MULTIPLE
    assert describe(manifest, DataSection(cache=str(pairs), depth=8), pairs).shape[0] == 8


def test_depth_on_another_cache_and_thick_without_pairs_are_one_line(pairs):
    manifest = read_manifest(pairs)
    other = {**manifest, "kind": "slices", "item_shape": [1, 16, 16]}
    with pytest.raises(ConfigError, match="^data.depth: applies to 'pairs' caches"):
        describe(other, DataSection(cache=str(pairs), depth=8), pairs)
    with pytest.raises(ConfigError, match="task.priors: channel 'thick' is not in the data"):
        ChannelLayout.from_config(("image",), ("thick",), ["image"], True)
    layout = ChannelLayout.from_config(("image",), ("thick",), ["t1", "t2"][:1], True, pairs=True)
    assert layout.priors == ("thick",)
    two = ChannelLayout.from_config(("image",), ("thick",), ["t1", "t2"], False, pairs=True)
    assert two.priors == ("thick_t1", "thick_t2")
    batch = {"image": torch.zeros(1, 2, 4, 4, 4), "thick": torch.arange(2.0).reshape(1, 2, 1, 1, 1)
             .expand(1, 2, 4, 4, 4)}  # fmt: skip
    assert [float(p.mean()) for p in two.prior_tensors(batch)] == [0.0, 1.0]


def _batch(pairs, depth):
    items = open_split(pairs, "train", DataSection(cache=str(pairs), depth=depth), "x")
    got = [items[i] for i in range(2)]
    return {k: torch.stack([g[k] for g in got]) for k in ("image", "thick", "valid", "token")}


def test_padding_is_minus_one_and_outside_the_loss(pairs):
    manifest = read_manifest(pairs)
    d = describe(manifest, DataSection(cache=str(pairs), depth=80), pairs)
    batch = _batch(pairs, 80)  # deeper than every item: padded
    valid = batch["valid"]
    assert not valid.all() and valid.any()
    assert (batch["image"][~valid.expand_as(batch["image"])] == -1).all()
    assert (batch["thick"][~valid.expand_as(batch["thick"])] == -1).all()
    cfg = _config("task.priors=thick")
    m = DiffusionModel.build(cfg.task, cfg.model, d, torch.device("cpu"))
    t = torch.tensor([10, 600])
    noise = torch.randn(batch["image"].shape, generator=torch.Generator().manual_seed(0))

    def loss(b):
        x0, v = m.encode(b)
        return m.losses(m.network, b, t, noise, x0, v, m.conditioning(b))[0]["loss"]

    garbage = dict(batch, image=torch.where(valid, batch["image"], torch.rand_like(batch["image"])))
    assert torch.equal(loss(batch), loss(garbage))
    unmasked = dict(garbage, valid=torch.ones_like(valid))  # the seed's unmasked loss
    assert not torch.equal(loss(batch), loss(unmasked))


def test_the_thick_prior_reaches_the_network_as_a_channel(pairs):
    d = describe(read_manifest(pairs), DataSection(cache=str(pairs), depth=8), pairs)
    cfg = _config("task.priors=thick")
    m = DiffusionModel.build(cfg.task, cfg.model, d, torch.device("cpu"))
    batch = _batch(pairs, 8)
    seen = {}
    m.network.net.conv_in.register_forward_hook(lambda mod, args, out: seen.update(x=args[0]))
    m.network(batch["image"], torch.tensor([5, 5]), m.conditioning(batch))
    assert seen["x"].shape[1] == 2 and torch.equal(seen["x"][:, 1:], batch["thick"])


def test_encode_priors_needs_a_latent_space_and_encodes_like_x0(pairs):
    with pytest.raises(ConfigError, match="^task.encode_priors: encodes prior channels"):
        _config("task.priors=thick", "task.encode_priors=true")
    d = describe(read_manifest(pairs), DataSection(cache=str(pairs), depth=8), pairs)
    cfg = _config("task.priors=thick")
    m = DiffusionModel.build(cfg.task, cfg.model, d, torch.device("cpu"))
    m.space = spaces.SpaceToDepth(3, 2)  # any space with an encode: stands for the autoencoder
    m.cfg = replace(m.cfg, encode_priors=True)
    prior = torch.rand(2, 1, 8, 16, 16)
    (got,) = m.prior_inputs([prior])
    assert torch.equal(got, m.space.encode(prior))
    assert m.prior_inputs.__self__ is m


def _cli(*args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, "-m", "medgen.train", *map(str, args)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


def test_latent_interpolation_end_to_end(pairs, tmp_path):
    """fit a 3D VAE on the thin volumes -> fit ct_interpolation_small in its latent space with
    the encoded thick prior, in bf16 (the seed's precision) -> sample --paired the held-out
    subjects -> evaluate: the model's row beside linear and cubic interpolation."""
    _cli("fit", "vae3d_volumes", "data.recipe=null", f"data.cache={pairs}", "data.depth=16",
         "data.eval_split=val", "task.network.channels=8,8", "task.network.norm_num_groups=4",
         "task.network.latent_channels=2", "task.gan_start=100",
         "task.eval_samples=1", "training.best_metric=psnr", *SMALL[4:], "--out", tmp_path / "ae",
         cwd=tmp_path)  # fmt: skip
    _cli("fit", "ct_interpolation_small", f"data.cache={pairs}", "data.depth=16", "training.amp=bf16",
         f"task.space.autoencoder={tmp_path / 'ae'}", *SMALL, "--out", tmp_path / "ct",
         cwd=tmp_path)  # fmt: skip
    run = tmp_path / "ct"
    data = json.loads(next(run.glob("checkpoints/*/data.json")).read_text())
    assert data["kind"] == "pairs" and data["shape"] == [16, 16, 16]
    _cli("sample", run, "--priors-from", ":test", "--paired", "--out", tmp_path / "s",
         "--steps", "2", "--quiet", cwd=tmp_path)  # fmt: skip
    with np.load(tmp_path / "s" / "samples.npz") as npz:
        assert npz["images"].shape[1:] == (1, 16, 16, 16) and np.isfinite(npz["images"]).all()
    _cli("evaluate", tmp_path / "s", "--quiet", cwd=tmp_path)
    ev = json.loads((tmp_path / "s" / "evaluation" / "evaluation.json").read_text())
    paired = ev["paired"]
    assert paired["methods"] == ["model", "linear", "cubic"]
    rows = paired["tables"]["all"]
    assert set(rows) == {"model", "linear", "cubic", "model - linear", "model - cubic"}
    assert np.isfinite(rows["model"]["psnr"]["estimate"])
    assert (tmp_path / "s" / "evaluation" / "interpolation.png").is_file()
