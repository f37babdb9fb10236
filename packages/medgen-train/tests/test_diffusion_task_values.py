"""The diffusion task's numbers at chosen inputs, computed by hand in float64 (not through the
task's own helpers): the loss per channel with Min-SNR per sample at timesteps whose weights
differ, the per-sample normalisation over valid voxels of a padded volume (genuine -1 voxels
inside the data count; the mask comes from the batch, never from the pad value), and the
x0-PSNR buckets drawing t from exactly their own range, the range the training logs use."""

import math

import pytest
import torch

from medgen.train.config.fit import FitConfig
from medgen.train.config.schema import apply_overrides, validate
from medgen.train.engine.distributed import DistContext
from medgen.train.tasks.data import DataDescription
from medgen.train.tasks.diffusion.evaluator import DiffusionEvaluator
from medgen.train.tasks.diffusion.task import DiffusionModel

GAMMA = 5.0  # the quickstart's Min-SNR gamma


def description(**kw):
    base = dict(
        kind="slices", spatial_dims=2, channels=["image"], modalities=["image"], has_mask=True,
        labels=[0, 1], n_bins=4, n_classes=2, n_modes=0, shape=[8, 8], spacing=[1.0, 1.0, 1.0],
    )  # fmt: skip
    return DataDescription(**{**base, **kw})


def config(*overrides):
    base = ["data.cache=x", "model.channels=16,32", "model.attention_levels=false,false"]
    return validate(apply_overrides(FitConfig(), [*base, *overrides]))


class Pointwise(torch.nn.Module):
    """out = a * x + b per channel (a known, translation-free network); records t."""

    def __init__(self, a, b):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(a))
        self.b = torch.nn.Parameter(torch.tensor(b))
        self.times = []

    def forward(self, x, t, cond=None):
        self.times.append(t.detach().clone())
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return x * self.a.reshape(shape) + self.b.reshape(shape)


def build(net, cfg, d):
    m = DiffusionModel.build(cfg.task, cfg.model, d, torch.device("cpu"))
    m.network = net
    return m


def hand_alpha_bar(t, T=1000, s=0.008):
    """The cosine schedule (Nichol & Dhariwal) in float64, betas clipped at 0.999."""
    f = lambda u: math.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    a, out = 1.0, []
    for k in range(T):
        a *= 1 - min(1 - f(k + 1) / f(k), 0.999)
        out.append(a)
    return torch.tensor(out, dtype=torch.float64)[t]


def test_loss_per_channel_with_min_snr_per_sample_at_chosen_timesteps():
    """Timesteps from t=0 (SNR ~ 1e5, weight ~ 5e-5) to t=999 (weight 1): a weight averaged
    over the batch, a weight on the wrong sample, or a channel group over every channel moves
    the loss far outside float32 rounding."""
    cfg = config()
    net = Pointwise([0.7, -0.3], [0.05, 0.1])
    m = build(net, cfg, description())
    g = torch.Generator().manual_seed(1)
    b = 6
    image = torch.rand((b, 1, 8, 8), generator=g) * 2 - 1
    mask = (torch.rand((b, 1, 8, 8), generator=g) > 0.6).to(torch.uint8)
    batch = {"image": image, "mask": mask, "token": torch.arange(b) % 8}
    t = torch.tensor([0, 3, 40, 150, 500, 999])
    noise = torch.randn((b, 2, 8, 8), generator=g)
    x0, valid = m.encode(batch)
    losses, per_sample = m.losses(net, batch, t, noise, x0, valid, m.conditioning(batch))
    # by hand, float64: x0 = [image, mask as +-1]; epsilon target; w = min(SNR, g) / SNR
    x0h = torch.cat([image, mask.double() * 2 - 1], 1).double()
    ab = hand_alpha_bar(t).reshape(-1, 1, 1, 1)
    x_t = ab.sqrt() * x0h + (1 - ab).sqrt() * noise.double()
    out = x_t * torch.tensor([0.7, -0.3]).double().reshape(1, 2, 1, 1)
    out = out + torch.tensor([0.05, 0.1]).double().reshape(1, 2, 1, 1)
    snr = (ab / (1 - ab)).reshape(-1)
    w = torch.minimum(snr, torch.tensor(GAMMA, dtype=torch.float64)) / snr
    assert w.min() < 1e-3 and w.max() == 1.0  # the weights really differ per sample
    per_channel = ((out - noise.double()) ** 2).mean(dim=(2, 3)) * w[:, None]  # (B, C)
    # float32 forward of values ~ 1: relative error ~ 1e-6; the seeded bugs move it by > 10%
    got = {k: float(v.detach()) for k, v in losses.items()}
    assert got["loss"] == pytest.approx(float(per_channel.mean()), rel=2e-5)
    assert got["image"] == pytest.approx(float(per_channel[:, 0].mean()), rel=2e-5)
    assert got["mask"] == pytest.approx(float(per_channel[:, 1].mean()), rel=2e-5)
    torch.testing.assert_close(per_sample.double(), per_channel.mean(1), rtol=2e-5, atol=1e-9)


def test_padded_volume_loss_is_the_mean_over_its_valid_voxels_genuine_minus_ones_included():
    """A volume padded with -1 whose real data also holds -1 voxels (windowing clips all
    background to exactly -1): each sample's loss is the mean over the voxels the batch's
    ``valid`` marks, counting the real -1 ones; a mask derived from the pad value, or a mean
    over every voxel, differs."""
    cfg = config("task.generate=image")
    d = description(kind="volumes", spatial_dims=3, shape=[4, 8, 8], n_bins=1, has_mask=False)
    net = Pointwise([0.5], [0.2])
    m = build(net, cfg, d)
    g = torch.Generator().manual_seed(2)
    image = torch.rand((2, 1, 4, 8, 8), generator=g) * 2 - 1
    valid = torch.zeros((2, 1, 4, 8, 8), dtype=torch.bool)
    valid[0, :, :3, :6, :] = True  # sample 0: depth 3 of 4, 6 of 8 rows; sample 1: all real
    valid[1] = True
    image[~valid] = -1.0  # the padding
    image[0, 0, 0, :3] = -1.0  # real background, clipped to -1 (24 voxels)
    image[1, 0, :, :, :2] = -1.0  # and in the unpadded sample (64 voxels)
    batch = {"image": image, "valid": valid, "token": torch.zeros(2, dtype=torch.long)}
    t, noise = torch.tensor([100, 600]), torch.randn((2, 1, 4, 8, 8), generator=g)
    x0, v = m.encode(batch)
    losses, per_sample = m.losses(net, batch, t, noise, x0, v, m.conditioning(batch))
    ab = hand_alpha_bar(t).reshape(-1, 1, 1, 1, 1)
    x_t = ab.sqrt() * image.double() + (1 - ab).sqrt() * noise.double()
    err = (0.5 * x_t + 0.2 - noise.double()) ** 2
    snr = (ab / (1 - ab)).reshape(-1)
    w = torch.minimum(snr, torch.tensor(GAMMA, dtype=torch.float64)) / snr
    means = torch.stack([err[i][valid[i].expand_as(err[i])].mean() for i in range(2)])
    assert int(valid[0].sum()) == 3 * 6 * 8  # 144 voxels, 24 of them a genuine -1
    torch.testing.assert_close(per_sample.double(), means * w, rtol=2e-5, atol=1e-9)
    assert float(losses["loss"].detach()) == pytest.approx(float((means * w).mean()), rel=2e-5)


class Items(torch.utils.data.Dataset):
    def __init__(self, n):
        g = torch.Generator().manual_seed(3)
        self.image = torch.rand((n, 1, 8, 8), generator=g) * 2 - 1
        self.mask = (torch.rand((n, 1, 8, 8), generator=g) > 0.7).to(torch.uint8)

    def __len__(self):
        return len(self.image)

    def __getitem__(self, i):
        return {"image": self.image[i], "mask": self.mask[i], "token": torch.tensor(i % 8)}


@pytest.mark.parametrize("strategy", ["ddpm", "rflow"])
def test_x0_psnr_buckets_draw_exactly_their_own_range(strategy):
    """Bucket k of n draws t from [k T/n, (k+1) T/n) (DDPM, integer t) or [k/n, (k+1)/n)
    (flow): 50 buckets, 400 items each, so every one of the 20 integer t of a DDPM bucket is
    drawn (each missed with probability (19/20)^400 ~ 1e-9), edges included, and every t
    falls in the bucket the training logs assign it to (:meth:`DiffusionModel.bucket`)."""
    n, items = 50, 400
    cfg = config(f"task.strategy.kind={strategy}", f"task.eval_samples={items}",
                 f"task.eval_buckets={n}")  # fmt: skip
    net = Pointwise([0.5, 0.5], [0.0, 0.0])
    m = build(net, cfg, description())
    ev = DiffusionEvaluator(m, Items(items), batch_size=items, device=torch.device("cpu"))
    ev.evaluate({"network": net}, {}, 0, DistContext())
    drawn = net.times[1 : 1 + n]  # the loss pass, then one pass per bucket
    for k, model_t in enumerate(drawn):
        if strategy == "ddpm":
            t = model_t.long()
            assert sorted(set(t.tolist())) == list(range(k * 20, (k + 1) * 20)), k
        else:
            t = model_t.double() / m.strategy.model_time(torch.ones(1)).double()
            assert bool(((t >= k / n) & (t < (k + 1) / n)).all()), k
            assert float(t.min()) < (k + 0.1) / n and float(t.max()) > (k + 0.9) / n
        assert bool((m.bucket(t, n) == k).all()), k
