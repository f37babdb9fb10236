import pytest
import torch

from medgen.models import inference_timesteps

diffusers = pytest.importorskip("diffusers")


@pytest.mark.parametrize("spacing", ["trailing", "leading", "linspace"])
@pytest.mark.parametrize("n", [1, 7, 50, 100, 333, 1000])
def test_matches_diffusers_ddim(spacing, n):
    ref = diffusers.DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing)
    ref.set_timesteps(n)
    ours = inference_timesteps(1000, n, spacing)
    assert len(ours) == n
    torch.testing.assert_close(ours, ref.timesteps.long())


def test_trailing_starts_at_last_timestep():
    ts = inference_timesteps(1000, 100, "trailing")
    assert ts[0] == 999 and ts[-1] == 9  # MONAI issue 8600: leading runs 990 -> 0
    assert inference_timesteps(1000, 100, "leading")[0] == 990


def test_bad_counts():
    with pytest.raises(ValueError):
        inference_timesteps(1000, 0)
    with pytest.raises(ValueError):
        inference_timesteps(10, 11)


@pytest.mark.parametrize("spacing", ["trailing", "leading", "linspace"])
@pytest.mark.parametrize("T", [100, 999, 1000, 1001])
def test_exactly_n_distinct_steps_for_every_n(spacing, T):
    """Float arange overshoot (T=1000, n=61 gave 62 entries ending at -1) must not raise."""
    for n in range(1, T + 1):
        ts = inference_timesteps(T, n, spacing)
        assert len(ts) == n and int(ts.min()) >= 0 and int(ts.max()) <= T - 1
        assert bool((ts[:-1] > ts[1:]).all())
    if spacing == "trailing":
        ts = inference_timesteps(1000, 61, spacing)
        assert ts[0] == 999 and ts[-1] == round(1000 / 61) - 1
