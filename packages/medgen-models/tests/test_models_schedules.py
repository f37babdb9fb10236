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
