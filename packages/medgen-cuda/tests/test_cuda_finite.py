"""Finiteness of the sampler steps at every timestep of the standard schedules in fp16/bf16.

Recorded peer result (diffusers 0.42.1 and MONAI 1.6.1, measured here): both DDIMScheduler.step
implementations return inf in x0 (and inf/NaN in x_prev) for float16 inputs with epsilon
prediction on the cosine schedule ("squaredcos_cap_v2" / "cosine") at t = 999, where
alpha_bar = 2.4e-9: they evaluate (x - sqrt(1 - a) eps) / sqrt(a) in the sample's dtype and
|x0| ~ 12 / 4.9e-5 = 2.4e5 > 65504. bfloat16 does not overflow there. medgen passes the whole sweep
(coefficients in float64, x_prev not formed through x0, saturating float16 stores); see
test_cuda_finite_peer_overflows for the peer side, which asserts the failure so that the claim in
the README is re-checked whenever the peers change.
"""

from __future__ import annotations

import math

import pytest
import torch

import medgen.cuda as mc
from medgen.cuda import reference

T = 1000


def _schedule(name: str) -> torch.Tensor:
    """alpha_bar in float32, built as diffusers/MONAI build them (independent of medgen)."""
    if name == "linear":
        betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float32)
    elif name == "scaled_linear":
        betas = torch.linspace(0.00085**0.5, 0.012**0.5, T, dtype=torch.float32) ** 2
    else:  # cosine ("squaredcos_cap_v2"), betas capped at 0.999

        def f(t):
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = torch.tensor(
            [min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)], dtype=torch.float32
        )
    return torch.cumprod(1.0 - betas, dim=0)


def _sweep_inputs(dtype, prev_stride):
    """One batch row per timestep t (per-sample alpha_bar), values in [-6, 6] incl. extremes."""
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(T, 2, 4, 4, generator=g) * 2).clamp(-6, 6)
    x[:, 0, 0, 0] = 6.0
    m = torch.randn(T, 2, 4, 4, generator=g).clamp(-6, 6)
    m[:, 0, 0, 0] = -6.0  # x and eps of opposite sign: the largest |x0|
    m[:, 1] = -6.0 * torch.sign(x[:, 1])
    noise = torch.randn(T, 2, 4, 4, generator=g).clamp(-6, 6)
    return x.to(dtype), m.to(dtype), noise.to(dtype)


def _alphas(name, prev_stride):
    ab = _schedule(name)
    t = torch.arange(T)
    prev = t - prev_stride
    a_prev = torch.where(prev >= 0, ab[prev.clamp(min=0)], torch.ones(()))
    return ab, a_prev


@pytest.mark.parametrize("impl", ["public", "reference"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "cosine"])
@pytest.mark.parametrize("prev_stride", [1, 20, 1000])  # 1000-step, 50-step, one-shot to x0
def test_cuda_finite_sweep_every_timestep(impl, dtype, schedule, prev_stride):
    ddim = mc.ddim_step if impl == "public" else reference.ddim_step
    ddpm = mc.ddpm_step if impl == "public" else reference.ddpm_step
    x, m, noise = _sweep_inputs(dtype, prev_stride)
    a_t, a_prev = _alphas(schedule, prev_stride)
    for prediction in ("epsilon", "v", "sample"):
        for eta in (0.0, 1.0):
            x_prev, x0 = ddim(
                x, m, a_t, a_prev, prediction=prediction, eta=eta, noise=noise if eta else None
            )
            assert x_prev.dtype == dtype and x0.dtype == dtype
            bad = (~torch.isfinite(x_prev)).flatten(1).any(1) | (~torch.isfinite(x0)).flatten(
                1
            ).any(1)
            assert not bad.any(), (
                f"DDIM {prediction} eta={eta}: non-finite at t={bad.nonzero()[:5]}"
            )
            # finite AND right: equal to the float64 evaluation wherever that is representable
            e_prev, e_x0 = reference.ddim_step(
                x.double(), m.double(), a_t.double(), a_prev.double(), prediction=prediction,
                eta=eta, noise=noise.double() if eta else None,
            )  # fmt: skip
            lim = torch.finfo(dtype).max
            rtol = 2e-3 if dtype == torch.float16 else 1.6e-2
            for ours, exact in ((x_prev, e_prev), (x0, e_x0)):
                torch.testing.assert_close(
                    ours.double(), exact.clamp(-lim, lim), rtol=rtol, atol=rtol * 1e-2
                )
        x_prev, x0 = ddpm(x, m, a_t, a_prev, prediction=prediction, noise=noise)
        assert torch.isfinite(x_prev).all() and torch.isfinite(x0).all(), f"DDPM {prediction}"


def test_cuda_finite_fp16_x0_saturates_not_clips():
    """Cosine t = 999: |x0| ~ 2.4e5 saturates to +-65504 in float16; it is not clipped to 1."""
    a_t = float(_schedule("cosine")[-1])
    x = torch.tensor([[6.0, 0.5]], dtype=torch.float16)
    m = torch.tensor([[-6.0, 0.25]], dtype=torch.float16)
    x_prev, x0 = mc.ddim_step(x, m, a_t, float(_schedule("cosine")[-2]))
    assert x0[0, 0] == 65504.0
    expected = (0.5 - (1 - a_t) ** 0.5 * 0.25) / a_t**0.5  # ~5100: representable, kept
    assert x0[0, 1].item() == pytest.approx(expected, rel=1e-3)
    assert torch.isfinite(x_prev).all()


@pytest.mark.parametrize("peer", ["diffusers", "monai"])
def test_cuda_finite_peer_overflows(peer):
    """The documented peer failure: fp16, epsilon, cosine schedule, t = 999 -> non-finite."""
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(1, 4, 8, 8, generator=g) * 2).clamp(-6, 6)
    m = -6.0 * torch.sign(x)
    x, m = x.half(), m.half()
    if peer == "diffusers":
        diffusers = pytest.importorskip("diffusers")
        sched = diffusers.DDIMScheduler(
            num_train_timesteps=T, beta_schedule="squaredcos_cap_v2", clip_sample=False
        )
        sched.set_timesteps(T)
        out = sched.step(m, 999, x)
        prev, x0 = out.prev_sample, out.pred_original_sample
    else:
        schedulers = pytest.importorskip("monai.networks.schedulers")
        sched = schedulers.DDIMScheduler(
            num_train_timesteps=T, schedule="cosine", clip_sample=False
        )
        sched.set_timesteps(T)
        prev, x0 = sched.step(m, 999, x)
    ours_prev, ours_x0 = mc.ddim_step(x, m, sched.alphas_cumprod[999], sched.alphas_cumprod[998])
    assert torch.isfinite(ours_prev).all() and torch.isfinite(ours_x0).all()
    assert not (torch.isfinite(prev).all() and torch.isfinite(x0).all()), (
        f"{peer} no longer overflows here: update the README / module docstring claim"
    )
