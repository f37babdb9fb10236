"""DDIM step against diffusers' and MONAI's DDIMScheduler.step (independent references)."""

from __future__ import annotations

import copy
from unittest import mock

import pytest
import torch

import medgen.cuda as mc
from medgen.cuda import reference

T = 1000
N_INFER = 50
STEP = T // N_INFER
TIMESTEPS = [980, 700, 420, 100, 20, 0]  # several t incl. the final step (prev = set_alpha_to_one)
IMPLS = {"public": mc.ddim_step, "reference": reference.ddim_step}
DIFFUSERS_PRED = {"epsilon": "epsilon", "v": "v_prediction", "sample": "sample"}


def _inputs(seed: int, shape=(2, 4, 8, 8)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


def _assert_close_f32(actual, expected, tol=1e-6, scale=1.0):
    """Normwise "to 1e-6 in float32": max|a - e| <= 1e-6 * max(1, max|e|).

    Elementwise relative checks are meaningless where x0 is a cancellation of two terms of size
    1/sqrt(alpha_bar) (t near T): both implementations then carry float32 rounding of the terms,
    not of the result. Measured here: the differences are <= 2e-7 normwise, and medgen is the
    closer of the two to the float64 result.
    """
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    scale = max(scale, expected.abs().max().item())
    err = (actual.double() - expected.double()).abs().max().item()
    assert err <= tol * scale, f"max abs diff {err:.3g} > {tol:g} * {scale:.3g}"


def _diffusers(prediction, schedule="linear", clip=None):
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDIMScheduler(
        num_train_timesteps=T,
        beta_schedule=schedule,
        prediction_type=DIFFUSERS_PRED[prediction],
        clip_sample=clip is not None,
        clip_sample_range=1.0 if clip is None else clip,
        set_alpha_to_one=True,
    )
    sched.set_timesteps(N_INFER)
    return sched


def _alphas(sched, t):
    prev = t - STEP
    a_t = sched.alphas_cumprod[t]
    a_p = sched.alphas_cumprod[prev] if prev >= 0 else sched.final_alpha_cumprod
    return a_t, a_p


def _in_float64(sched):
    """The same scheduler evaluating its own formulas in float64 (same alpha_bar values)."""
    sched = copy.deepcopy(sched)
    sched.alphas_cumprod = sched.alphas_cumprod.double()
    sched.final_alpha_cumprod = torch.as_tensor(sched.final_alpha_cumprod).double()
    return sched


# The peers evaluate 1 - a_prev - sigma^2 in float32; at eta = 1 that is a cancellation
# (sigma^2 -> 1 - a_prev), which MONAI multiplies by an eps of size 1/sqrt(1 - a_t) for "sample"
# prediction: its own float32 error reaches 1.7e-5 at t = 20 (medgen's stays 2.3e-7, measured
# against the float64 evaluation). So against the peers' float32 output the tolerance at eta = 1 is
# 2e-5; against the peers' formulas evaluated in float64 it is 1e-6 everywhere.
PEER_F32_TOL = {0.0: 1e-6, 0.5: 1e-6, 1.0: 2e-5}


def _check_against_peer(fn, step32, step64, sched, prediction, eta, seed):
    for i, t in enumerate(TIMESTEPS):
        x, m = _inputs(seed + 10 * i)
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(99 + i))
        ref32 = step32(m, t, x, noise)
        ref64 = step64(m.double(), t, x.double(), noise.double())
        a_t, a_p = _alphas(sched, t)
        x_prev, x0 = fn(
            x, m, a_t, a_p, prediction=prediction, eta=eta, noise=noise if eta > 0 else None
        )
        _assert_close_f32(x0, ref64[1].float())
        _assert_close_f32(x_prev, ref64[0].float())
        _assert_close_f32(x0, ref32[1], tol=PEER_F32_TOL[eta])
        _assert_close_f32(x_prev, ref32[0], tol=PEER_F32_TOL[eta])


@pytest.mark.parametrize("impl", sorted(IMPLS))
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("prediction", ["epsilon", "v", "sample"])
@pytest.mark.parametrize("schedule", ["linear", "squaredcos_cap_v2"])
def test_cuda_ddim_matches_diffusers(impl, eta, prediction, schedule):
    sched = _diffusers(prediction, schedule)
    s64 = _in_float64(sched)

    def step(s):
        def run(m, t, x, noise):
            out = s.step(m, t, x, eta=eta, variance_noise=noise if eta > 0 else None)
            return out.prev_sample, out.pred_original_sample

        return run

    _check_against_peer(IMPLS[impl], step(sched), step(s64), sched, prediction, eta, seed=0)


@pytest.mark.parametrize("impl", sorted(IMPLS))
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("prediction", ["epsilon", "v", "sample"])
def test_cuda_ddim_matches_monai(impl, eta, prediction):
    schedulers = pytest.importorskip("monai.networks.schedulers")
    sched = schedulers.DDIMScheduler(
        num_train_timesteps=T,
        schedule="scaled_linear_beta",
        clip_sample=False,
        prediction_type=DIFFUSERS_PRED[prediction],
    )
    sched.set_timesteps(N_INFER)
    s64 = _in_float64(sched)

    def step(s):
        def run(m, t, x, noise):
            # MONAI draws its noise itself with torch.randn(shape, dtype=..., generator=...):
            # hand it exactly `noise` so both sides use the same numbers.
            def fake_randn(shape, *args, dtype=None, **kwargs):
                assert tuple(shape) == tuple(noise.shape)
                return noise.to(dtype or noise.dtype)

            with mock.patch.object(torch, "randn", fake_randn):
                return s.step(m, t, x, eta=eta)

        return run

    _check_against_peer(IMPLS[impl], step(sched), step(s64), sched, prediction, eta, seed=7)


@pytest.mark.parametrize("impl", sorted(IMPLS))
@pytest.mark.parametrize("prediction", ["epsilon", "v", "sample"])
def test_cuda_ddim_clip_matches_diffusers_clipped_model_output(impl, prediction):
    """clip_x0=c == diffusers clip_sample=True, clip_sample_range=c, use_clipped_model_output.

    A clamped x0 hides the size of the float32 terms it came from ((|x| + |m|) / sqrt(a_t) for
    epsilon prediction), so the normwise scale here is that term size, not max|x0| = c.
    """
    sched = _diffusers(prediction, clip=0.8)
    s64 = _in_float64(sched)
    for i, t in enumerate([900, 500, 40]):
        x, m = _inputs(3 + i)
        m = m * 3  # make x0 exceed the range often
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
        kw = dict(eta=0.5, use_clipped_model_output=True)
        out = sched.step(m, t, x, variance_noise=noise, **kw)
        out64 = s64.step(m.double(), t, x.double(), variance_noise=noise.double(), **kw)
        a_t, a_p = _alphas(sched, t)
        x_prev, x0 = IMPLS[impl](
            x, m, a_t, a_p, prediction=prediction, eta=0.5, noise=noise, clip_x0=0.8
        )
        assert x0.abs().max() <= 0.8
        assert (x0.abs() == 0.8).float().mean() > 0.2  # the clamp is exercised
        terms = ((x.abs().max() + m.abs().max()) / a_t.sqrt()).item()
        for ours, ref in ((x0, out.pred_original_sample), (x_prev, out.prev_sample)):
            _assert_close_f32(ours, ref, scale=terms)
        _assert_close_f32(x0, out64.pred_original_sample.float(), scale=terms)
        _assert_close_f32(x_prev, out64.prev_sample.float(), scale=terms)


def test_cuda_ddim_no_clip_by_default():
    """Latents are unbounded: x0 beyond [-1, 1] must come back unclamped when clip_x0 is None."""
    x = torch.full((1, 4, 4, 4), 3.0)
    m = torch.zeros_like(x)
    _, x0 = mc.ddim_step(x, m, 0.25, 0.5)
    torch.testing.assert_close(x0, torch.full_like(x, 6.0))  # x / sqrt(0.25)


@pytest.mark.parametrize("impl", sorted(IMPLS))
@pytest.mark.parametrize("prediction", ["epsilon", "v", "sample"])
def test_cuda_ddim_per_sample_alpha_equals_per_sample_calls(impl, prediction):
    fn = IMPLS[impl]
    x, m = _inputs(0, shape=(3, 2, 4, 6))
    noise = torch.randn_like(x)
    a_t = torch.tensor([0.1, 0.5, 0.97])
    a_p = torch.tensor([0.3, 0.6, 1.0])
    xp, x0 = fn(x, m, a_t, a_p, prediction=prediction, eta=0.3, noise=noise, clip_x0=2.0)
    for b in range(3):
        xpb, x0b = fn(
            x[b : b + 1],
            m[b : b + 1],
            float(a_t[b]),
            float(a_p[b]),
            prediction=prediction,
            eta=0.3,
            noise=noise[b : b + 1],
            clip_x0=2.0,
        )
        torch.testing.assert_close(xp[b : b + 1], xpb, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(x0[b : b + 1], x0b, rtol=1e-6, atol=1e-6)
    # a 0-d tensor and a length-1 vector broadcast like a float
    a = fn(x, m, torch.tensor(0.4), torch.tensor([0.6]), prediction=prediction)
    b = fn(x, m, 0.4, 0.6, prediction=prediction)
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_cuda_ddim_returns_input_dtype_and_tuple(dtype):
    x, m = _inputs(1)
    out = mc.ddim_step(x.to(dtype), m.to(dtype), 0.3, 0.4)
    assert type(out) is tuple and len(out) == 2
    assert all(o.dtype == dtype and o.shape == x.shape for o in out)
    # computed in float32 (float64 for float64): equals the float64 formula rounded once
    exp_prev, exp_x0 = reference.ddim_step(x.to(dtype).double(), m.to(dtype).double(), 0.3, 0.4)
    tol = {torch.float16: 1e-3, torch.bfloat16: 8e-3, torch.float32: 1e-6, torch.float64: 1e-12}
    torch.testing.assert_close(out[0].double(), exp_prev, rtol=tol[dtype], atol=tol[dtype])
    torch.testing.assert_close(out[1].double(), exp_x0, rtol=tol[dtype], atol=tol[dtype])


def test_cuda_ddim_argument_errors():
    x, m = _inputs(2)
    with pytest.raises(ValueError, match="noise"):
        mc.ddim_step(x, m, 0.3, 0.4, eta=0.5)
    with pytest.raises(ValueError, match="prediction"):
        mc.ddim_step(x, m, 0.3, 0.4, prediction="x0")
    with pytest.raises(ValueError, match="length"):
        mc.ddim_step(x, m, torch.rand(3), 0.4)
    with pytest.raises(ValueError, match="shape"):
        mc.ddim_step(x, m[:1], 0.3, 0.4)
    with pytest.raises(ValueError, match="eta"):
        mc.ddim_step(x, m, 0.3, 0.4, eta=-1.0)
    with pytest.raises(ValueError, match="clip_x0"):
        mc.ddim_step(x, m, 0.3, 0.4, clip_x0=0.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        mc.ddim_step(x, m, 1.5, 0.4)


def test_cuda_ddim_autograd_uses_differentiable_path():
    x, m = _inputs(4)
    m.requires_grad_(True)
    x_prev, _ = mc.ddim_step(x, m, 0.3, 0.5)
    x_prev.sum().backward()
    # d x_prev / d eps = sqrt(1 - a_prev) - sqrt(a_prev (1 - a_t) / a_t)
    expected = (1 - 0.5) ** 0.5 - (0.5 * 0.7 / 0.3) ** 0.5
    torch.testing.assert_close(m.grad, torch.full_like(m, expected))
