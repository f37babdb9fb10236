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
