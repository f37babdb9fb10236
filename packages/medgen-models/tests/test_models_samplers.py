import pytest
import torch

from medgen.models import DDPM, ddim, schedules

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
