"""RectifiedFlow: conventions, t sampling, shift, and the peers (diffusers' FlowMatchEuler,
MONAI's RFlowScheduler)."""

import math

import pytest
import torch

from medgen.models import RectifiedFlow, samplers
from medgen.models.strategies.flow import resolution_shift, shift_time


def psnr(a, b):
    return 10 * torch.log10(4.0 / ((a - b) ** 2).mean()).item()


def data(shape=(4, 2, 8, 8), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g) * 2 - 1, torch.randn(shape, generator=g)


def test_path_endpoints_and_target():
    fm = RectifiedFlow()
    x0, eps = data()
    b = x0.shape[0]
    assert torch.equal(fm.add_noise(x0, eps, torch.zeros(b)), x0)  # t = 0 is data, exactly
    assert torch.equal(fm.add_noise(x0, eps, torch.ones(b)), eps)  # t = 1 is noise, exactly
    t = torch.tensor([0.1, 0.25, 0.5, 0.9])
    x_t = fm.add_noise(x0, eps, t)
    tt = t.double().reshape(-1, 1, 1, 1)
    torch.testing.assert_close(x_t.double(), (1 - tt) * x0.double() + tt * eps.double())
    v = fm.training_target(x0, eps, t)
    torch.testing.assert_close(v, eps - x0)
    # v is the time derivative of the path: finite difference in float64
    h = 1e-6
    x64, e64, t64 = x0.double(), eps.double(), t.double()
    d = (fm.add_noise(x64, e64, t64 + h) - fm.add_noise(x64, e64, t64)) / h
    torch.testing.assert_close(d, v.double(), atol=1e-4, rtol=0)


def test_x0_and_eps_recovered_at_every_t():
    """With the true velocity, x0 comes back > 40 dB at every t (seed 001), eps likewise."""
    fm = RectifiedFlow()
    x0, eps = data((1001, 1, 8, 8))
    t = torch.linspace(0, 1, 1001)
    x_t = fm.add_noise(x0, eps, t)
    x0_hat, eps_hat = fm.predict_x0_eps(x_t, fm.training_target(x0, eps, t), t)
    assert min(psnr(x0_hat[i], x0[i]) for i in range(1001)) > 40
    assert min(psnr(eps_hat[i], eps[i]) for i in range(1001)) > 40
    torch.testing.assert_close(fm.predict_x0(x_t, fm.training_target(x0, eps, t), t), x0_hat)


def test_shift_time_properties_and_monai_transform():
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    assert torch.equal(shift_time(t, 1.0), t)
    s3 = shift_time(t, 3.0)
    assert float(s3[0]) == 0 and float(s3[-1]) == 1
    assert bool((s3[1:-1] > t[1:-1]).all())  # s > 1 moves time towards noise
    torch.testing.assert_close(shift_time(s3, 1 / 3.0), t)  # inverse is 1/s
    rf = pytest.importorskip("monai.networks.schedulers.rectified_flow")
    # MONAI's timestep_transform on [0, T] times: ratio = (numel / base)^(1/d) * scale
    theirs = rf.timestep_transform(
        t * 1000, input_img_size_numel=64 * 64 * 64, base_img_size_numel=32**3, scale=1.5
    )
    s = resolution_shift((64, 64, 64), 32**3, scale=1.5)
    assert s == pytest.approx(3.0)
    torch.testing.assert_close(shift_time(t, s) * 1000, theirs, rtol=0, atol=1e-9)


def test_shift_really_changes_the_schedule():
    g = torch.Generator().manual_seed(0)
    plain = RectifiedFlow(shift=1.0, t_sampling="uniform").sample_timesteps(20000, g)
    g = torch.Generator().manual_seed(0)
    shifted = RectifiedFlow(shift=3.0, t_sampling="uniform").sample_timesteps(20000, g)
    torch.testing.assert_close(shifted.double(), shift_time(plain.double(), 3.0), atol=1e-6, rtol=0)
    # E[shift_3(U)] = integral of 3u/(1+2u) du over [0, 1] = 1.5 - 0.75 ln 3
    assert float(shifted.double().mean()) == pytest.approx(1.5 - 0.75 * math.log(3), abs=0.01)
    grid1, grid3 = RectifiedFlow(shift=1.0).timesteps(10), RectifiedFlow(shift=3.0).timesteps(10)
    torch.testing.assert_close(grid1, torch.linspace(1, 0, 11, dtype=torch.float64))
    torch.testing.assert_close(grid3, shift_time(grid1, 3.0))
    assert bool((grid3[1:-1] > grid1[1:-1]).all())


def test_logit_normal_statistics_and_continuous_float32_t():
    fm = RectifiedFlow(t_sampling="logit_normal", logit_mean=0.5, logit_std=0.8)
    t = fm.sample_timesteps(50000, torch.Generator().manual_seed(1))
    assert t.dtype == torch.float32 and bool(((t > 0) & (t < 1)).all())
    logit = torch.logit(t.double())
    assert float(logit.mean()) == pytest.approx(0.5, abs=0.02)
    assert float(logit.std()) == pytest.approx(0.8, abs=0.02)
    # never quantised: far more distinct values than float16 has in (0, 1), and no fp16 rounding
    assert t.unique().numel() > 45000
    assert bool((t.half().float() != t).float().mean() > 0.99)
    mt = fm.model_time(t)
    assert mt.dtype == torch.float32
    torch.testing.assert_close(mt, t * 1000)
    u = RectifiedFlow(t_sampling="uniform").sample_timesteps(50000, torch.Generator())
    assert float(u.mean()) == pytest.approx(0.5, abs=0.01)


def test_snr_and_config_round_trip():
    yaml = pytest.importorskip("yaml")
    from medgen.models import strategy_from_config

    fm = RectifiedFlow(shift=2.5, t_sampling="uniform", logit_mean=0.1, logit_std=1e-5)
    again = strategy_from_config(yaml.safe_load(yaml.safe_dump(fm.config())))
    assert isinstance(again, RectifiedFlow) and again.config() == fm.config()
    x = torch.zeros(3, 1, 2, 2)
    snr = fm.snr(torch.tensor([0.2, 0.5, 0.8]), x).flatten()
    torch.testing.assert_close(snr, torch.tensor([16.0, 1.0, 1 / 16]))
    with pytest.raises(ValueError, match="shift"):
        RectifiedFlow(shift=0.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fm.add_noise(x, x, torch.tensor([0.0, 0.5, 1.5]))


def toy_velocity(x, t, cond):
    """A deterministic stand-in for a velocity network (t arrives as float32 t * 1000)."""
    tt = t.float().reshape(-1, *([1] * (x.ndim - 1))) / 1000
    return torch.tanh(0.5 * x) - 0.3 * tt + 0.1


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("steps", [7, 20])
def test_euler_matches_diffusers_flow_match_euler(shift, steps):
    """diffusers' FlowMatchEulerDiscreteScheduler given our (unshifted) grid as ``sigmas``:
    same conventions (sigma = t, x_t = (1 - t) x0 + t eps, v = eps - x0, shift), equal to
    1e-6. Its *default* grid differs (next test)."""
    diffusers = pytest.importorskip("diffusers")
    fm = RectifiedFlow(shift=shift)
    ref = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    unshifted = torch.linspace(1, 0, steps + 1, dtype=torch.float64)[:-1]
    ref.set_timesteps(sigmas=unshifted.float().numpy())
    torch.testing.assert_close(ref.sigmas.double(), fm.timesteps(steps), atol=3e-7, rtol=0)
    x_T = torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    x = x_T.clone()
    for t in ref.timesteps:
        x = ref.step(toy_velocity(x, t.repeat(3), None), t, x).prev_sample
    ours = samplers.euler(toy_velocity, fm, x_T, steps)
    torch.testing.assert_close(ours, x, atol=1e-6, rtol=0)


def test_diffusers_default_flow_grid_differs():
    """Documented difference: diffusers' default grid runs linspace(1, shift(1/T)) in time units
    and shifts it again, so it ends at shift(shift(1/T)) and then jumps to 0; ours is
    shift(linspace(1, 0, n + 1))."""
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    ref.set_timesteps(10)
    ours = RectifiedFlow(shift=3.0).timesteps(10)
    assert float(ref.sigmas[-2]) == pytest.approx(shift_time(shift_time(1e-3, 3.0), 3.0), rel=1e-5)
    assert float(ours[-2]) == pytest.approx(shift_time(0.1, 3.0))
    assert not torch.allclose(ref.sigmas.double(), ours, atol=1e-3)


def monai_rflow(**kw):
    rf = pytest.importorskip("monai.networks.schedulers.rectified_flow")
    return rf.RFlowScheduler(num_train_timesteps=1000, use_discrete_timesteps=False, **kw)


def test_euler_matches_monai_where_right():
    """With n = 8 every MONAI time is exact in float16 and MONAI's step equals ours once its
    velocity sign (x0 - eps) is flipped."""
    sched = monai_rflow()
    sched.set_timesteps(8)
    fm = RectifiedFlow()
    assert torch.equal(sched.timesteps.double() / 1000, fm.timesteps(8)[:-1])
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    x = x_T.clone()
    for t in sched.timesteps:
        v_ours = toy_velocity(x, t.float().repeat(2), None)
        x, _ = sched.step(-v_ours, t, x)  # MONAI's velocity is x0 - eps
    torch.testing.assert_close(samplers.euler(toy_velocity, fm, x_T, 8), x, atol=1e-6, rtol=0)


def test_monai_rflow_quantises_t_to_float16():
    """MONAI casts continuous inference times to float16 (857.142857 -> 857.0); ours stay
    float64 on the grid and float32 for the network."""
    sched = monai_rflow()
    sched.set_timesteps(7)
    assert sched.timesteps.dtype == torch.float16
    exact = RectifiedFlow().timesteps(7)[:-1] * 1000
    err = (sched.timesteps.double() - exact).abs().max()
    assert 0.1 < float(err) < 0.5  # float16 spacing is 0.5 at ~900
    ours = RectifiedFlow().model_time(RectifiedFlow().timesteps(7)[:-1])
    assert (ours.double() - exact).abs().max() < 1e-4


def test_monai_rflow_ignores_transform_scale():
    """MONAI stores ``transform_scale`` but never passes it to ``timestep_transform``: scale 1
    and scale 4 give the same times; our shift with scale 4 really differs."""
    kw = dict(use_timestep_transform=True, base_img_size_numel=32 * 32, spatial_dim=2)
    a, b = monai_rflow(transform_scale=1.0, **kw), monai_rflow(transform_scale=4.0, **kw)
    a.set_timesteps(10, input_img_size_numel=32 * 32)
    b.set_timesteps(10, input_img_size_numel=32 * 32)
    assert torch.equal(a.timesteps, b.timesteps)
    s1, s4 = resolution_shift((32, 32), 32 * 32, 1.0), resolution_shift((32, 32), 32 * 32, 4.0)
    assert (s1, s4) == (1.0, 4.0)
    assert not torch.allclose(
        RectifiedFlow(shift=s1).timesteps(10), RectifiedFlow(s4).timesteps(10)
    )


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_heun_matches_diffusers_flow_match_heun(shift):
    """diffusers' FlowMatchHeunDiscreteScheduler (s_churn = 0) on our grid, laid out its way
    (inner times twice, 2n - 1 model calls, last step Euler): equal to 1e-6. Its own
    ``set_timesteps`` takes no sigmas and uses the double-shifted default grid."""
    diffusers = pytest.importorskip("diffusers")
    steps = 9
    fm = RectifiedFlow(shift=shift)
    ref = diffusers.FlowMatchHeunDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    ref.set_timesteps(steps)
    sig = fm.timesteps(steps).float()
    ref.sigmas = torch.cat([sig[:1], sig[1:-1].repeat_interleave(2), sig[-1:]])
    ts = sig[:-1] * 1000
    ref.timesteps = torch.cat([ts[:1], ts[1:].repeat_interleave(2)])
    x_T = torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    x = x_T.clone()
    for t in ref.timesteps:
        x = ref.step(toy_velocity(x, t.repeat(3), None), t, x).prev_sample
    ours = samplers.heun(toy_velocity, fm, x_T, steps)
    torch.testing.assert_close(ours, x, atol=1e-6, rtol=0)


def test_logit_normal_matches_monai_distribution():
    """MONAI's RFlowScheduler logit-normal (LogisticNormal(loc, scale), continuous times) and
    ours draw from the same law: sigmoid(N(loc, scale^2)). Quantiles of 40k draws agree."""
    sched = monai_rflow(sample_method="logit-normal", loc=0.4, scale=1.3)
    torch.manual_seed(0)
    theirs = sched.sample_timesteps(torch.zeros(40000, 1, 1, 1)).double() / 1000
    ours = RectifiedFlow(t_sampling="logit_normal", logit_mean=0.4, logit_std=1.3)
    t = ours.sample_timesteps(40000, torch.Generator().manual_seed(1)).double()
    q = torch.linspace(0.02, 0.98, 25, dtype=torch.float64)
    torch.testing.assert_close(torch.quantile(t, q), torch.quantile(theirs, q), atol=0.01, rtol=0)
    exact = torch.sigmoid(0.4 + 1.3 * torch.special.ndtri(q))  # the law's quantile function
    torch.testing.assert_close(torch.quantile(t, q), exact, atol=0.01, rtol=0)
