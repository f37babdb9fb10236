"""The diffusion task's own arithmetic, against hand computations: the loss per channel with
Min-SNR per sample, the timestep-bucket logs, the validity mask, the latent channel groups,
the x0-PSNR evaluator (buckets, rank invariance) and sampling (finiteness, per-sample seeds)."""

import math

import pytest
import torch

from medgen.cuda import haar_dwt
from medgen.models import DDPM, min_snr_weight, schedules, spaces
from medgen.train.config.fit import FitConfig, SampleSection
from medgen.train.config.schema import apply_overrides, validate
from medgen.train.engine.distributed import DistContext
from medgen.train.errors import ConfigError, SamplingError
from medgen.train.tasks.data import DataDescription
from medgen.train.tasks.diffusion.channels import ChannelLayout
from medgen.train.tasks.diffusion.evaluator import DiffusionEvaluator
from medgen.train.tasks.diffusion.sampling import DiffusionGenerator
from medgen.train.tasks.diffusion.task import DiffusionModel, DiffusionTask


def description(**kw):
    base = dict(
        kind="slices", spatial_dims=2, channels=["image"], modalities=["image"], has_mask=True,
        labels=[0, 1], n_bins=4, n_classes=2, n_modes=0, shape=[8, 8], spacing=[1.0, 1.0, 1.0],
    )  # fmt: skip
    return DataDescription(**{**base, **kw})


def config(*overrides):
    base = ["data.cache=x", "model.channels=16,32", "model.attention_levels=false,false"]
    return validate(apply_overrides(FitConfig(), [*base, *overrides]))


class Affine(torch.nn.Module):
    """A network whose output is known: a 1x1 convolution of the input, plus t / 1000."""

    def __init__(self, channels):
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, channels, 1)
        self.times = []

    def forward(self, x, t, cond=None):
        self.times.append(t.detach().clone())
        return self.conv(x) + (t.float() / 1000).reshape(-1, 1, 1, 1)


def model_with(net, cfg, d):
    m = DiffusionModel.build(cfg.task, cfg.model, d, torch.device("cpu"))
    m.network = net
    return m


def batch(b=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.rand((b, 1, 8, 8), generator=g) * 2 - 1,
        "mask": (torch.rand((b, 1, 8, 8), generator=g) > 0.7).to(torch.uint8),
        "token": torch.arange(b) % 8,
        "z_bin": torch.arange(b) % 4,
        "class_id": (torch.arange(b) // 4) % 2,
    }


def test_loss_equals_the_hand_computation_per_channel_with_min_snr_per_sample():
    cfg = config()
    net = Affine(2)
    m = model_with(net, cfg, description())
    task = DiffusionTask(m, torch.device("cpu"), seed=7)
    b = batch()
    loss, logs = task.loss({"network": net}, b, step=0)
    # the same draws, by hand
    g = torch.Generator().manual_seed(7)
    strategy = DDPM(schedules.cosine(1000), "epsilon")
    x0 = torch.cat([b["image"], (b["mask"] > 0).float() * 2 - 1], dim=1)
    t = strategy.sample_timesteps(6, g)
    noise = torch.randn(x0.shape, generator=g)
    with torch.no_grad():
        out = net.conv(strategy.add_noise(x0, noise, t)) + (t.float() / 1000).reshape(-1, 1, 1, 1)
    err = (out - noise) ** 2  # epsilon target
    w = min_snr_weight(strategy.snr(t, x0).reshape(-1), "epsilon", 5.0)
    per_channel = err.mean(dim=(2, 3)) * w[:, None]  # (B, C), weighted per sample
    assert float(loss.detach()) == pytest.approx(float(per_channel.mean()), rel=1e-6)
    assert logs["loss_image"] == pytest.approx(float(per_channel[:, 0].mean()), rel=1e-6)
    assert logs["loss_mask"] == pytest.approx(float(per_channel[:, 1].mean()), rel=1e-6)
    per_sample = per_channel.mean(1)
    for k in range(10):
        sel = (t * 10 // 1000) == k
        total, count = logs[f"loss_bucket{k}"]
        assert count == int(sel.sum())
        assert total == pytest.approx(float(per_sample[sel].sum()), rel=1e-5, abs=1e-7)
    assert sum(logs[f"loss_bucket{k}"][1] for k in range(10)) == 6


def test_padding_is_outside_the_loss():
    cfg = config("task.generate=image")
    d = description(kind="volumes", spatial_dims=3, shape=[4, 8, 8], n_bins=1, has_mask=False)
    net = Affine(1)
    net.conv = torch.nn.Conv3d(1, 1, 1)
    net.forward = lambda x, t, cond=None: net.conv(x)
    m = model_with(net, cfg, d)
    g = torch.Generator().manual_seed(0)
    image = torch.rand((2, 1, 4, 8, 8), generator=g)
    valid = torch.zeros((2, 1, 4, 8, 8), dtype=torch.bool)
    valid[:, :, :, 2:6, 1:7] = True
    a = {"image": image, "valid": valid, "token": torch.zeros(2, dtype=torch.long)}
    garbage = image.clone()
    garbage[~valid.expand_as(image)] = 50.0  # only where the padding is
    b = {**a, "image": garbage}
    t, noise = torch.tensor([10, 500]), torch.randn((2, 1, 4, 8, 8), generator=g)
    la, _ = m.losses(net, a, t, noise, *m.encode(a), None)
    lb, _ = m.losses(net, b, t, noise, *m.encode(b), None)
    assert float(la["loss"].detach()) == pytest.approx(float(lb["loss"].detach()), rel=1e-6)


@pytest.mark.parametrize("kind", ["wavelet", "space_to_depth"])
def test_latent_channel_groups_hold_their_data_channel(kind):
    layout = ChannelLayout.from_config(("image", "mask"), (), ["image"], True)
    space = spaces.WaveletSpace(2) if kind == "wavelet" else spaces.SpaceToDepth(2, 2)
    groups = layout.latent_groups(space)
    x = torch.zeros((1, 2, 8, 8))
    x[:, 1] = torch.randn((8, 8))  # only the mask channel carries signal
    z = space.encode(x)
    if kind == "wavelet":
        torch.testing.assert_close(
            z, haar_dwt(x) * torch.tensor([1 / 3] * 2 + [1] * 6)[:, None, None]
        )
    assert z[:, groups["image"]].abs().max() == 0
    assert z[:, groups["mask"]].abs().max() > 0
    assert sorted(groups["image"] + groups["mask"]) == list(range(z.shape[1]))


def test_channel_names_are_checked_against_the_data():
    layout = ChannelLayout.from_config(("image", "mask"), (), ["t1", "flair"], True)
    assert layout.generate == ("t1", "flair", "mask")  # image = every modality
    with pytest.raises(ConfigError, match="task.generate: channel 'seg' is not in the data"):
        ChannelLayout.from_config(("seg",), (), ["image"], True)
    with pytest.raises(ConfigError, match="task.generate: channel 'mask' is not in the data"):
        ChannelLayout.from_config(("image", "mask"), (), ["image"], False)
    with pytest.raises(ConfigError, match="also generated"):
        ChannelLayout.from_config(("image",), ("t1",), ["t1", "flair"], False)


class Items(torch.utils.data.Dataset):
    def __init__(self, n=10):
        self.b = batch(n, seed=3)

    def __len__(self):
        return len(self.b["image"])

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.b.items()}


def test_x0_psnr_buckets_draw_their_own_timesteps_and_ranks_add_up():
    cfg = config("task.eval_samples=10", "task.eval_buckets=5")
    net = Affine(2)
    m = model_with(net, cfg, description())
    ev = DiffusionEvaluator(m, Items(), batch_size=4, device=torch.device("cpu"))
    modules = {"network": net}
    one = ev.evaluate(modules, {}, 0, DistContext())
    # 3 chunks (4 + 4 + 2 items) of one loss pass then 5 bucket passes; then the image's 3
    assert len(net.times) == 3 * 6 + 3
    bucket_calls = [t for i, t in enumerate(net.times[:18]) if i % 6 != 0]
    for i, t in enumerate(bucket_calls):
        k = i % 5
        assert ((t >= k * 200) & (t < (k + 1) * 200)).all(), (k, t)
    parts = [ev.evaluate(modules, {}, 0, DistContext(r, 2)) for r in (0, 1)]
    for key, (total, count) in one.sums.items():
        assert parts[0].sums[key][1] + parts[1].sums[key][1] == count
        assert parts[0].sums[key][0] + parts[1].sums[key][0] == pytest.approx(total, rel=1e-6)
    means = {k: s / c for k, (s, c) in one.sums.items()}
    summary = ev.summarize(means)
    assert summary["x0_psnr_t0"] == pytest.approx(10 * math.log10(4 / means["x0_mse_t0"]))
    assert set(summary) == set(ev.metric_names())
    assert one.images["x0_predictions"].shape == (4 * 8, 4 * 8)


class Exploding(torch.nn.Module):
    def __init__(self, at):
        super().__init__()
        self.calls, self.at = 0, at
        self.p = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, t, cond=None):
        self.calls += 1
        return torch.full_like(x, float("nan")) if self.calls == self.at else x * 0.1


def test_sampling_stops_on_the_first_non_finite_step_naming_it():
    cfg = config()
    gen = DiffusionGenerator(model_with(Exploding(at=3), cfg, description()), torch.device("cpu"))
    plan = gen.plan(None, 1)
    assert len(plan) == 8 and list(plan.token) == list(range(8))
    with pytest.raises(SamplingError, match=r"step 3 \(t=\d+\) in 8 of the samples 0..7"):
        gen.generate(plan, SampleSection(steps=5, batch_size=8))


def test_a_sample_does_not_depend_on_the_batch_it_is_drawn_in():
    cfg = config()
    torch.manual_seed(0)
    net = Affine(2)
    gen = DiffusionGenerator(model_with(net, cfg, description()), torch.device("cpu"))
    plan = gen.plan(6, 4, bins=[1, 2], classes=[1])
    assert list(plan.token) == [5, 6, 5, 6, 5, 6]
    a = gen.generate(plan, SampleSection(steps=4, batch_size=6), clip_x0=1.0)
    b = gen.generate(plan, SampleSection(steps=4, batch_size=4), clip_x0=1.0)
    torch.testing.assert_close(torch.from_numpy(a), torch.from_numpy(b), rtol=0, atol=1e-6)
    with pytest.raises(ConfigError, match=r"--bins: z-bins \[4\] outside .* \[0, 4\)"):
        gen.plan(None, 1, bins=[4])
    with pytest.raises(ConfigError, match="--sampler: 'euler' does not sample a 'ddpm' model"):
        gen.generate(plan, SampleSection(sampler="euler", steps=2))
