"""Autoencoder losses against closed forms and hand-rolled references: KL, L1/L2, adversarial
(MONAI's PatchAdversarialLoss), the adaptive GAN weight (autograd by hand), LPIPS-style
perceptual loss (formula recomputed on the same features; 2.5D = mean of 2D over the slices),
mask losses and Dice / IoU."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from medgen.models.autoencoders import (
    MissingWeightsError,
    PerceptualLoss,
    SegmentationLoss,
    WeightsError,
    adaptive_gan_weight,
    adversarial_loss,
    boundary_loss,
    build_discriminator,
    dice_score,
    discriminator_logits,
    iou_score,
    kl_loss,
    reconstruction_loss,
    signed_distance_map,
)
from medgen.models.autoencoders.perceptual import (
    LPIPS_CHANNELS,
    LPIPS_SCALE,
    LPIPS_SHIFT,
    LPIPS_TAPS,
    sample_slices,
    vgg16_features,
)

torch.set_num_threads(1)


# ---------------------------------------------------------------- KL, reconstruction


def test_kl_matches_torch_distributions_and_is_zero_at_the_prior():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(3, 4, 5, 5, generator=g, dtype=torch.float64)
    sigma = torch.rand(3, 4, 5, 5, generator=g, dtype=torch.float64) + 0.1
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu, sigma), torch.distributions.Normal(0.0, 1.0)
    )
    torch.testing.assert_close(kl_loss(mu, sigma), ref.flatten(1).sum(1).mean())
    assert kl_loss(torch.zeros(2, 3, 4), torch.ones(2, 3, 4)) == 0
    assert kl_loss(mu, sigma) > 0


def test_reconstruction_losses():
    x, y = torch.tensor([[0.0, 1.0, -2.0]]), torch.tensor([[1.0, 1.0, 0.0]])
    assert reconstruction_loss(x, y, "l1") == pytest.approx(1.0)
    assert reconstruction_loss(x, y, "l2") == pytest.approx(5 / 3)
    with pytest.raises(ValueError, match="kind must be one of"):
        reconstruction_loss(x, y, "l3")
    with pytest.raises(ValueError, match="shapes differ"):
        reconstruction_loss(x, y[:, :2])


# ---------------------------------------------------------------- adversarial


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("kind", ["patch", "multiscale"])
def test_discriminators_give_logits(kind, dims):
    torch.manual_seed(0)
    size = 32 if kind == "multiscale" else 16
    d = build_discriminator(
        kind, dims, 1, channels=4, num_layers_d=2, num_d=2, minimum_size_im=size
    )
    x = torch.randn(2, 1, *([size] * dims))
    logits = discriminator_logits(d(x))
    logits = logits if isinstance(logits, list) else [logits]
    assert len(logits) == (2 if kind == "multiscale" else 1)
    assert all(t.shape[0] == 2 and t.ndim == dims + 2 for t in logits)
    loss = adversarial_loss("hinge")(logits, target_is_real=True, for_discriminator=True)
    loss.backward()
    assert all(p.grad is not None for p in d.parameters())


def test_adversarial_losses_closed_forms():
    g = torch.Generator().manual_seed(0)
    d = torch.randn(2, 1, 4, 4, generator=g) * 2
    hinge, ls = adversarial_loss("hinge"), adversarial_loss("least_squares")
    t = torch.tanh(d)
    torch.testing.assert_close(hinge(d, True, True), F.relu(1 - t).mean())
    torch.testing.assert_close(hinge(d, False, True), F.relu(1 + t).mean())
    torch.testing.assert_close(hinge(d, True, False), F.relu(1 - t).mean())
    a = F.leaky_relu(d, 0.05)
    torch.testing.assert_close(ls(d, True, True), ((a - 1) ** 2).mean())
    torch.testing.assert_close(ls(d, False, True), (a**2).mean())
    # multiscale: the mean over the scales
    d2 = torch.randn(2, 1, 2, 2, generator=g)
    torch.testing.assert_close(
        ls([d, d2], True, True), (ls(d, True, True) + ls(d2, True, True)) / 2
    )
    with pytest.raises(ValueError, match="criterion must be one of"):
        adversarial_loss("bce-ish")
    with pytest.raises(ValueError, match="kind must be one of"):
        build_discriminator("global")


def test_adaptive_gan_weight_matches_a_hand_computation():
    torch.manual_seed(0)
    layer = torch.nn.Conv2d(4, 1, 3, padding=1)
    h = torch.randn(2, 4, 8, 8)
    x_hat = layer(h)
    rec = (x_hat - 0.5).abs().mean()
    g_loss = -(x_hat * torch.linspace(0, 1, 8)).mean()
    w = adaptive_gan_weight(rec, g_loss, layer.weight)
    # by hand: two separate autograd passes on fresh graphs
    gr = torch.autograd.grad((layer(h) - 0.5).abs().mean(), layer.weight)[0]
    gg = torch.autograd.grad(-(layer(h) * torch.linspace(0, 1, 8)).mean(), layer.weight)[0]
    expected = torch.sqrt((gr**2).sum()) / (torch.sqrt((gg**2).sum()) + 1e-4)
    torch.testing.assert_close(w, expected)
    assert not w.requires_grad and w.grad_fn is None  # detached: no gradient through the weight
    # clamped
    assert adaptive_gan_weight(rec * 1e9, g_loss * 1e-9, layer.weight, max_weight=10.0) == 10.0
    # the graph is kept: the generator loss can still be back-propagated, weighted
    (rec + w * g_loss).backward()
    torch.testing.assert_close(layer.weight.grad, gr + w * gg)


# ---------------------------------------------------------------- perceptual


def _vgg_file(path, num_layers=5, seed=0, extra=True):
    torch.manual_seed(seed)
    feats = vgg16_features(num_layers)
    state = {f"features.{k}": v for k, v in feats.state_dict().items()}
    if extra:  # torchvision's file also holds the classifier
        state["classifier.0.weight"] = torch.zeros(4, 4)
    save_file(state, str(path))
    return feats


def _heads_file(path, seed=0):
    g = torch.Generator().manual_seed(seed)
    state = {
        f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=g)
        for i, c in enumerate(LPIPS_CHANNELS)
    }
    torch.save(state, path)
    return state


def _reference_lpips(feats, heads, x, y, num_layers):
    """LPIPS written out plainly in float64 over the same backbone."""
    net = feats.double()
    shift = torch.tensor(LPIPS_SHIFT, dtype=torch.float64).view(1, 3, 1, 1)
    scale = torch.tensor(LPIPS_SCALE, dtype=torch.float64).view(1, 3, 1, 1)

    def taps(v):
        h = (v.double().repeat(1, 3, 1, 1) - shift) / scale
        out = []
        for i, layer in enumerate(net):
            h = layer(h)
            if i in LPIPS_TAPS[:num_layers]:
                out.append(h)
        return out

    total = torch.zeros(x.shape[0], dtype=torch.float64)
    for i, (a, b) in enumerate(zip(taps(x), taps(y), strict=True)):
        a = a / (a.norm(dim=1, keepdim=True) + 1e-10)
        b = b / (b.norm(dim=1, keepdim=True) + 1e-10)
        d = (a - b) ** 2
        w = (
            heads[f"lin{i}.model.1.weight"].double().view(1, -1, 1, 1)
            if heads is not None
            else torch.ones(1, d.shape[1], 1, 1, dtype=torch.float64)
        )
        total += (d * w).sum(1).mean(dim=(1, 2))
    return total


def test_vgg16_layout_is_torchvisions():
    """torchvision's vgg16().features state dict: 13 convolutions at these indices and shapes
    (written out from torchvision's VGG16 configuration 'D'), ReLUs at the LPIPS taps."""
    widths = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
              (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]  # fmt: skip
    indices = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    expected = {}
    for i, (c_in, c_out) in zip(indices, widths, strict=True):
        expected[f"{i}.weight"] = (c_out, c_in, 3, 3)
        expected[f"{i}.bias"] = (c_out,)
    with torch.device("meta"):
        feats = vgg16_features(5)
    assert {k: tuple(v.shape) for k, v in feats.state_dict().items()} == expected
    assert [type(feats[i]).__name__ for i in LPIPS_TAPS] == ["ReLU"] * 5
    assert [feats[i - 1].out_channels for i in LPIPS_TAPS] == list(LPIPS_CHANNELS)
    assert [type(feats[i]).__name__ for i in (4, 9, 16, 23)] == ["MaxPool2d"] * 4


@pytest.mark.parametrize("with_heads", [False, True])
def test_perceptual_equals_the_lpips_formula(tmp_path, with_heads):
    feats = _vgg_file(tmp_path / "vgg16.safetensors")
    heads = _heads_file(tmp_path / "vgg.pth") if with_heads else None
    loss = PerceptualLoss(
        tmp_path / "vgg16.safetensors",
        heads=tmp_path / "vgg.pth" if with_heads else None,
        reduction="none",
    )
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 1, 16, 16, generator=g) * 2 - 1
    y = torch.rand(2, 1, 16, 16, generator=g) * 2 - 1
    got = loss(x, y)
    ref = _reference_lpips(feats, heads, x, y, 5)
    torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-6)
    assert torch.equal(loss(x, x), torch.zeros(2))
    assert not any(p.requires_grad for p in loss.parameters())
    x.requires_grad_(True)
    loss(x, y).sum().backward()  # a loss: gradients reach the input
    assert x.grad.abs().sum() > 0


def test_perceptual_2p5d_is_the_mean_of_2d_over_the_sampled_slices(tmp_path):
    _vgg_file(tmp_path / "vgg.safetensors", num_layers=2)
    kw = dict(num_layers=2, reduction="none")
    loss3 = PerceptualLoss(tmp_path / "vgg.safetensors", spatial_dims=3, slice_fraction=0.3, **kw)
    loss2 = PerceptualLoss(tmp_path / "vgg.safetensors", spatial_dims=2, **kw)
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 1, 10, 12, 16, generator=g) * 2 - 1
    y = torch.rand(2, 1, 10, 12, 16, generator=g) * 2 - 1
    got = loss3(x, y, generator=torch.Generator().manual_seed(7))
    picks = sample_slices(x.shape[2:], 0.3, torch.Generator().manual_seed(7))
    assert [len(p) for p in picks] == [3, 4, 5]
    planes = []
    for axis, idx in enumerate(picks):
        per_slice = []
        for i in idx.tolist():
            xs = x.select(2 + axis, i)
            ys = y.select(2 + axis, i)
            per_slice.append(loss2(xs, ys))
        planes.append(torch.stack(per_slice).mean(0))
    torch.testing.assert_close(got, torch.stack(planes).mean(0), rtol=1e-5, atol=1e-7)
    # the module's own generator is seeded and advances: reproducible, not the same slices twice
    a = PerceptualLoss(tmp_path / "vgg.safetensors", spatial_dims=3, seed=3, **kw)
    b = PerceptualLoss(tmp_path / "vgg.safetensors", spatial_dims=3, seed=3, **kw)
    first = a(x, y)
    assert torch.equal(first, b(x, y))
    assert not torch.equal(first, a(x, y))


def test_perceptual_weights_errors(tmp_path):
    missing = tmp_path / "nowhere" / "vgg16-397923af.pth"
    with pytest.raises(MissingWeightsError, match=rf"{missing} does not exist.*vgg16") as err:
        PerceptualLoss(missing)
    assert "\n" not in str(err.value)
    _vgg_file(tmp_path / "vgg.safetensors", num_layers=2)
    with pytest.raises(MissingWeightsError, match=r"lpips"):
        PerceptualLoss(tmp_path / "vgg.safetensors", heads=tmp_path / "none.pth", num_layers=2)
    with pytest.raises(WeightsError, match=r"does not fit.*features.5.weight|missing"):
        PerceptualLoss(tmp_path / "vgg.safetensors", num_layers=3)  # file has 2 layers only
    save_file({"conv.weight": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(WeightsError, match=r"other.safetensors: no torchvision VGG16"):
        PerceptualLoss(tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="slice_fraction"):
        PerceptualLoss(tmp_path / "vgg.safetensors", num_layers=2, slice_fraction=0)


# ---------------------------------------------------------------- masks


def test_dice_and_iou_closed_forms():
    p = torch.zeros(1, 1, 6, 6)
    t = torch.zeros(1, 1, 6, 6)
    p[..., 0:3, 0:4] = 1  # |P| = 12
    t[..., 1:4, 1:5] = 1  # |T| = 12, |P∩T| = 2 * 3 = 6
    assert dice_score(p, t).item() == pytest.approx(2 * 6 / 24)
    assert iou_score(p, t).item() == pytest.approx(6 / 18)
    logits = (p - 0.5) * 8
    assert dice_score(logits, t, logits=True).item() == pytest.approx(0.5)
    empty = torch.zeros(2, 1, 4, 4)
    assert torch.equal(dice_score(empty, empty), torch.ones(2, 1))
    assert torch.equal(iou_score(empty, empty), torch.ones(2, 1))
    assert dice_score(empty, t[..., :4, :4].expand(2, 1, 4, 4)).max() == 0


def _brute_force_sdm(mask: np.ndarray) -> np.ndarray:
    pts = np.argwhere(np.ones_like(mask, dtype=bool))
    fg, bg = np.argwhere(mask), np.argwhere(~mask)
    out = np.zeros(mask.shape)
    for q in pts:
        q = tuple(q)
        if mask[q]:  # inside: -(distance to the nearest background voxel - 1)
            out[q] = -(np.sqrt(((bg - q) ** 2).sum(1)).min() - 1)
        else:
            out[q] = np.sqrt(((fg - q) ** 2).sum(1)).min()
    return out


@pytest.mark.parametrize("spatial", [(7, 9), (5, 6, 4)])
def test_signed_distance_map_against_brute_force(spatial):
    rng = np.random.default_rng(0)
    mask = rng.random(spatial) > 0.6
    got = signed_distance_map(torch.from_numpy(mask).float()[None, None])[0, 0].numpy()
    np.testing.assert_allclose(got, _brute_force_sdm(mask), atol=1e-5)
    assert signed_distance_map(torch.zeros(1, 1, *spatial)).abs().max() == 0


def test_boundary_loss_prefers_the_true_mask():
    t = torch.zeros(1, 1, 16, 16)
    t[..., 4:10, 5:12] = 1
    right = (t - 0.5) * 20
    shifted = torch.roll(right, 3, dims=-1)
    assert boundary_loss(right, t) < boundary_loss(shifted, t)
    phi = signed_distance_map(t)
    torch.testing.assert_close(boundary_loss(right, t), (torch.sigmoid(right) * phi).mean())


def test_segmentation_loss_parts():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 1, 8, 8, generator=g)
    t = (torch.rand(2, 1, 8, 8, generator=g) > 0.5).float()
    out = SegmentationLoss(bce=1.0, dice=0.5, boundary=0.1)(logits, t)
    p = torch.sigmoid(logits)
    inter, denom = (p * t).sum((2, 3)), p.sum((2, 3)) + t.sum((2, 3))
    dice_ref = (1 - (2 * inter + 1e-5) / (denom + 1e-5)).mean()
    torch.testing.assert_close(out["bce"], F.binary_cross_entropy_with_logits(logits, t))
    torch.testing.assert_close(out["dice"], dice_ref)
    torch.testing.assert_close(out["boundary"], boundary_loss(logits, t))
    torch.testing.assert_close(out["loss"], out["bce"] + 0.5 * out["dice"] + 0.1 * out["boundary"])
    with pytest.raises(ValueError, match="weight boundary must be >= 0"):
        SegmentationLoss(boundary=-1)


def test_sample_slices_counts():
    for n, f in itertools.product((1, 7, 32), (0.1, 0.25, 1.0)):
        (idx,) = sample_slices([n], f, torch.Generator().manual_seed(0))
        assert len(idx) == max(1, round(f * n)) and len(set(idx.tolist())) == len(idx)
