import math

import pytest
import torch

from medgen.models import DDPM, min_snr_weight, schedules

diffusers = pytest.importorskip("diffusers")


def psnr(a, b):
    return 10 * torch.log10(4.0 / ((a - b) ** 2).mean()).item()


@pytest.mark.parametrize("prediction", ["epsilon", "v", "sample"])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_x0_recovery_every_timestep(prediction, schedule):
    """Regression for the JS-DDPM bug (seed 001): with the true target, the x0 prediction must
    recover x0 at every timestep, to what float32 allows. The bound: x_t is rounded to float32
    (rms error 2^-23 / sqrt(12) ~ 3.4e-8 for |x_t| ~ 1) and, for epsilon, amplified by
    1 / sqrt(alpha_bar[T-1]) (cosine: 2.0e4, so 69 dB; linear: 158, so 111 dB); v and sample
    do not amplify it (155 dB). Asserted 3 dB (epsilon) / 10 dB (v: two rounded terms) below
    (measured: 71.8, 111.9, 149.8 dB); a coefficient off by bf16 rounding (4e-3) gives ~59 dB,
    which the old 40 dB floor let pass."""
    strategy = DDPM(schedules.make(schedule, 1000), prediction)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand((1000, 2, 8, 8), generator=g) * 2 - 1
    noise = torch.randn(x0.shape, generator=g)
    t = torch.arange(1000)
    x_t = strategy.add_noise(x0, noise, t)
    target = strategy.training_target(x0, noise, t)
    x0_hat, eps_hat = strategy.predict_x0_eps(x_t, target, t)
    worst = min(psnr(x0_hat[i], x0[i]) for i in range(1000))
    assert worst > float32_recovery_floor(strategy), worst
    if prediction != "sample":  # eps from x0 divides by sqrt(1 - a_0), ill-posed at t=0
        torch.testing.assert_close(eps_hat, noise, atol=1e-3, rtol=1e-3)


def test_add_noise_and_velocity_match_diffusers():
    ref = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    ours = DDPM(schedules.cosine(1000), "v")
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn((6, 2, 4, 4), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    t = torch.tensor([0, 1, 250, 500, 998, 999])
    torch.testing.assert_close(ours.add_noise(x0, noise, t), ref.add_noise(x0, noise, t))
    torch.testing.assert_close(ours.training_target(x0, noise, t), ref.get_velocity(x0, noise, t))


def test_add_noise_at_t0_is_almost_x0():
    s = DDPM(schedules.cosine(1000))
    x0 = torch.randn(4, 1, 8, 8)
    x_t = s.add_noise(x0, torch.randn_like(x0), torch.zeros(4, dtype=torch.long))
    assert (x_t - x0).abs().max() < 0.05


def test_tables_stay_float64_with_bf16_inputs():
    s = DDPM(schedules.cosine(1000))
    before = s.alphas_cumprod.clone()
    x0 = torch.randn(2, 1, 4, 4).bfloat16()
    out = s.add_noise(x0, torch.randn_like(x0), torch.tensor([3, 999]))
    assert out.dtype == torch.bfloat16
    assert s.alphas_cumprod.dtype == torch.float64
    torch.testing.assert_close(s.alphas_cumprod, before, rtol=0, atol=0)


def test_timestep_bounds():
    s = DDPM(schedules.cosine(100))
    with pytest.raises(ValueError, match="timesteps"):
        s.add_noise(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), torch.tensor([100]))


def test_min_snr_closed_forms():
    snr = torch.tensor([0.1, 1.0, 5.0, 50.0])
    torch.testing.assert_close(min_snr_weight(snr, "epsilon"), torch.tensor([1.0, 1.0, 1.0, 0.1]))
    torch.testing.assert_close(min_snr_weight(snr, "sample"), torch.tensor([0.1, 1.0, 5.0, 5.0]))
    torch.testing.assert_close(
        min_snr_weight(snr, "v"), torch.tensor([0.1 / 1.1, 0.5, 5 / 6, 5 / 51])
    )


def test_add_noise_at_t0_is_the_closed_form():
    """DDPM's t = 0 is the first noised step: x_0 = sqrt(1 - beta_0) x0 + sqrt(beta_0) eps,
    exactly (float64), so it is x0 up to sqrt(beta_0) = 1e-2 for the linear schedule."""
    s = DDPM(schedules.linear(1000))
    x0 = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    eps = torch.randn_like(x0)
    x_t = s.add_noise(x0, eps, torch.zeros(4, dtype=torch.long))
    torch.testing.assert_close(x_t, (1 - 1e-4) ** 0.5 * x0 + 1e-2 * eps, rtol=0, atol=1e-13)


def test_monai_add_noise_recasts_its_table():
    """Documented MONAI difference: ``Scheduler.add_noise`` permanently recasts its stored
    ``alphas_cumprod`` to the input dtype (bf16 here), so later float32 calls see a bf16 table.
    Ours stays float64 (test above) and a float32 call after a bf16 call is unaffected."""
    monai_sched = pytest.importorskip("monai.networks.schedulers")
    m = monai_sched.DDPMScheduler(1000, schedule="cosine")
    x = torch.randn(2, 1, 4, 4)
    m.add_noise(x.bfloat16(), x.bfloat16(), torch.tensor([10, 900]))
    assert m.alphas_cumprod.dtype == torch.bfloat16
    ours = DDPM(schedules.cosine(1000))
    t = torch.tensor([10, 900])
    before = ours.add_noise(x, x, t)
    ours.add_noise(x.bfloat16(), x.bfloat16(), t)
    assert torch.equal(ours.add_noise(x, x, t), before)


@pytest.mark.parametrize("prediction", ["v", "sample"])
def test_x0_recovery_with_zero_terminal_snr(prediction):
    """Zero terminal SNR (Lin et al. 2024) with v or x0 prediction: x0 at every t incl. T-1."""
    strategy = DDPM(schedules.make("cosine", 1000, zero_terminal_snr=True), prediction)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand((1000, 1, 8, 8), generator=g) * 2 - 1
    noise = torch.randn(x0.shape, generator=g)
    t = torch.arange(1000)
    x_t = strategy.add_noise(x0, noise, t)
    torch.testing.assert_close(x_t[-1], noise[-1])  # pure noise at T-1
    x0_hat = strategy.predict_x0(x_t, strategy.training_target(x0, noise, t), t)
    worst = min(psnr(x0_hat[i], x0[i]) for i in range(1000))
    assert worst > float32_recovery_floor(strategy), worst  # no amplification: ~145 dB


def float32_recovery_floor(strategy):
    """The float32 x0-recovery PSNR of the docstring above, less the margin."""
    amplification = 1.0
    if strategy.prediction == "epsilon":
        amplification = 1 / math.sqrt(float(strategy.alphas_cumprod[-1]))
    rms = 2.0**-23 / math.sqrt(12) * amplification
    return 10 * math.log10(4 / rms**2) - (3 if strategy.prediction == "epsilon" else 10)


def test_per_sample_coefficients_are_float64_values_rounded_once():
    """sqrt(a), sqrt(1 - a) and the SNR at every t, against the float64 table: each is the
    float64 value rounded once to float32 (relative error <= 2^-24 ~ 6e-8, asserted 1.2e-7).
    Computing 1 - a in float32 instead loses ~4 digits near t = 0 (a = 0.99996 for cosine:
    relative error up to ~1e-3, the diffusers weakness)."""
    for name in ("cosine", "linear"):
        strategy = DDPM(schedules.make(name, 1000), "epsilon")
        a = strategy.alphas_cumprod.double()
        t = torch.arange(1000)
        like = torch.zeros((1000, 1, 2, 2))
        sa, s1a, snr = strategy.coefficients(t, like)
        assert sa.dtype == s1a.dtype == snr.dtype == torch.float32
        for got, exact in ((sa, a.sqrt()), (s1a, (1 - a).sqrt()), (snr, a / (1 - a))):
            rel = ((got.reshape(-1).double() - exact) / exact).abs()
            assert float(rel.max()) <= 1.2e-7, (name, float(rel.max()), int(rel.argmax()))
        torch.testing.assert_close(strategy.snr(t, like), snr, rtol=0, atol=0)
        # and what the training step uses: x_t = sqrt(1 - a) * noise at x0 = 0
        noise = torch.ones((1000, 1, 2, 2))
        x_t = strategy.add_noise(torch.zeros_like(noise), noise, t)[:, 0, 0, 0].double()
        rel = ((x_t - (1 - a).sqrt()) / (1 - a).sqrt()).abs()
        assert float(rel.max()) <= 1.2e-7, (name, float(rel.max()))


def test_config_round_trip_through_yaml():
    yaml = pytest.importorskip("yaml")
    from medgen.models import strategy_from_config

    s = DDPM(schedules.make("gamma_rebalanced", 500, gamma=1.5, zero_terminal_snr=True), "v")
    again = strategy_from_config(yaml.safe_load(yaml.safe_dump(s.config())))
    assert isinstance(again, DDPM) and again.config() == s.config()
    assert torch.equal(again.alphas_cumprod, s.alphas_cumprod)
    assert DDPM.from_config(s.config()).prediction == "v"
    with pytest.raises(ValueError, match="DDPM"):
        DDPM.from_config({"strategy": "rflow"})
    with pytest.raises(ValueError, match="unknown strategy"):
        strategy_from_config({"strategy": "edm"})


def test_zero_terminal_snr_rejects_epsilon_prediction():
    sched = schedules.make("linear", 1000, zero_terminal_snr=True)
    assert float(sched.alphas_cumprod[-1]) == 0.0
    with pytest.raises(ValueError, match="zero-terminal-SNR"):
        DDPM(sched, prediction="epsilon")
    assert DDPM(sched, prediction="v").prediction == "v"


def test_model_time_is_the_integer_timestep_as_float32_exactly():
    s = DDPM(schedules.cosine(1000))
    t = torch.arange(1000)
    mt = s.model_time(t)
    assert mt.dtype == torch.float32 and mt.shape == t.shape
    assert torch.equal(mt, t.to(torch.float64).to(torch.float32))
    assert torch.equal(mt.to(torch.int64), t)  # exact: every timestep survives the round trip
    assert torch.equal(
        s.model_time(torch.tensor([750.0], dtype=torch.float64)), torch.tensor([750.0])
    )
    with pytest.raises(ValueError, match="must be integers"):
        s.model_time(torch.tensor([1.5]))
    with pytest.raises(ValueError, match=r"\[0, 1000\)"):
        s.model_time(torch.tensor([1000]))
