import pytest
import torch

from medgen.models import DDPM, ddim, inference_timesteps, samplers, schedules

diffusers = pytest.importorskip("diffusers")


def toy_model(x, t, cond):
    """A deterministic stand-in for a network: depends on x, t and the conditioning."""
    tt = t.float().reshape(-1, *([1] * (x.ndim - 1))) / 1000
    c = 0.0 if cond is None else cond.float().reshape(-1, *([1] * (x.ndim - 1))) * 0.01
    return torch.tanh(0.7 * x + tt) + c


@pytest.mark.parametrize("prediction", ["epsilon", "v", "sample"])
@pytest.mark.parametrize("clip", [None, 1.0])
@pytest.mark.parametrize("steps", [10, 50])
def test_ddim_matches_diffusers_loop(prediction, clip, steps):
    ref = diffusers.DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        timestep_spacing="trailing",
        set_alpha_to_one=True,
        clip_sample=clip is not None,
        clip_sample_range=clip or 1.0,
        prediction_type={"v": "v_prediction"}.get(prediction, prediction),
    )
    ref.set_timesteps(steps)
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn((3, 2, 8, 8), generator=g)
    cond = torch.tensor([0, 3, 7])
    x = x_T.clone()
    for t in ref.timesteps:
        out = toy_model(x, t.repeat(3), cond)
        x = ref.step(out, t, x, eta=0.0, use_clipped_model_output=clip is not None).prev_sample
    ours = ddim(
        toy_model, DDPM(schedules.cosine(1000), prediction), x_T, steps, cond=cond, clip_x0=clip
    )
    # unclipped eps-DDIM reaches |x| ~ 1e2 through 1/sqrt(alpha_bar): compare relatively
    torch.testing.assert_close(ours, x, atol=2e-5, rtol=1e-4)


def test_ddim_visits_exactly_n_steps_and_calls_back():
    seen = []
    ddim(
        toy_model,
        DDPM(schedules.cosine(1000)),
        torch.zeros(1, 1, 4, 4),
        7,
        callback=lambda d: seen.append(d["t"]),
    )
    assert len(seen) == 7 and seen[0] == 999


def test_ddim_without_clipping_amplifies_eps_errors_at_t_max():
    """DESIGN.md section 8: unclipped eps-DDIM from T-1 divides eps errors by sqrt(2.4e-9); the
    pixel-space sampler must offer clipping, and it bounds the first x0 to the data range."""
    firsts = {}
    for clip in (None, 1.0):
        seen = []
        ddim(
            toy_model,
            DDPM(schedules.cosine(1000)),
            torch.randn(2, 1, 8, 8),
            5,
            clip_x0=clip,
            callback=lambda d, s=seen: s.append(d["x0"]),
        )
        firsts[clip] = seen[0].abs().max().item()
    assert firsts[None] > 100
    assert firsts[1.0] <= 1.0


# --- DDPM ancestral sampling against diffusers and MONAI ------------------------------------


def trajectory(sampler, *args, **kw):
    """Our sampler's states [x_T, x_1, ..., x_n] (through its callback)."""
    xs = [args[2]]
    out = sampler(*args, callback=lambda d: xs.append(d["x"]), **kw)
    assert torch.equal(out, xs[-1])
    return xs


def assert_each_step_matches(peer_step, xs, ts, tol=1e-5):
    """Teacher forcing: the peer steps from each of our states, in float32, to ``tol``
    (absolute and relative). Not 1e-6: the peers compute 1 - alpha_bar and 1/sqrt(alpha_bar)
    in float32 (cancellation near t = 0 gives them ~4e-6 errors at |x| ~ 2; eps chains reach
    |x| ~ 300, where a float32 ulp is 3e-5); ours are float64 coefficients. The algorithms are
    compared to 1e-9 in float64 separately."""
    for i, t in enumerate(ts):
        torch.testing.assert_close(xs[i + 1], peer_step(xs[i], t), atol=tol, rtol=tol)


def use_our_tables(ref, schedule, dtype=torch.float64):
    """Give a peer scheduler our float64 tables: the peers build theirs in float32 (cumprod
    drifts ~1e-6 relative over 1000 steps), so comparing algorithms in float64 needs ours."""
    ref.betas = schedule.betas.to(dtype)
    ref.alphas = (1 - schedule.betas).to(dtype)
    ref.alphas_cumprod = schedule.alphas_cumprod.to(dtype)
    ref.one = ref.final_alpha_cumprod = torch.tensor(1.0, dtype=dtype)


@pytest.mark.parametrize("prediction", ["epsilon", "v", "sample"])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_ddpm_ancestral_matches_diffusers_with_fewer_steps(prediction, spacing, monkeypatch):
    """Ancestral DDPM, 50 of 1000 steps, same noise stream: every float32 step equals
    diffusers' DDPMScheduler.step to 1e-5 (see :func:`assert_each_step_matches`), and the whole
    float64 chain (diffusers given our float64 tables) to 1e-9."""
    kw = dict(
        num_train_timesteps=1000, beta_schedule="linear", timestep_spacing=spacing,
        clip_sample=False, prediction_type={"v": "v_prediction"}.get(prediction, prediction),
    )  # fmt: skip
    ref = diffusers.DDPMScheduler(**kw)
    ref.set_timesteps(50)
    strategy = DDPM(schedules.linear(1000), prediction)
    assert torch.equal(ref.timesteps, inference_timesteps(1000, 50, spacing))
    x_T = torch.randn((3, 2, 8, 8), generator=torch.Generator().manual_seed(0))
    cond = torch.tensor([0, 3, 7])
    xs = trajectory(samplers.ddpm, toy_model, strategy, x_T, 50, cond=cond, spacing=spacing,
                    generator=torch.Generator().manual_seed(5))  # fmt: skip
    g = torch.Generator().manual_seed(5)

    def peer(x, t):
        return ref.step(toy_model(x, t.repeat(3), cond), t, x, generator=g).prev_sample

    assert_each_step_matches(peer, xs, ref.timesteps)
    # float64: diffusers draws noise in the model's dtype, we always draw float32
    import diffusers.schedulers.scheduling_ddpm as sd

    draw = sd.randn_tensor
    monkeypatch.setattr(sd, "randn_tensor", lambda shape, generator=None, device=None,
                        dtype=None: draw(shape, generator=generator).to(dtype))  # fmt: skip
    use_our_tables(ref, strategy.schedule)
    x, g = x_T.double(), torch.Generator().manual_seed(5)
    for t in ref.timesteps:
        x = peer(x, t)
    ours = samplers.ddpm(toy_model, strategy, x_T.double(), 50, cond=cond, spacing=spacing,
                         generator=torch.Generator().manual_seed(5))  # fmt: skip
    torch.testing.assert_close(ours, x, atol=1e-9, rtol=1e-9)


def test_ddpm_matches_monai_when_every_timestep_is_visited(monkeypatch):
    """With n = T, MONAI's t - 1 is the previous scheduled timestep: every step equal."""
    monai_sched = pytest.importorskip("monai.networks.schedulers")
    sched = monai_sched.DDPMScheduler(100, schedule="linear_beta", clip_sample=False)
    sched.set_timesteps(100)
    x_T = torch.randn((2, 1, 4, 4), generator=torch.Generator().manual_seed(0))
    xs = trajectory(samplers.ddpm, toy_model, DDPM(schedules.linear(100)), x_T, 100,
                    spacing="linspace", generator=torch.Generator().manual_seed(1))  # fmt: skip
    g = torch.Generator().manual_seed(1)

    def peer(x, t):
        return sched.step(toy_model(x, t.repeat(2), None), int(t), x, generator=g)[0]

    # float32, steps with t >= 10: below, MONAI's float32 1 - alpha_bar (~1e-4..1e-3) has lost
    # 3-4 digits to cancellation (5e-4 error at t = 0); the float64 comparison covers all steps
    assert_each_step_matches(peer, xs[:91], sched.timesteps[:90], tol=2e-5)
    # float64: MONAI given our tables and float32-drawn noise (as ours) equals to 1e-9
    import monai.networks.schedulers.ddpm as md

    monkeypatch.setattr(md, "torch", Float32Randn())
    use_our_tables(sched, schedules.linear(100))
    x, g = x_T.double(), torch.Generator().manual_seed(1)
    for t in sched.timesteps:
        x = peer(x, t)
    ours = samplers.ddpm(toy_model, DDPM(schedules.linear(100)), x_T.double(), 100,
                         spacing="linspace", generator=torch.Generator().manual_seed(1))  # fmt: skip
    torch.testing.assert_close(ours, x, atol=1e-9, rtol=1e-9)


class Float32Randn:
    """``torch`` for a peer module, except that randn draws float32 (as our samplers do)."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def randn(*size, dtype=None, **kw):
        return torch.randn(*size, dtype=torch.float32, **kw).to(dtype)


def test_ddpm_previous_scheduled_timestep_not_t_minus_1():
    """MONAI's DDPMScheduler.step uses alpha_bar[t-1] and beta[t] whatever the inference
    schedule (diffusers fixed this in PR 2076). With 10 of 100 steps its first step from 99
    goes to the noise level of t = 98 instead of t = 88: the output keeps far more noise.
    Ours equals diffusers (previous *scheduled* timestep) and differs from MONAI."""
    monai_sched = pytest.importorskip("monai.networks.schedulers")
    sched = monai_sched.DDPMScheduler(
        100, schedule="linear_beta", clip_sample=False, prediction_type="sample"
    )
    sched.set_timesteps(10)
    ts = sched.timesteps.tolist()
    assert ts[:2] == [99, 88]
    strategy = DDPM(schedules.linear(100), "sample")
    x_T = torch.randn((2, 1, 4, 4), generator=torch.Generator().manual_seed(0))
    # one step, x0-prediction of zero: the posterior mean is c_xt * x_t; compare c_xt
    zero = lambda x, t, c: torch.zeros_like(x)  # noqa: E731
    m_prev, _ = sched.step(
        torch.zeros_like(x_T), 99, x_T, generator=torch.Generator().manual_seed(0)
    )
    a = strategy.alphas_cumprod.double()
    noise0 = torch.randn(x_T.shape, generator=torch.Generator().manual_seed(0)).double()

    def posterior(prev):  # q(x_prev | x_99, x0 = 0): mean c * x_99, variance var
        c = (1 - a[prev]) / (1 - a[99]) * (a[99] / a[prev]).sqrt()
        var = (1 - a[prev]) / (1 - a[99]) * (1 - a[99] / a[prev])
        return (c * x_T.double() + var.sqrt() * noise0).float(), float(c)

    monai_expected, c_monai = posterior(98)  # what MONAI computes: t - 1
    expected, c_sched = posterior(88)  # the previous scheduled timestep
    torch.testing.assert_close(m_prev, monai_expected, atol=1e-5, rtol=1e-5)
    seen = []
    samplers.ddpm(
        zero, strategy, x_T, 10, spacing="linspace", generator=torch.Generator().manual_seed(0),
        callback=lambda d: seen.append(d["x"]),
    )  # fmt: skip
    torch.testing.assert_close(seen[0], expected, atol=1e-6, rtol=1e-6)
    assert c_monai > c_sched + 0.1  # MONAI keeps far more of x_t (barely denoises)
    ref = diffusers.DDPMScheduler(num_train_timesteps=100, clip_sample=False,
                                  prediction_type="sample", timestep_spacing="linspace")  # fmt: skip
    ref.set_timesteps(10)
    assert ref.timesteps.tolist() == ts
    theirs = ref.step(torch.zeros_like(x_T), 99, x_T, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(seen[0], theirs.prev_sample, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(m_prev, seen[0], atol=1e-2)


# --- DDIM: MONAI, zero terminal SNR, eta > 0 -------------------------------------------------


def test_ddim_matches_monai_with_all_timesteps_and_pins_its_skip_bug():
    """MONAI 1.6.1 DDIM: timesteps round(linspace(T-1, 0, n)) but the step goes to
    t - T // n. Right when n = T (equal to ours to 1e-6), inconsistent otherwise: with
    n = 10 of 100 it steps 99 -> 89 while the next call is at 88."""
    monai_sched = pytest.importorskip("monai.networks.schedulers")
    strategy = DDPM(schedules.linear(100), "v")
    x_T = torch.randn((2, 1, 4, 4), generator=torch.Generator().manual_seed(0))
    sched = monai_sched.DDIMScheduler(100, schedule="linear_beta", clip_sample=False,
                                      prediction_type="v_prediction")  # fmt: skip
    sched.set_timesteps(100)
    x = x_T.clone()
    for t in sched.timesteps:
        x, _ = sched.step(toy_model(x, t.repeat(2), None), int(t), x)
    ours = ddim(toy_model, strategy, x_T, 100, spacing="linspace")
    torch.testing.assert_close(ours, x, atol=1e-6, rtol=1e-6)
    sched.set_timesteps(10)
    assert sched.timesteps.tolist()[:2] == [99, 88]
    x1, _ = sched.step(toy_model(x_T, torch.tensor([99, 99]), None), 99, x_T)
    seen = []
    ddim(toy_model, strategy, x_T, 10, spacing="linspace", callback=lambda d: seen.append(d["x"]))
    a = strategy.alphas_cumprod
    x0, eps = strategy.predict_x0_eps(x_T, toy_model(x_T, torch.tensor([99, 99]), None),
                                      torch.tensor([99, 99]))  # fmt: skip
    torch.testing.assert_close(x1, (a[89].sqrt() * x0 + (1 - a[89]).sqrt() * eps).float())
    torch.testing.assert_close(seen[0], (a[88].sqrt() * x0 + (1 - a[88]).sqrt() * eps).float())


def test_ddim_zero_terminal_snr_v_matches_diffusers():
    """Lin et al. 2024 setting: zero-terminal-SNR cosine, v prediction, trailing spacing. At
    T-1 alpha_bar = 0; medgen.cuda floors it at 1e-12, so x0 = 1e-6 x - v: 1e-5 agreement."""
    ref = diffusers.DDIMScheduler(
        num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", rescale_betas_zero_snr=True,
        timestep_spacing="trailing", set_alpha_to_one=True, clip_sample=False,
        prediction_type="v_prediction",
    )  # fmt: skip
    ref.set_timesteps(20)
    x_T = torch.randn((3, 2, 8, 8), generator=torch.Generator().manual_seed(0))
    x = x_T.clone()
    for t in ref.timesteps:
        x = ref.step(toy_model(x, t.repeat(3), None), t, x).prev_sample
    strategy = DDPM(schedules.make("cosine", 1000, zero_terminal_snr=True), "v")
    torch.testing.assert_close(ddim(toy_model, strategy, x_T, 20), x, atol=1e-5, rtol=1e-5)


def test_ddim_eta_matches_diffusers_with_the_same_noise():
    ref = diffusers.DDIMScheduler(
        num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
        beta_end=0.012, timestep_spacing="trailing", set_alpha_to_one=True, clip_sample=False,
        prediction_type="v_prediction",
    )  # fmt: skip
    ref.set_timesteps(20)
    x_T = torch.randn((3, 2, 8, 8), generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(9)
    x = x_T.clone()
    for t in ref.timesteps:
        x = ref.step(toy_model(x, t.repeat(3), None), t, x, eta=0.7, generator=g).prev_sample
    strategy = DDPM(schedules.scaled_linear(1000), "v")
    ours = ddim(toy_model, strategy, x_T, 20, eta=0.7, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(ours, x, atol=1e-5, rtol=1e-5)


def test_diffusers_ddim_trailing_skips_off_by_one_when_n_does_not_divide_T():
    """Documented diffusers difference: DDIMScheduler.step goes to t - T // n, so trailing
    spacing with n = 15 (timesteps 999, 932, ...) steps 999 -> 933 and then calls the model at
    932. Ours goes to the next scheduled timestep (932)."""
    ref = diffusers.DDIMScheduler(num_train_timesteps=1000, timestep_spacing="trailing",
                                  set_alpha_to_one=True, clip_sample=False)  # fmt: skip
    ref.set_timesteps(15)
    assert ref.timesteps[:2].tolist() == [999, 932]
    strategy = DDPM(schedules.linear(1000))
    x_T = torch.randn((2, 1, 4, 4), generator=torch.Generator().manual_seed(0))
    t = torch.tensor([999, 999])
    out = toy_model(x_T, t, None)
    theirs = ref.step(out, 999, x_T).prev_sample
    x0, eps = strategy.predict_x0_eps(x_T, out, t)
    a = strategy.alphas_cumprod
    torch.testing.assert_close(theirs, (a[933].sqrt() * x0 + (1 - a[933]).sqrt() * eps).float())
    seen = []
    ddim(toy_model, strategy, x_T, 15, callback=lambda d: seen.append(d["x"]))
    torch.testing.assert_close(seen[0], (a[932].sqrt() * x0 + (1 - a[932]).sqrt() * eps).float())
