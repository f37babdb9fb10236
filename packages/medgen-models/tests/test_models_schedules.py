import pytest
import torch

from medgen.models import schedules

diffusers = pytest.importorskip("diffusers")


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (schedules.linear, "linear"),
        (schedules.scaled_linear, "scaled_linear"),
        (schedules.cosine, "squaredcos_cap_v2"),
    ],
)
def test_alphas_cumprod_match_diffusers(ours, theirs):
    s = ours(1000)
    ref = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=theirs)
    if theirs != "squaredcos_cap_v2":
        ref = diffusers.DDPMScheduler(
            num_train_timesteps=1000,
            beta_schedule=theirs,
            beta_start=s.config()["beta_start"],
            beta_end=s.config()["beta_end"],
        )
    torch.testing.assert_close(s.alphas_cumprod.float(), ref.alphas_cumprod, rtol=1e-5, atol=1e-8)


def test_cosine_closed_form_and_terminal_value():
    s = schedules.cosine(1000)
    assert s.betas.dtype == torch.float64
    assert float(s.betas.max()) == pytest.approx(0.999)
    # alpha_bar_t = f(t+1)/f(0) with f(u) = cos^2((u/T + s)/(1+s) * pi/2) before the cap bites
    import math

    def f(u):
        return math.cos((u / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2

    for t in (0, 10, 500, 900):
        assert float(s.alphas_cumprod[t]) == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    assert 1e-9 < float(s.alphas_cumprod[-1]) < 1e-8  # the tiny alpha_bar that breaks DDIM


def test_make_roundtrip_and_errors():
    s = schedules.cosine(500)
    again = schedules.make(**s.config())
    torch.testing.assert_close(again.betas, s.betas)
    with pytest.raises(ValueError, match="unknown schedule"):
        schedules.make("quadratic")


# --- sigmoid, gamma-rebalanced, zero terminal SNR, config round trips -----------------------

yaml = pytest.importorskip("yaml")

ALL = [
    schedules.linear(1000),
    schedules.scaled_linear(1000),
    schedules.cosine(1000),
    schedules.sigmoid(1000),
    schedules.gamma_rebalanced(1000, gamma=0.5),
    schedules.gamma_rebalanced(1000, beta_min=1e-5, beta_max=0.03, gamma=2.0),
    schedules.make("cosine", 1000, zero_terminal_snr=True),
    schedules.make("scaled_linear", 1000, zero_terminal_snr=True),
]
IDS = [f"{s.name}{'-zsnr' if s.zero_terminal_snr else ''}-{i}" for i, s in enumerate(ALL)]


@pytest.mark.parametrize("s", ALL, ids=IDS)
def test_yaml_round_trip_gives_identical_table(s):
    text = yaml.safe_dump(s.config())
    again = schedules.from_config(yaml.safe_load(text))
    assert again.config() == s.config()
    assert again.betas.dtype == torch.float64
    assert torch.equal(again.betas, s.betas)


@pytest.mark.parametrize("s", ALL, ids=IDS)
def test_snr_strictly_decreasing_and_tables_float64(s):
    snr = s.snr()
    assert s.alphas_cumprod.dtype == torch.float64
    assert bool((snr[1:] < snr[:-1]).all())
    assert float(snr[0]) > 0


def test_sigmoid_matches_diffusers_and_monai():
    ours = schedules.sigmoid(1000, beta_start=1e-4, beta_end=0.02)
    ref = diffusers.DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="sigmoid", beta_start=1e-4, beta_end=0.02
    )
    torch.testing.assert_close(ours.betas.float(), ref.betas, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours.alphas_cumprod.float(), ref.alphas_cumprod, rtol=0, atol=1e-6)
    monai_sched = pytest.importorskip("monai.networks.schedulers")
    m = monai_sched.DDPMScheduler(1000, schedule="sigmoid_beta", beta_start=1e-4, beta_end=0.02)
    torch.testing.assert_close(ours.alphas_cumprod.float(), m.alphas_cumprod, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("ours", "monai_name", "kw"),
    [
        (schedules.linear(1000), "linear_beta", {}),
        (schedules.scaled_linear(1000, 1e-4, 0.02), "scaled_linear_beta", {}),
        (schedules.cosine(1000), "cosine", {}),
    ],
)
def test_alphas_cumprod_match_monai(ours, monai_name, kw):
    monai_sched = pytest.importorskip("monai.networks.schedulers")
    m = monai_sched.DDPMScheduler(1000, schedule=monai_name, **kw)
    torch.testing.assert_close(ours.alphas_cumprod.float(), m.alphas_cumprod, rtol=0, atol=1e-6)


@pytest.mark.parametrize("theirs", ["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"])
def test_zero_terminal_snr_matches_diffusers(theirs):
    """Same algorithm as diffusers' ``rescale_zero_terminal_snr`` (run here in float64: 1e-12);
    diffusers' float32 scheduler agrees on alpha_bar to 1e-6. Its float32 betas near T-1 carry
    rounding up to ~1e-5 (1 - abar[t]/abar[t-1] with abar ~ 1e-5); ours are float64."""
    from diffusers.schedulers.scheduling_ddpm import rescale_zero_terminal_snr

    name = {"squaredcos_cap_v2": "cosine"}.get(theirs, theirs)
    base = schedules.make(name, 1000)
    ours = schedules.make(name, 1000, zero_terminal_snr=True)
    torch.testing.assert_close(
        ours.betas, rescale_zero_terminal_snr(base.betas.clone()), rtol=0, atol=1e-12
    )
    kw = {} if name == "cosine" else {k: ours.config()[k] for k in ("beta_start", "beta_end")}
    ref = diffusers.DDPMScheduler(
        num_train_timesteps=1000, beta_schedule=theirs, rescale_betas_zero_snr=True, **kw
    )
    torch.testing.assert_close(ours.alphas_cumprod.float(), ref.alphas_cumprod, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours.betas.float(), ref.betas, rtol=0, atol=1e-5)


def test_zero_terminal_snr_properties():
    base = schedules.scaled_linear(1000)
    z = schedules.rescale_zero_terminal_snr(base)
    assert float(z.alphas_cumprod[-1]) == 0.0 and float(z.betas[-1]) == 1.0
    assert float(z.snr()[-1]) == 0.0
    # alpha_bar[0] unchanged; sqrt(alpha_bar) an affine map of the original (Lin et al. alg. 1)
    assert float(z.alphas_cumprod[0]) == pytest.approx(float(base.alphas_cumprod[0]), rel=1e-12)
    s0, s = base.alphas_cumprod.sqrt(), z.alphas_cumprod.sqrt()
    ratio = (s[1:-1] - s[-1]) / (s0[1:-1] - s0[-1])
    torch.testing.assert_close(ratio, torch.full_like(ratio, float(ratio[0])))
    assert schedules.rescale_zero_terminal_snr(z) is z  # idempotent
    with pytest.raises(ValueError, match="betas"):
        schedules.NoiseSchedule("bad", torch.tensor([0.1, 1.0, 0.2], dtype=torch.float64))


def test_gamma_rebalanced_closed_form():
    T = 1000
    torch.testing.assert_close(
        schedules.gamma_rebalanced(T, 1e-4, 0.02, 1.0).betas,
        schedules.linear(T, 1e-4, 0.02).betas,
        rtol=1e-14,
        atol=1e-17,
    )
    for gamma in (0.5, 2.0, 3.0):
        s = schedules.gamma_rebalanced(T, 1e-4, 0.02, gamma)
        for i in (0, 1, 250, 999):
            expected = 1e-4 + (0.02 - 1e-4) * (i / (T - 1)) ** gamma
            assert float(s.betas[i]) == pytest.approx(expected, rel=1e-12, abs=1e-15)
    lo, mid, hi = (schedules.gamma_rebalanced(T, gamma=g).alphas_cumprod for g in (0.5, 1, 2))
    # gamma < 1 adds noise earlier (lower alpha_bar), gamma > 1 later
    assert bool((lo[1:-1] < mid[1:-1]).all()) and bool((hi[1:-1] > mid[1:-1]).all())
    with pytest.raises(ValueError, match="gamma"):
        schedules.gamma_rebalanced(T, gamma=0.0)
