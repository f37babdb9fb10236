"""The seeds' loss terms in the diffusion task, against hand computations: JS-DDPM's Kendall
uncertainty weighting of the image and mask losses (closed-form minimiser, clamp) and
lesion-weighted voxel loss; SBLDM's frequency-aware term and latent CutMix, wired through the
task (the same draws as the task's own generator)."""

import math

import pytest
import torch

from medgen.models.augmentation import latent_cutmix
from medgen.models.uncertainty import UncertaintyWeighting
from medgen.train.config.fit import FitConfig
from medgen.train.config.schema import apply_overrides, validate
from medgen.train.errors import ConfigError
from medgen.train.tasks.data import DataDescription
from medgen.train.tasks.diffusion.task import LOSS_WEIGHTS, DiffusionModel, DiffusionTask


def description(has_mask=True):
    return DataDescription(
        kind="slices", spatial_dims=2, channels=["image"], modalities=["image"],
        has_mask=has_mask, labels=[0, 1], n_bins=4, n_classes=2, n_modes=0, shape=[8, 8],
        spacing=[1.0, 1.0, 1.0],
    )  # fmt: skip


def config(*overrides):
    tiny = ["data.cache=x", "model.channels=16,32", "model.attention_levels=false,false"]
    return validate(apply_overrides(FitConfig(), [*tiny, *overrides]))


class Affine(torch.nn.Module):
    """A known network: out = x * scale + shift per channel, ignoring t and conditioning."""

    def __init__(self, scale, shift):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(scale).reshape(1, -1, 1, 1))
        self.shift = torch.nn.Parameter(torch.tensor(shift).reshape(1, -1, 1, 1))

    def forward(self, x, t, cond=None):
        return x * self.scale + self.shift


def test_weighting_is_the_closed_form_and_its_minimiser_is_log_loss():
    w = UncertaintyWeighting(("image", "mask"))
    with torch.no_grad():
        w.log_vars.copy_(torch.tensor([0.3, -1.2]))
    losses = {"image": torch.tensor(0.8), "mask": torch.tensor(0.05)}
    total, logs = w(losses)
    hand = math.exp(-0.3) * 0.8 + 0.3 + math.exp(1.2) * 0.05 - 1.2
    assert float(total.detach()) == pytest.approx(hand, rel=1e-6)
    assert logs == pytest.approx({"weight_image": math.exp(-0.3), "weight_mask": math.exp(1.2)})
    # d/ds (exp(-s) L + s) = 0 at s = log L: gradient descent reaches it.
    opt = torch.optim.SGD(w.parameters(), lr=0.05)
    for _ in range(3000):
        opt.zero_grad()
        w(losses)[0].backward()
        opt.step()
    assert w.log_vars.detach().tolist() == pytest.approx([math.log(0.8), math.log(0.05)], abs=1e-3)


def test_clamp_bounds_the_weight_and_stops_the_gradient():
    w = UncertaintyWeighting(("a", "b"), clamp_range=(-2.0, 5.0))
    with torch.no_grad():
        w.log_vars.copy_(torch.tensor([-3.0, 0.0]))
    total, logs = w({"a": torch.tensor(1e-6), "b": torch.tensor(2.0)})
    assert logs["weight_a"] == pytest.approx(math.exp(2.0))
    total.backward()
    assert w.log_vars.grad[0] == 0 and w.log_vars.grad[1] != 0


@pytest.mark.parametrize(
    "kw", [dict(names=("a",)), dict(names=("a", "a")), dict(names=("a", "b"), clamp_range=(1, 1))]
)
def test_bad_weighting_arguments(kw):
    with pytest.raises(ValueError, match="UncertaintyWeighting"):
        UncertaintyWeighting(kw["names"], kw.get("clamp_range", (-5, 5)))


def _batch(b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand((b, 1, 8, 8), generator=g) * 2 - 1
    mask = (torch.rand((b, 1, 8, 8), generator=g) > 0.7).to(torch.uint8)
    return {"image": image, "mask": mask, "token": torch.arange(b) % 8}


def test_lesion_weighted_loss_by_hand():
    """Loss per sample = sum((1 + w m) e) / sum(1 + w m) over voxels and channels, in float64."""
    lw = 4.0
    cfg = config(f"task.lesion_weight={lw}", "task.strategy.min_snr_gamma=null")
    net = Affine([0.7, -0.3], [0.05, 0.1])
    m = DiffusionModel.build(cfg.task, cfg.model, description(), torch.device("cpu"))
    m.network = net
    batch = _batch()
    g = torch.Generator().manual_seed(3)
    t = torch.tensor([10, 200, 500, 900])
    noise = torch.randn((4, 2, 8, 8), generator=g)
    x0, valid = m.encode(batch)
    weights = m.voxel_weights(batch, valid, x0)
    with torch.no_grad():
        losses, _ = m.losses(net, batch, t, noise, x0, weights, m.conditioning(batch))
    x_t = m.strategy.add_noise(x0, noise, t)
    out = net(x_t, m.strategy.model_time(t), None).detach().double()
    err = (out - noise.double()) ** 2  # epsilon target
    v = (1 + lw * (batch["mask"] > 0).double()).expand_as(err)
    hand = ((err * v).sum(dim=(1, 2, 3)) / v.sum(dim=(1, 2, 3))).mean()
    assert float(losses["loss"]) == pytest.approx(float(hand), rel=1e-5)
    img = ((err[:, :1] * v[:, :1]).sum(dim=(1, 2, 3)) / v[:, :1].sum(dim=(1, 2, 3))).mean()
    assert float(losses["image"]) == pytest.approx(float(img), rel=1e-5)
    plain = float(err.mean(dim=(1, 2, 3)).mean())
    assert abs(float(losses["loss"]) - plain) > 1e-3  # the weighting changes the number


def test_uncertainty_weighting_through_the_task():
    cfg = config("task.uncertainty_weighting=true", "task.uncertainty_clamp=-3,3")
    m = DiffusionModel.build(cfg.task, cfg.model, description(), torch.device("cpu"))
    assert set(m.checkpointed()) == {"network", LOSS_WEIGHTS}
    assert m.loss_weighting.clamp_range == (-3.0, 3.0)
    with torch.no_grad():
        m.loss_weighting.log_vars.copy_(torch.tensor([0.5, -0.5]))
    task = DiffusionTask(m, torch.device("cpu"), seed=0)
    nets = m.modules()
    state = task.state_dict()
    loss, logs = task.loss(nets, _batch(), 0)
    assert logs["loss_weight_image"] == pytest.approx(math.exp(-0.5))
    assert logs["loss_weight_mask"] == pytest.approx(math.exp(0.5))
    hand = math.exp(-0.5) * logs["loss_image"] + 0.5 + math.exp(0.5) * logs["loss_mask"] - 0.5
    assert float(loss.detach()) == pytest.approx(hand, rel=1e-5)
    loss.backward()
    assert m.loss_weighting.log_vars.grad is not None
    assert torch.all(m.loss_weighting.log_vars.grad != 0)
    task.load_state_dict(state)  # same draw without the weighting: the plain mean of channels
    plain = DiffusionModel.build(config().task, cfg.model, description(), torch.device("cpu"))
    plain.network.load_state_dict(m.network.state_dict())
    other = DiffusionTask(plain, torch.device("cpu"), seed=0)
    other.load_state_dict(state)
    _, plogs = other.loss(plain.modules(), _batch(), 0)
    assert plogs["loss_image"] == pytest.approx(logs["loss_image"], rel=1e-6)


def test_bad_config():
    with pytest.raises(ConfigError, match="uncertainty_clamp"):
        config("task.uncertainty_clamp=2,1")
    cfg = config("task.uncertainty_weighting=true", "task.generate=image")  # one channel group
    with pytest.raises(ConfigError, match="task.uncertainty_weighting: needs two or more"):
        DiffusionModel.build(cfg.task, cfg.model, description(), torch.device("cpu"))


def test_lesion_weight_needs_masks():
    cfg = config("task.lesion_weight=2", "task.generate=image")
    with pytest.raises(ConfigError, match="task.lesion_weight"):
        DiffusionModel.build(cfg.task, cfg.model, description(has_mask=False), torch.device("cpu"))


def test_frequency_term_is_lambda_times_the_mse_without_weighting():
    """Parseval: with orthonormal FFTs and no spectral weighting the term is lambda * MSE,
    Min-SNR weights included."""
    base = config()
    cfg = config("task.freq_loss_weight=0.5")
    m = DiffusionModel.build(cfg.task, cfg.model, description(), torch.device("cpu"))
    plain = DiffusionModel.build(base.task, base.model, description(), torch.device("cpu"))
    plain.network.load_state_dict(m.network.state_dict())
    batch, g = _batch(), torch.Generator().manual_seed(4)
    t = torch.tensor([0, 100, 600, 999])
    noise = torch.randn((4, 2, 8, 8), generator=g)
    with torch.no_grad():
        x0, valid = m.encode(batch)
        args = (batch, t, noise, x0, valid, m.conditioning(batch))
        got, _ = m.losses(m.network, *args, extra=True)
        ref, _ = plain.losses(plain.network, *args, extra=True)
    assert float(got["freq"]) == pytest.approx(0.5 * float(ref["loss"]), rel=1e-5)
    assert float(got["loss"]) == pytest.approx(1.5 * float(ref["loss"]), rel=1e-5)
    assert "freq" not in m.losses(m.network, *args)[0]  # validation loss stays comparable


def test_cutmix_through_the_task_uses_the_task_generator_after_t_and_noise():
    cfg = config("task.cutmix_prob=1.0", "task.lesion_weight=3")
    m = DiffusionModel.build(cfg.task, cfg.model, description(), torch.device("cpu"))
    task = DiffusionTask(m, torch.device("cpu"), seed=7)
    batch = _batch()
    with torch.no_grad():
        loss, _ = task.loss(m.modules(), batch, 0)
        g = torch.Generator().manual_seed(7)
        x0, valid = m.encode(batch)
        t = m.strategy.sample_timesteps(4, g)
        noise = torch.randn(x0.shape, generator=g)
        w = m.voxel_weights(batch, valid, x0)
        mixed, w_mixed, flags = latent_cutmix(x0, w, 1.0, g)
        assert bool(flags.all()) and not torch.equal(mixed, x0)
        cond = m.conditioning(batch)
        ref, _ = m.losses(m.network, batch, t, noise, mixed, w_mixed, cond, extra=True)
        unmixed, _ = m.losses(m.network, batch, t, noise, x0, w, cond, extra=True)
    assert float(loss) == pytest.approx(float(ref["loss"]), rel=1e-6)
    assert abs(float(loss) - float(unmixed["loss"])) > 1e-4
