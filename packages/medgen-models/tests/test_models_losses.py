"""Loss weighting: Min-SNR-gamma closed forms, masked per-sample means, per-channel losses."""

import math

import pytest
import torch

from medgen.models import DDPM, schedules
from medgen.models.losses import diffusion_loss, masked_mean_per_sample, min_snr_weight

# --- Min-SNR-gamma -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prediction", "gamma", "expected"),
    [
        # snr = 0, 0.5, 5, 20, inf
        ("epsilon", 5.0, [1.0, 1.0, 1.0, 0.25, 0.0]),
        ("v", 5.0, [0.0, 0.5 / 1.5, 5 / 6, 5 / 21, 0.0]),
        ("sample", 5.0, [0.0, 0.5, 5.0, 5.0, 5.0]),
        ("epsilon", 1.0, [1.0, 1.0, 0.2, 0.05, 0.0]),
        ("v", 1.0, [0.0, 0.5 / 1.5, 1 / 6, 1 / 21, 0.0]),
        ("sample", 1.0, [0.0, 0.5, 1.0, 1.0, 1.0]),
    ],
)
def test_min_snr_closed_form_including_zero_and_infinite_snr(prediction, gamma, expected):
    snr = torch.tensor([0.0, 0.5, 5.0, 20.0, math.inf], dtype=torch.float64)
    w = min_snr_weight(snr, prediction, gamma)
    assert torch.isfinite(w).all()
    torch.testing.assert_close(w, torch.tensor(expected, dtype=torch.float64))


def test_min_snr_default_gamma_is_five():
    snr = torch.tensor([100.0])
    assert min_snr_weight(snr, "sample").item() == 5.0
    assert min_snr_weight(snr, "epsilon").item() == pytest.approx(0.05)


@pytest.mark.parametrize("prediction", ["epsilon", "v", "sample"])
def test_weighted_target_loss_equals_min_snr_times_x0_loss(prediction):
    """The point of the per-target forms: every prediction type trains the same x0 objective,
    min(SNR, gamma) * |x0_hat - x0|^2 (Hang et al. eq. 5), via the strategy's conversions."""
    strategy = DDPM(schedules.cosine(1000), prediction)
    g = torch.Generator().manual_seed(0)
    t = torch.tensor([0, 20, 200, 500, 900, 999])
    x0 = torch.randn(6, 1, 4, 4, generator=g, dtype=torch.float64)
    noise = torch.randn(6, 1, 4, 4, generator=g, dtype=torch.float64)
    x_t = strategy.add_noise(x0, noise, t)
    target = strategy.training_target(x0, noise, t)
    output = target + 0.1 * torch.randn(6, 1, 4, 4, generator=g, dtype=torch.float64)
    x0_hat, _ = strategy.predict_x0_eps(x_t, output, t)
    snr = strategy.snr(t, x0).reshape(-1)
    target_loss = ((output - target) ** 2).mean(dim=(1, 2, 3)) * min_snr_weight(snr, prediction)
    x0_loss = ((x0_hat - x0) ** 2).mean(dim=(1, 2, 3)) * snr.clamp(max=5.0)
    torch.testing.assert_close(target_loss, x0_loss, rtol=1e-6, atol=1e-12)


def test_min_snr_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown prediction 'x0'"):
        min_snr_weight(torch.ones(1), "x0")
    with pytest.raises(ValueError, match="gamma must be > 0"):
        min_snr_weight(torch.ones(1), "v", gamma=0)
    with pytest.raises(ValueError, match="snr must be >= 0"):
        min_snr_weight(torch.tensor([-1.0]), "v")


# --- masked per-sample means ---------------------------------------------------------------


def test_masked_mean_hand_computed():
    values = torch.tensor(
        [
            [[1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0]],
            [[5.0, 6.0, 7.0, 8.0], [0.0, 0.0, 0.0, 0.0]],
            [[9.0, 9.0, 9.0, 9.0], [9.0, 9.0, 9.0, 9.0]],
        ]
    )  # (B=3, C=2, 4)
    mask = torch.tensor([[[1, 1, 0, 0]], [[1, 1, 1, 1]], [[0, 0, 0, 0]]], dtype=torch.bool)
    # sample 0: (1 + 2 + 10 + 20) / 4; sample 1: (5+6+7+8+0*4) / 8; sample 2: no valid voxel
    expected = torch.tensor([33 / 4, 26 / 8, 0.0])
    torch.testing.assert_close(masked_mean_per_sample(values, mask), expected)
    per_channel = torch.tensor([[[1, 0, 0, 1], [0, 1, 1, 1]]] * 3, dtype=torch.bool)
    torch.testing.assert_close(
        masked_mean_per_sample(values, per_channel)[0], torch.tensor((1 + 4 + 20 + 30 + 40) / 5)
    )
    weights = torch.tensor([[[0.5, 0.25, 0.0, 0.0]]] * 3)  # soft mask: weighted mean
    torch.testing.assert_close(
        masked_mean_per_sample(values, weights)[0],
        torch.tensor((0.5 * 1 + 0.25 * 2 + 0.5 * 10 + 0.25 * 20) / 1.5),
    )
    torch.testing.assert_close(masked_mean_per_sample(values), values.mean(dim=(1, 2)))


def test_padded_volume_weighs_like_the_unpadded_one():
    """Per-sample normalisation: padding a sample (value -1, mask 0) to the batch depth does not
    change its loss, whatever the prediction error in the padding."""
    g = torch.Generator().manual_seed(3)
    short = torch.randn(1, 2, 5, 4, 4, generator=g)
    long_ = torch.randn(1, 2, 8, 4, 4, generator=g)
    pad = torch.full((1, 2, 3, 4, 4), -1.0)
    err_short = torch.cat([short, pad], dim=2) ** 2
    err_short[:, :, 5:] = 123.0  # garbage in the padded region
    values = torch.cat([err_short, long_**2])
    mask = torch.ones(2, 1, 8, 4, 4)
    mask[0, :, 5:] = 0
    got = masked_mean_per_sample(values, mask)
    torch.testing.assert_close(got, torch.stack([(short**2).mean(), (long_**2).mean()]))


def test_masked_mean_shape_errors():
    with pytest.raises(ValueError, match="same number of dims"):
        masked_mean_per_sample(torch.ones(2, 1, 4, 4), torch.ones(2, 4, 4))
    with pytest.raises(ValueError, match="does not broadcast"):
        masked_mean_per_sample(torch.ones(2, 1, 4, 4), torch.ones(2, 1, 3, 4))


# --- per-channel losses ------------------------------------------------------------------


def test_per_channel_losses_hand_computed():
    target = torch.zeros(2, 2, 1, 2)
    output = torch.tensor(
        [
            [[[1.0, 2.0]], [[3.0, 0.0]]],  # image sq. errors 1, 4; mask 9, 0
            [[[0.0, 1.0]], [[2.0, 2.0]]],  # image 0, 1; mask 4, 4
        ]
    )
    mask = torch.tensor([[[[1.0, 1.0]]], [[[1.0, 0.0]]]])  # sample 1's second pixel is padding
    weight = torch.tensor([1.0, 0.5])
    out = diffusion_loss(output, target, weight=weight, mask=mask, channels={"image": 0, "mask": 1})
    assert set(out) == {"loss", "image", "mask"}
    torch.testing.assert_close(out["image"], torch.tensor((2.5 * 1 + 0.0 * 0.5) / 2))
    torch.testing.assert_close(out["mask"], torch.tensor((4.5 * 1 + 4.0 * 0.5) / 2))
    torch.testing.assert_close(out["loss"], torch.tensor((14 / 4 * 1 + 4 / 2 * 0.5) / 2))
    l1 = diffusion_loss(output, target, channels={"mask": [1]}, kind="l1")
    torch.testing.assert_close(
        l1["mask"],
        torch.tensor(((3 + 0) / 2 + (2 + 2) / 2) / 2),  # no mask, no weight
    )


def test_diffusion_loss_backpropagates_and_checks_inputs():
    output = torch.randn(2, 3, 4, 4, requires_grad=True)
    loss = diffusion_loss(output, torch.zeros(2, 3, 4, 4), channels={"image": slice(0, 2)})
    loss["image"].backward()
    assert output.grad[:, 2].abs().sum() == 0 and output.grad[:, :2].abs().sum() > 0
    with pytest.raises(ValueError, match="differ in shape"):
        diffusion_loss(torch.zeros(1, 1, 2, 2), torch.zeros(1, 2, 2, 2))
    with pytest.raises(ValueError, match="one value per sample"):
        diffusion_loss(torch.zeros(2, 1, 2, 2), torch.zeros(2, 1, 2, 2), weight=torch.ones(3))
    with pytest.raises(ValueError, match=r"channel group 'mask': channels \[3\]"):
        diffusion_loss(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2), channels={"mask": 3})
