"""Analytic properties of the samplers: exact oracles, inversion, guidance, early stop and
low-precision stability. No peer library involved: every expected value is closed-form."""

import itertools

import pytest
import torch

from medgen.models import DDPM, RectifiedFlow, inference_timesteps, samplers, schedules
from medgen.models.samplers import ClassifierFreeGuidance, EarlyStop

MU, S = 0.3, 0.5  # data ~ N(MU, S^2) elementwise


def gaussian_oracle(strategy: DDPM):
    """The exact denoiser for Gaussian data N(MU, S^2): E[x0 | x_t] in closed form, returned
    as whatever the strategy's prediction type is."""

    def model(x, t, cond):  # float64 inside, like a network whose output is finite
        a = strategy.alphas_cumprod[t.cpu().long()].reshape(-1, *([1] * (x.ndim - 1)))
        sa, sb, xd = a.sqrt(), (1 - a).sqrt(), x.double()
        x0 = MU + sa * S**2 * (xd - sa * MU) / (a * S**2 + 1 - a)
        eps = (xd - sa * x0) / sb
        out = {"epsilon": eps, "sample": x0, "v": sa * eps - sb * x0}[strategy.prediction]
        return out.to(x.dtype)

    return model


def test_ddim_eta0_is_deterministic():
    strategy = DDPM(schedules.cosine(1000), "v")
    model = gaussian_oracle(strategy)
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    a = samplers.ddim(model, strategy, x_T, 20, generator=torch.Generator().manual_seed(1))
    b = samplers.ddim(model, strategy, x_T, 20, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    c = samplers.ddim(model, strategy, x_T, 20, eta=1.0, generator=torch.Generator().manual_seed(1))
    d = samplers.ddim(model, strategy, x_T, 20, eta=1.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(c, d) and not torch.allclose(a, c)


@pytest.mark.parametrize("prediction", ["epsilon", "v", "sample"])
@pytest.mark.parametrize(("schedule", "refined_tol"), [("linear", 1e-6), ("cosine", 5e-3)])
def test_ddim_inversion_round_trips_with_an_exact_oracle(prediction, schedule, refined_tol):
    """x0 -> ddim_invert -> x_T -> ddim -> x0 with the exact Gaussian denoiser, float64.
    Plain inversion evaluates the model one level off (the usual approximation): within 0.1
    at 100 steps. Fixed-point refinement removes that error where the iteration contracts: to
    1e-6 for the linear schedule (limited by medgen.cuda's 1e-12 alpha_bar floor at the
    alpha_bar = 1 end); the cosine schedule's first step (alpha_bar = 2.4e-9, where the map is
    almost the identity) keeps ~2e-3."""
    strategy = DDPM(schedules.make(schedule, 1000), prediction)
    model = gaussian_oracle(strategy)
    g = torch.Generator().manual_seed(0)
    x0 = (MU + S * torch.randn(3, 1, 8, 8, generator=g)).double()
    x_T = samplers.ddim_invert(model, strategy, x0, 100)
    assert float(x_T.std()) == pytest.approx(1.0, abs=0.25)  # lands on noise
    plain = (samplers.ddim(model, strategy, x_T, 100) - x0).abs().max()
    assert 1e-3 < plain < 0.1
    refined = samplers.ddim_invert(model, strategy, x0, 100, fixed_point_iters=8)
    err = (samplers.ddim(model, strategy, refined, 100) - x0).abs().max()
    assert err < refined_tol and err < plain / 10


def test_ddim_inversion_float32_round_trip():
    strategy = DDPM(schedules.linear(1000), "epsilon")
    model = gaussian_oracle(strategy)
    x0 = MU + S * torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(3))
    x_T = samplers.ddim_invert(model, strategy, x0, 50, fixed_point_iters=8)
    torch.testing.assert_close(samplers.ddim(model, strategy, x_T, 50), x0, atol=1e-4, rtol=0)


def linear_flow_oracle(a, b):
    """Toy linear problem: x0 = a * eps + b, so every path is the straight line
    x_t = ((1 - t) a + t) eps + (1 - t) b and the exact velocity is (1 - a) eps - b."""

    def model(x, t, cond):
        tt = (t.double() / 1000).reshape(-1, *([1] * (x.ndim - 1)))
        eps = (x.double() - (1 - tt) * b) / ((1 - tt) * a + tt)
        return ((1 - a) * eps - b).to(x.dtype)

    return model


def test_ddim_inversion_passes_model_time():
    """Inversion, like every sampler, gives the network ``strategy.model_time(t)`` (float32),
    walking the sampling grid backwards, once per fixed-point iteration."""
    strategy = DDPM(schedules.cosine(1000), "v")
    seen = []

    def model(x, t, cond):
        seen.append(t)
        return torch.zeros_like(x)

    samplers.ddim_invert(model, strategy, torch.zeros(2, 1, 4, 4), 5, fixed_point_iters=1)
    grid = inference_timesteps(1000, 5).flip(0)
    assert all(t.dtype == torch.float32 and t.shape == (2,) for t in seen)
    assert torch.equal(
        torch.stack([t[0] for t in seen]), strategy.model_time(grid.repeat_interleave(2))
    )


@pytest.mark.parametrize("sampler", ["euler", "heun"])
@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("steps", [1, 4, 17])
def test_flow_transports_gaussian_to_target_exactly(sampler, shift, steps):
    a, b = 0.4, 1.5
    eps = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    fm = RectifiedFlow(shift=shift)
    out = samplers.SAMPLERS[sampler](linear_flow_oracle(a, b), fm, eps, steps)
    torch.testing.assert_close(out, a * eps + b, atol=2e-6, rtol=0)


def test_heun_model_calls_and_callback():
    calls, seen = [], []

    def model(x, t, cond):
        calls.append(float(t[0]))
        return torch.zeros_like(x)

    samplers.heun(model, RectifiedFlow(), torch.zeros(1, 1, 2, 2), 5,
                  callback=lambda d: seen.append((d["i"], d["t"])))  # fmt: skip
    assert len(calls) == 2 * 5 - 1 and len(seen) == 5
    assert calls[0] == pytest.approx(1000.0) and seen[-1][0] == 4


def cond_model(x, t, cond):
    """A conditional stand-in: token k shifts the output by 0.1 k; token 9 is the null token."""
    return torch.tanh(x) + 0.1 * cond.to(x).reshape(-1, *([1] * (x.ndim - 1)))


@pytest.mark.parametrize("batched", [True, False])
def test_cfg_limits_and_formula(batched):
    x = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([5, 5, 5])
    cond = torch.tensor([1, 2, 3])
    null = torch.full_like(cond, 9)
    c, u = cond_model(x, t, cond), cond_model(x, t, null)
    for w, expected in [(1.0, c), (0.0, u), (3.0, u + 3.0 * (c - u))]:
        out = ClassifierFreeGuidance(cond_model, w, null_token=9, batched=batched)(x, t, cond)
        torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_cfg_uses_the_null_token_index_and_sampler_kwarg():
    seen = []

    def model(x, t, cond):
        seen.append(cond.clone())
        return cond_model(x, t, cond)

    with pytest.raises(ValueError, match="null_token"):
        ClassifierFreeGuidance(model, 2.0, null_token=-1)
    strategy = DDPM(schedules.cosine(1000), "v")
    x_T = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    cond = torch.tensor([1, 4])
    out = samplers.ddim(model, strategy, x_T, 3, cond=cond, guidance=2.5, null_token=7)
    assert torch.equal(seen[0], torch.tensor([1, 4, 7, 7]))  # one doubled batch, index 7
    ref = samplers.ddim(ClassifierFreeGuidance(cond_model, 2.5, 7), strategy, x_T, 3, cond=cond)
    assert torch.equal(out, ref)
    with pytest.raises(ValueError, match="null_token"):
        samplers.euler(model, RectifiedFlow(), x_T, 3, cond=cond, guidance=2.0)


def test_early_stop_triggers_on_a_converging_toy_and_reports_its_step():
    """DDIM with the exact Gaussian denoiser converges: past their peak, relative updates
    shrink towards t = 0. The stop step must be the first whose update (from an uninterrupted
    run) is below the threshold and smaller than the one before, and the returned sample that
    step's x0 prediction."""
    strategy = DDPM(schedules.cosine(1000), "v")
    model = gaussian_oracle(strategy)
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    states, x0s = [x_T], []

    def record(d):
        states.append(d["x"])
        x0s.append(d["x0"])

    full = samplers.ddim(model, strategy, x_T, 50, callback=record)
    ratios = [
        float(((b - a).flatten(1).norm(dim=1) / a.flatten(1).norm(dim=1)).max())
        for a, b in itertools.pairwise(states)
    ]
    threshold = 0.015
    assert ratios[0] < threshold  # small first updates from pure noise must not stop it
    expected = next(i for i in range(1, 49) if ratios[i] < threshold and ratios[i] < ratios[i - 1])
    assert 30 < expected < 49
    stop = EarlyStop(threshold=threshold)
    out = samplers.ddim(model, strategy, x_T, 50, early_stop=stop)
    assert stop.stopped_at == expected
    assert stop.stopped_t == float(inference_timesteps(1000, 50)[expected])
    torch.testing.assert_close(out, x0s[expected])
    # not triggered: threshold below every update; min_steps respected
    never = EarlyStop(threshold=1e-12)
    torch.testing.assert_close(samplers.ddim(model, strategy, x_T, 50, early_stop=never), full)
    assert never.stopped_at is None and len(never.ratios) == 49
    late = EarlyStop(threshold=threshold, min_steps=expected + 5)
    samplers.ddim(model, strategy, x_T, 50, early_stop=late)
    assert late.stopped_at == expected + 4
    assert stop.ratios == pytest.approx(ratios[: expected + 1], rel=1e-5)


def test_early_stop_flow_returns_x0_prediction():
    a, b = 0.4, 1.5
    eps = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    stop = EarlyStop(threshold=0.05)  # shift < 1: steps shrink towards t = 0
    fm = RectifiedFlow(shift=1 / 3)
    out = samplers.euler(linear_flow_oracle(a, b), fm, eps, 40, early_stop=stop)
    assert stop.stopped_at is not None and stop.stopped_at < 39
    torch.testing.assert_close(out, a * eps + b, atol=2e-6, rtol=0)  # x0 jump is exact here


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_whole_1000_step_cosine_stays_finite(dtype):
    strategy = DDPM(schedules.cosine(1000), "epsilon")
    model = gaussian_oracle(DDPM(schedules.cosine(1000), "epsilon"))
    x_T = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(0)).to(dtype)
    for name in ("ddim", "ddpm"):
        out = samplers.SAMPLERS[name](model, strategy, x_T, 1000,
                                      generator=torch.Generator().manual_seed(0))  # fmt: skip
        assert out.dtype == dtype and bool(torch.isfinite(out).all()), name
    out = samplers.euler(linear_flow_oracle(0.4, 1.5), RectifiedFlow(), x_T, 1000)
    assert out.dtype == dtype and bool(torch.isfinite(out).all())


def test_cfg_rejects_non_tensor_cond_with_a_clear_error():
    """A Conditioning record cannot be guided (README limits): say so instead of full_like's
    opaque TypeError."""
    from medgen.models import Conditioning

    cfg = ClassifierFreeGuidance(cond_model, 2.0, null_token=9)
    x, t = torch.zeros(2, 1, 4, 4), torch.tensor([1, 1])
    with pytest.raises(TypeError, match="token tensor with the null token; got cond of type"):
        cfg(x, t, Conditioning(token=torch.tensor([1, 2])))
