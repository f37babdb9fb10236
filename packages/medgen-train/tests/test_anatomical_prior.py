"""``task.anatomical_prior`` (JS-DDPM's anatomical conditioning, seed 001), against independent
references: with it off the network and its training losses are those of a network built
without any prior channel (seed 001's bug: switching the feature on broke the baseline); with it
on the maps are the training split's per-bin foreground fractions computed here by hand in
float64 from the cache's items, the very maps are fed in training and sampling by z-bin, and
they come back bitwise from a checkpoint, in ``sample`` and on resume."""

import json

import pytest
import torch

from medgen.data import CacheDataset, read_manifest
from medgen.models import Conditioning, diffusion_loss, min_snr_weight
from medgen.train.checkpoint.store import EMA_FILE, MODEL_FILE, load_weights
from medgen.train.config.fit import FitConfig, SampleSection
from medgen.train.config.schema import apply_overrides, validate
from medgen.train.engine.objectives import Nets
from medgen.train.errors import ConfigError
from medgen.train.tasks.data import DataDescription
from medgen.train.tasks.diffusion import anatomy
from medgen.train.tasks.diffusion.sampling import DiffusionGenerator
from medgen.train.tasks.diffusion.task import DiffusionModel, DiffusionTask
from medgen.train.tasks.networks import NetworkSpec

CPU = torch.device("cpu")
TINY = ["model.channels=16,32", "model.attention_levels=false,false"]


def config(*overrides):
    return validate(apply_overrides(FitConfig(), ["data.cache=x", *TINY, *overrides]))


def description(**kw):
    base = dict(
        kind="slices", spatial_dims=2, channels=["image"], modalities=["image"], has_mask=True,
        labels=[0, 1], n_bins=4, n_classes=2, n_modes=0, shape=[8, 8], spacing=[1.0, 1.0, 1.0],
    )  # fmt: skip
    return DataDescription(**{**base, **kw})


def batch(b=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.rand((b, 1, 8, 8), generator=g) * 2 - 1,
        "mask": (torch.rand((b, 1, 8, 8), generator=g) > 0.7).to(torch.uint8),
        "token": torch.arange(b) % 8,
        "z_bin": torch.arange(b) % 4,
        "class_id": (torch.arange(b) // 4) % 2,
    }


def record_priors(net):
    """The conditioning priors of every call of ``net``."""
    seen = []

    def hook(module, args):
        seen.append([p.detach().clone() for p in (args[2].priors or [])])

    net.register_forward_pre_hook(hook)
    return seen


# --- (a) off: exactly the network and the losses of a build without the channel -------------


def test_off_is_the_plain_network_and_trains_bitwise_alike():
    cfg, d = config(), description()
    assert cfg.task.anatomical_prior is False  # the default
    torch.manual_seed(0)
    model = DiffusionModel.build(cfg.task, cfg.model, d, CPU)
    # the reference: the same network built explicitly, without any prior channel
    spec = NetworkSpec(spatial_dims=2, in_channels=2, out_channels=2, shape=(8, 8), num_tokens=8,
                       null_token=False, num_modes=None, prior_channels=0)  # fmt: skip
    ref = cfg.model.build(spec)
    own = model.network.state_dict()
    assert {k: v.shape for k, v in own.items()} == {k: v.shape for k, v in ref.state_dict().items()}
    assert model.anatomy is None and model.conditioning(batch()).priors is None
    ref.load_state_dict(own)  # same weights: any difference below is the code path's
    task = DiffusionTask(model, CPU, seed=3)
    opt = torch.optim.Adam(model.network.parameters(), lr=1e-3)
    ref_opt = torch.optim.Adam(ref.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(3)  # the task's own draws, by hand
    s = model.strategy
    for step in range(3):
        b = batch(seed=step)
        loss, _ = task.loss(Nets({"network": model.network}, {}), b, step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        x0 = torch.cat([b["image"], (b["mask"] > 0).float() * 2 - 1], dim=1)
        t = s.sample_timesteps(6, g)
        noise = torch.randn(x0.shape, generator=g)
        out = ref(s.add_noise(x0, noise, t), s.model_time(t), Conditioning(token=b["token"]))
        w = min_snr_weight(s.snr(t, x0).reshape(-1), s.prediction, 5.0)
        target = s.training_target(x0, noise, t)
        ref_loss = diffusion_loss(out, target, weight=w, channels={"image": [0], "mask": [1]})
        ref_opt.zero_grad()
        ref_loss["loss"].backward()
        ref_opt.step()
        assert loss.item() == ref_loss["loss"].item(), step  # bitwise


def test_on_adds_one_input_channel_and_the_maps_buffer_only():
    d = description()
    torch.manual_seed(0)
    off = DiffusionModel.build(config().task, config().model, d, CPU).network.state_dict()
    cfg = config("task.anatomical_prior=true")
    on = DiffusionModel.build(cfg.task, cfg.model, d, CPU).network.state_dict()
    assert set(on) - set(off) == {"anatomical_prior.maps"} and set(off) <= set(on)
    assert on["anatomical_prior.maps"].shape == (4, 1, 8, 8)
    changed = {k for k in off if on[k].shape != off[k].shape}
    assert len(changed) == 1  # the first convolution, one more input channel
    (k,) = changed
    assert on[k].shape[1] == off[k].shape[1] + 1 and on[k].shape[0] == off[k].shape[0]


def test_not_for_volumes_nor_latent_caches(cache, tmp_path):
    cfg = config("task.anatomical_prior=true")
    vol = description(kind="volumes", spatial_dims=3, shape=[8, 8, 8], n_bins=1, cache="c")
    with pytest.raises(ConfigError, match=r"^task\.anatomical_prior: .*volumes"):
        DiffusionModel.build(cfg.task, cfg.model, vol, CPU)
    latent = tmp_path / "latent"  # a latent cache's manifest: the pixel one's + its section
    latent.mkdir()
    manifest = {**json.loads((cache / "manifest.json").read_text()), "latent": {}}
    (latent / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match=r"^task\.anatomical_prior: .*latent cache"):
        anatomy.anatomical_maps(latent, "train", 3)


# --- (b) on: the maps are the training split's foreground fractions, fed by z-bin -----------


@pytest.fixture
def cache(tmp_path, toy_runs):  # toy_runs.make_cache: conftest's synthetic pixel cache
    return toy_runs.make_cache(tmp_path / "data", n=5, depth=12, n_bins=3,
                               foreground_threshold=-0.5)  # fmt: skip


def hand_maps(cache, split="train"):
    """Per bin, the float64 mean over the split's items of (any image channel > threshold)."""
    threshold = read_manifest(cache)["recipe"]["foreground_threshold"]
    assert threshold == -0.5  # the recipe's, not a default
    ds = CacheDataset(cache, split)
    sums, counts = {}, {}
    for i in range(len(ds)):
        item = ds[i]
        fg = (item["image"].double() > threshold).any(0).double()
        b = int(item["z_bin"])
        sums[b] = sums.get(b, 0) + fg
        counts[b] = counts.get(b, 0) + 1
    return torch.stack([2 * sums[b] / counts[b] - 1 for b in sorted(sums)]).unsqueeze(1)


def test_maps_are_the_hand_computed_foreground_fraction_per_bin(cache):
    expected = hand_maps(cache)
    got = anatomy.anatomical_maps(cache, "train", 3)
    assert got.dtype == torch.float32 and got.shape == expected.shape == (3, 1, 16, 16)
    assert torch.equal(got, expected.float())
    frac = expected[(expected > -1) & (expected < 1)]
    assert frac.numel() > 0  # some pixels are foreground in only part of a bin's slices
    assert not torch.equal(expected[0], expected[1])  # bins differ


def _fit(cache, out, steps, *extra):
    from medgen.train.commands.fit import run_fit

    cfg = config(f"data.cache={cache}", "task.anatomical_prior=true", "data.eval_split=",
                 f"training.steps={steps}", "training.batch_size=4", "training.warmup_steps=1",
                 "training.checkpoint_every=2", "training.log_every=1", "training.ema_decay=0.5",
                 "data.num_workers=0", *extra)  # fmt: skip
    return run_fit(cfg, out, quiet=True, say=lambda *_: None)


def _loaded(run_dir, file=EMA_FILE):
    from medgen.train.runs import TrainedRun

    run = TrainedRun.open(run_dir, "latest")
    gen = DiffusionGenerator.load(run.config, run.description, CPU)
    assert torch.isnan(gen.model.anatomy.maps).all()  # nothing until loaded
    load_weights(run.checkpoint, gen.modules(), file)
    return run, gen


def test_training_and_sampling_feed_the_training_maps_of_each_bin(cache, tmp_path):
    expected = hand_maps(cache).float()
    result = _fit(cache, tmp_path / "run", 2)
    assert torch.equal(result.setup.modules["network"].anatomical_prior.maps, expected)
    _, gen = _loaded(tmp_path / "run")
    assert torch.equal(gen.model.anatomy.maps, expected)
    # sampling: the prior channel of sample i is the map of its planned z-bin
    seen = record_priors(gen.model.network)
    plan = gen.plan(None, 2)
    assert set(plan.z_bin.tolist()) == {0, 1, 2}
    gen.generate(plan, SampleSection(steps=2, batch_size=4), clip_x0=1.0)
    fed = torch.cat([call[-1] for call in seen[::2]])  # one call per step; the first of each
    assert len(seen) == 2 * -(-len(plan) // 4) and fed.shape == (len(plan), 1, 16, 16)
    assert torch.equal(fed, expected[torch.from_numpy(plan.z_bin)])
    # training: the prior channel of item i is the map of its z-bin
    ds = CacheDataset(cache, "train")
    items = [ds[i] for i in (0, 5, len(ds) - 1)]
    b = {k: torch.stack([it[k] for it in items]) for k in ("image", "mask", "token", "z_bin")}
    seen.clear()
    DiffusionTask(gen.model, CPU, 0).loss(Nets({"network": gen.model.network}, {}), b, 0)
    assert torch.equal(seen[0][-1], expected[b["z_bin"]])


def test_maps_survive_checkpoint_and_resume_bitwise(cache, tmp_path, monkeypatch):
    from medgen.train.tasks.diffusion import setup

    _fit(cache, tmp_path / "run", 2)
    _, first = _loaded(tmp_path / "run", MODEL_FILE)
    maps = first.model.anatomy.maps.clone()
    # a resumed run must take the checkpoint's maps, not recompute them
    monkeypatch.setattr(setup, "anatomical_maps", lambda *a: torch.zeros_like(maps))
    result = _fit(cache, tmp_path / "run", 4)
    assert result.resumed_from == 2 and result.step == 4
    assert torch.equal(result.setup.modules["network"].anatomical_prior.maps, maps)
    for file in (MODEL_FILE, EMA_FILE):
        run, again = _loaded(tmp_path / "run", file)
        assert run.step == 4 and torch.equal(again.model.anatomy.maps, maps)
    # a fresh run does use what the computation gives (the patch above is live)
    fresh = _fit(cache, tmp_path / "fresh", 2)
    assert torch.equal(fresh.setup.modules["network"].anatomical_prior.maps, torch.zeros_like(maps))


def test_independent_of_task_priors_both_fed_in_order():
    cfg = config("task.anatomical_prior=true", "task.generate=image", "task.priors=mask")
    model = DiffusionModel.build(cfg.task, cfg.model, description(), CPU)
    maps = torch.linspace(-1, 1, 4 * 64).reshape(4, 1, 8, 8)
    model.anatomy.fill(maps)
    b = batch()
    priors = model.conditioning(b).priors
    assert len(priors) == 2
    assert torch.equal(priors[0], (b["mask"] > 0).float() * 2 - 1)  # task.priors first
    assert torch.equal(priors[1], maps[b["z_bin"]])  # then the anatomical map of each z-bin
    x = torch.zeros(6, 1, 8, 8)
    assert model.network(x, torch.zeros(6), model.conditioning(b)).shape == x.shape
