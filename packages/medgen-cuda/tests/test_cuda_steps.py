"""DDPM ancestral step against diffusers' DDPMScheduler.step; rectified-flow Euler step."""

from __future__ import annotations

import copy
import functools
import importlib
from unittest import mock

import pytest
import torch

import medgen.cuda as mc
from medgen.cuda import reference

T = 1000
IMPLS = {
    "public": (mc.ddpm_step, mc.euler_step),
    "reference": (reference.ddpm_step, reference.euler_step),
}
DIFFUSERS_PRED = {"epsilon": "epsilon", "v": "v_prediction", "sample": "sample"}


def _normwise(actual, expected, tol=1e-6, scale=1.0):
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    scale = max(scale, expected.abs().max().item())
    err = (actual.double() - expected.double()).abs().max().item()
    assert err <= tol * scale, f"max abs diff {err:.3g} > {tol:g} * {scale:.3g}"


def _fixed(noise, *args, dtype=None, **kwargs):
    return noise.to(dtype)


PEER_F32_TOL = {1000: 1.5e-4, 50: 1e-5}


def _in_float64(sched):
    """The same scheduler evaluating its own formulas in float64 (same alpha_bar values)."""
    sched = copy.deepcopy(sched)
    sched.alphas_cumprod = sched.alphas_cumprod.double()
    sched.one = torch.tensor(1.0, dtype=torch.float64)
    return sched


@pytest.mark.parametrize("impl", sorted(IMPLS))
@pytest.mark.parametrize("prediction", ["epsilon", "v", "sample"])
@pytest.mark.parametrize("n_infer", [1000, 50])  # consecutive and skipped steps
def test_cuda_ddpm_matches_diffusers(impl, prediction, n_infer):
    """Against diffusers' DDPMScheduler.step: its formulas in float64 to 1e-6 (normwise), and
    its float32 output to 1e-5 for 50 steps and 1.5e-4 for 1000 consecutive steps: diffusers
    forms beta_t = 1 - a_t / a_prev in float32, which for consecutive steps near t = 0
    (a ~ 0.9999, beta ~ 1e-4) keeps only ~3 significant digits (measured: 7e-5 normwise off its
    own float64 result); medgen forms it in float64 from the same float32 alpha_bar values."""
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDPMScheduler(
        num_train_timesteps=T,
        beta_schedule="linear",
        prediction_type=DIFFUSERS_PRED[prediction],
        clip_sample=False,
        variance_type="fixed_small",
    )
    sched.set_timesteps(n_infer)
    s64 = _in_float64(sched)
    ddpm_module = importlib.import_module(type(sched).__module__)
    stride = T // n_infer
    for i, t in enumerate([999 - (999 % stride), 500, 3 * stride, stride]):
        g = torch.Generator().manual_seed(i)
        x, m = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(42))
        # diffusers draws its noise with randn_tensor(...): hand it exactly `noise`.
        with mock.patch.object(ddpm_module, "randn_tensor", functools.partial(_fixed, noise)):
            out = sched.step(m, t, x)
            out64 = s64.step(m.double(), t, x.double())
        prev = t - stride
        a_t = sched.alphas_cumprod[t]
        a_p = sched.alphas_cumprod[prev] if prev >= 0 else torch.tensor(1.0)
        x_prev, x0 = IMPLS[impl][0](x, m, a_t, a_p, prediction=prediction, noise=noise)
        scale = (x.abs().max() / a_t.sqrt()).item()
        _normwise(x0, out64.pred_original_sample.float(), scale=scale)
        _normwise(x_prev, out64.prev_sample.float(), scale=scale)
        _normwise(x0, out.pred_original_sample, scale=scale)
        _normwise(x_prev, out.prev_sample, tol=PEER_F32_TOL[n_infer], scale=scale)


@pytest.mark.parametrize("impl", sorted(IMPLS))
def test_cuda_ddpm_clip_and_final_step(impl):
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDPMScheduler(num_train_timesteps=T, clip_sample=True, clip_sample_range=1.0)
    sched.set_timesteps(T)
    g = torch.Generator().manual_seed(3)
    x, m = torch.randn(2, 3, 8, 8, generator=g) * 3, torch.randn(2, 3, 8, 8, generator=g)
    out = sched.step(m, 400, x, generator=torch.Generator().manual_seed(1))
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    a_t, a_p = sched.alphas_cumprod[400], sched.alphas_cumprod[399]
    x_prev, x0 = IMPLS[impl][0](x, m, a_t, a_p, noise=noise, clip_x0=1.0)
    assert x0.abs().max() <= 1.0
    _normwise(x0, out.pred_original_sample, scale=(x.abs().max() / a_t.sqrt()).item())
    _normwise(x_prev, out.prev_sample, scale=(x.abs().max() / a_t.sqrt()).item())
    # last step (t = 0 -> alpha_bar_prev = 1): no noise is added, x_prev is the posterior mean = x0
    x_prev, x0 = IMPLS[impl][0](x, m, sched.alphas_cumprod[0], 1.0, noise=noise)
    torch.testing.assert_close(x_prev, x0)


@pytest.mark.parametrize("impl", sorted(IMPLS))
def test_cuda_ddpm_per_sample_alpha(impl):
    ddpm = IMPLS[impl][0]
    g = torch.Generator().manual_seed(4)
    x, m, n = (torch.randn(3, 2, 4, 4, generator=g) for _ in range(3))
    a_t, a_p = torch.tensor([0.2, 0.6, 0.95]), torch.tensor([0.25, 0.7, 0.99])
    xp, x0 = ddpm(x, m, a_t, a_p, prediction="v", noise=n)
    for b in range(3):
        s = slice(b, b + 1)
        xpb, x0b = ddpm(x[s], m[s], float(a_t[b]), float(a_p[b]), prediction="v", noise=n[s])
        torch.testing.assert_close(xp[s], xpb)
        torch.testing.assert_close(x0[s], x0b)


@pytest.mark.parametrize("impl", sorted(IMPLS))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_cuda_euler_step(impl, dtype):
    euler = IMPLS[impl][1]
    g = torch.Generator().manual_seed(5)
    x, v = torch.randn(4, 3, 5, 6, generator=g), torch.randn(4, 3, 5, 6, generator=g)
    x, v = x.to(dtype), v.to(dtype)
    out = euler(x, v, 0.8, 0.6)
    assert out.dtype == dtype
    expected = x.double() + (0.6 - 0.8) * v.double()
    tol = {torch.float16: 1e-3, torch.bfloat16: 8e-3, torch.float32: 1e-6, torch.float64: 1e-12}
    torch.testing.assert_close(out.double(), expected, rtol=tol[dtype], atol=tol[dtype])
    t = torch.tensor([1.0, 0.75, 0.5, 0.25])
    out = euler(x, v, t, t - 0.25)
    for b in range(4):
        torch.testing.assert_close(
            out[b : b + 1], euler(x[b : b + 1], v[b : b + 1], t[b], t[b] - 0.25)
        )


def test_cuda_euler_matches_diffusers_flow_match():
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=T, shift=1.0)
    sched.set_timesteps(10)
    g = torch.Generator().manual_seed(6)
    x, v = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    t = sched.timesteps[3]
    ref = sched.step(v, t, x).prev_sample
    sigma, sigma_next = sched.sigmas[3], sched.sigmas[4]
    torch.testing.assert_close(mc.euler_step(x, v, sigma, sigma_next), ref, rtol=1e-6, atol=1e-6)
