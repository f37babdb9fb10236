"""Conditioning: tokens, modes, FiLM, priors, and their wiring into MONAI's DiffusionModelUNet
(checked against MONAI's own forward, with MONAI's own class embedding as the token reference)."""

import pytest
import torch
from monai.networks.nets import DiffusionModelUNet

from medgen.models.conditioning import (
    Conditioning,
    FiLM,
    ModeEmbedding,
    TokenEmbedding,
    concat_priors,
    resize_prior,
    validate_token_count,
    zbin_class_token,
)
from medgen.models.networks.unet import ConditionedUNet

NET = dict(
    channels=(16, 32), attention_levels=(False, True), norm_num_groups=8, num_head_channels=16
)


def _randomise(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():  # MONAI zero-initialises the output conv
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)


# --- tokens ------------------------------------------------------------------------------


def test_zbin_class_token_values_and_range():
    tok = zbin_class_token(torch.tensor([0, 4, 2]), torch.tensor([0, 0, 3]), n_bins=5)
    assert tok.tolist() == [0, 4, 17]
    with pytest.raises(ValueError, match=r"z_bin must lie in \[0, 5\)"):
        zbin_class_token(torch.tensor([5]), torch.tensor([0]), n_bins=5)


def test_token_count_validated_against_data_names_expected_and_got():
    validate_token_count(10, torch.tensor([0, 9]), n_bins=5, n_classes=2)
    with pytest.raises(
        ValueError, match=r"expected 5 z-bins x 2 classes = 10 tokens, got num_tokens=8"
    ):
        validate_token_count(8, n_bins=5, n_classes=2)
    with pytest.raises(ValueError, match=r"needs at least 12 tokens .* got num_tokens=10"):
        validate_token_count(10, torch.tensor([3, 11]))
    net = ConditionedUNet(
        2, 1, 1, num_tokens=6, channels=(16, 32), attention_levels=(False, False), norm_num_groups=8
    )
    with pytest.raises(
        ValueError, match=r"expected 4 z-bins x 2 classes = 8 tokens, got num_tokens=6"
    ):
        net.validate_tokens(n_bins=4, n_classes=2)


def test_token_embedding_null_row_and_range():
    emb = TokenEmbedding(4, 8, null_token=True)
    assert emb.null_index == 4 and emb.embedding.num_embeddings == 5
    torch.testing.assert_close(emb(torch.tensor([4, 1])), emb.embedding.weight[[4, 1]])
    with pytest.raises(ValueError, match=r"token out of range \[0, 5\)"):
        emb(torch.tensor([5]))
    with pytest.raises(ValueError, match="without a null token"):
        _ = TokenEmbedding(4, 8).null_index


# --- mode --------------------------------------------------------------------------------


def test_mode_embedding_zero_init_gets_gradient_and_checks_range():
    emb = ModeEmbedding(4, 6)
    out = emb(torch.tensor([0, 3, 3]))
    assert torch.count_nonzero(out) == 0
    (out * torch.arange(18.0).reshape(3, 6)).sum().backward()
    g = emb.embedding.weight.grad
    torch.testing.assert_close(g[3], torch.arange(6.0, 12.0) + torch.arange(12.0, 18.0))
    assert torch.count_nonzero(g[1]) == 0
    with pytest.raises(ValueError, match=r"mode out of range \[0, 4\): got 0..4"):
        emb(torch.tensor([0, 4]))


# --- FiLM --------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 3), (2, 3, 4, 5), (2, 3, 2, 4, 5)], ids=["vec", "2d", "3d"])
def test_film_identity_at_init_then_closed_form(shape):
    film = FiLM(cond_dim=2, num_channels=3, hidden=4)
    h = torch.randn(shape)
    cond = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    torch.testing.assert_close(film(h, cond), h)  # zero-initialised last layer
    with torch.no_grad():
        first, last = film.mlp[0], film.mlp[-1]
        first.weight.copy_(torch.tensor([[1.0, 0], [0, 1], [0, 0], [0, 0]]))
        first.bias.zero_()
        last.weight.zero_()
        last.bias.copy_(torch.tensor([0.5, -1.0, 0.0, 1.0, 2.0, 3.0]))
        last.weight[0, 0] = 1.0  # gamma_0 += silu(cond_0)
    silu = cond[:, 0] * torch.sigmoid(cond[:, 0])
    gamma = torch.tensor([0.5, -1.0, 0.0]).repeat(2, 1)
    gamma[:, 0] += silu
    beta = torch.tensor([1.0, 2.0, 3.0]).repeat(2, 1)
    view = (2, 3) + (1,) * (len(shape) - 2)
    expected = h * (1 + gamma.reshape(view)) + beta.reshape(view)
    torch.testing.assert_close(film(h, cond), expected)
    with pytest.raises(ValueError, match=r"must be \(B, 2\)"):
        film(h, torch.zeros(2, 3))


# --- priors ------------------------------------------------------------------------------


def test_concat_priors_nearest_mask_and_linear_thick_slices():
    x = torch.randn(2, 4, 8, 6, 6)  # thin-slice latent grid, depth 8
    mask = torch.randint(0, 3, (2, 1, 4, 3, 3))  # integer labels at half resolution
    depth = torch.arange(4.0).reshape(1, 1, 4, 1, 1).expand(2, 2, 4, 6, 6)  # linear ramp in z
    out = concat_priors(x, {"mask": mask, "thick": depth}, modes=["nearest", "linear"])
    assert out.shape == (2, 7, 8, 6, 6)
    torch.testing.assert_close(out[:, :4], x, rtol=0, atol=0)
    idx = torch.arange(8) // 2, torch.arange(6) // 2
    ref_mask = mask[:, :, idx[0]][:, :, :, idx[1]][:, :, :, :, idx[1]].float()
    torch.testing.assert_close(out[:, 4:5], ref_mask, rtol=0, atol=0)
    # half-pixel-centred linear upsampling of 0,1,2,3 along z: (k + 0.5) / 2 - 0.5, clamped
    z = ((torch.arange(8.0) + 0.5) / 2 - 0.5).clamp(0, 3)
    torch.testing.assert_close(out[0, 5, :, 0, 0], z)
    assert set(out[:, 4].unique().tolist()) <= {0.0, 1.0, 2.0}  # labels survive nearest


def test_concat_priors_errors_name_the_prior():
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(ValueError, match=r"prior 'seg': batch 3 != sample batch 2"):
        concat_priors(x, {"seg": torch.zeros(3, 1, 8, 8)})
    with pytest.raises(ValueError, match=r"prior 0: shape \(2, 1, 8, 8, 8\) has 5 dims"):
        concat_priors(x, [torch.zeros(2, 1, 8, 8, 8)])
    with pytest.raises(ValueError, match=r"expected 2 prior channels in total, got 1"):
        concat_priors(x, {"seg": torch.zeros(2, 1, 4, 4)}, expected_channels=2)
    with pytest.raises(ValueError, match="non-finite"):
        concat_priors(x, [torch.full((2, 1, 8, 8), float("nan"))])
    with pytest.raises(ValueError, match="resize mode"):
        resize_prior(torch.zeros(1, 1, 4, 4), (8, 8), "cubic")


# --- the conditioned UNet ------------------------------------------------------------------


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_unconditioned_forward_equals_monai(spatial_dims):
    torch.manual_seed(0)
    ours = ConditionedUNet(spatial_dims, 2, 2, **NET)
    _randomise(ours)
    ref = DiffusionModelUNet(
        spatial_dims=spatial_dims, in_channels=2, out_channels=2, num_res_blocks=1, **NET
    )
    ref.load_state_dict(ours.net.state_dict())
    x, t = torch.randn((2, 2) + (8,) * spatial_dims), torch.tensor([3, 870])
    torch.testing.assert_close(ours(x, t), ref(x, t), rtol=0, atol=0)  # README: exact


def test_token_conditioning_equals_monai_class_embedding():
    ours = ConditionedUNet(2, 1, 1, num_tokens=6, **NET)
    _randomise(ours, 1)
    ref = DiffusionModelUNet(
        spatial_dims=2, in_channels=1, out_channels=1, num_res_blocks=1, num_class_embeds=6, **NET
    )
    state = dict(ours.net.state_dict())
    state["class_embedding.weight"] = ours.token_embedding.embedding.weight.detach()
    ref.load_state_dict(state)
    x, t, tok = torch.randn(3, 1, 8, 8), torch.tensor([0, 500, 999]), torch.tensor([5, 0, 2])
    torch.testing.assert_close(ours(x, t, tok), ref(x, t, class_labels=tok), rtol=0, atol=0)
    torch.testing.assert_close(ours(x, t, Conditioning(token=tok)), ours(x, t, tok))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_every_conditioning_acts_per_sample_and_trains(spatial_dims):
    net = ConditionedUNet(
        spatial_dims, 1, 1, num_tokens=4, num_modes=3, size_bins_dim=5, prior_channels=2,
        prior_modes=["nearest", "linear"], **NET,
    )  # fmt: skip
    s = (8,) * spatial_dims
    x, t = torch.randn(2, 1, *s), torch.tensor([10, 600])
    base = dict(
        token=torch.tensor([1, 2]), mode=torch.tensor([0, 2]), size_bins=torch.rand(2, 5),
        priors={"seg": torch.randint(0, 2, (2, 1, *s)), "thick": torch.randn(2, 1, *(4,) * spatial_dims)},
    )  # fmt: skip
    y0 = net(x, t, Conditioning(**base))
    # zero-initialised mode embedding and FiLM: changing them does nothing yet
    same = dict(base, mode=torch.tensor([1, 2]), size_bins=torch.rand(2, 5))
    torch.testing.assert_close(net(x, t, Conditioning(**same)), y0)
    _randomise(net, 2)
    y0 = net(x, t, Conditioning(**base))
    assert y0.shape == x.shape
    flipped = base["priors"]["seg"].clone()
    flipped[0] = 1 - flipped[0]  # sample 0's mask inverted, sample 1's kept
    size_bins = base["size_bins"].clone()
    size_bins[0] += 1
    for name, value in [
        ("token", torch.tensor([3, 2])),
        ("mode", torch.tensor([1, 2])),
        ("size_bins", size_bins),
        ("priors", dict(base["priors"], seg=flipped)),
    ]:
        y = net(x, t, Conditioning(**dict(base, **{name: value})))
        assert not torch.allclose(y[0], y0[0]), name  # sample 0's condition changed
        torch.testing.assert_close(y[1], y0[1], msg=name)  # sample 1's did not
    y0.square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing, missing


def test_conditioning_fields_must_match_the_network():
    net = ConditionedUNet(2, 1, 1, num_tokens=4, **NET)
    x, t = torch.randn(1, 1, 8, 8), torch.tensor([1])
    with pytest.raises(ValueError, match="built with token but got none"):
        net(x, t)
    with pytest.raises(ValueError, match="got mode but was built without it"):
        net(x, t, Conditioning(token=torch.tensor([0]), mode=torch.tensor([0])))
    with pytest.raises(ValueError, match=r"token out of range \[0, 4\)"):
        net(x, t, torch.tensor([4]))
    with pytest.raises(
        ValueError, match=r"expected 3 z-bins x 2 classes = 6 tokens, got num_tokens=4"
    ):
        net.validate_tokens(n_bins=3, n_classes=2)


def test_null_token_row_is_accepted_for_guidance():
    net = ConditionedUNet(2, 1, 1, num_tokens=4, null_token=True, **NET)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([1, 1])
    null = net.token_embedding.null_index  # the learned unconditional row, index 4
    assert null == 4
    _randomise(net)
    y = net(x, t, torch.tensor([null, 0]))
    assert not torch.allclose(y[0], net(x, t, torch.tensor([0, 0]))[0])
    with pytest.raises(ValueError, match=r"token out of range \[0, 5\)"):
        net(x, t, torch.tensor([5, 0]))


def test_timesteps_enter_as_float32_even_for_a_bfloat16_network():
    """diffusers issue 9405: t = 750 rounded through bf16 becomes 752 before the embedding."""
    assert torch.tensor(750.0).to(torch.bfloat16).item() == 752.0
    net = ConditionedUNet(2, 1, 1, num_tokens=2, **NET).to(torch.bfloat16)
    cond = Conditioning(token=torch.tensor([0]))
    e750 = net.embedding(torch.tensor([750]), cond, torch.bfloat16)
    e752 = net.embedding(torch.tensor([752]), cond, torch.bfloat16)
    assert not torch.equal(e750, e752)
    y = net(torch.randn(1, 1, 8, 8, dtype=torch.bfloat16), torch.tensor([750]), {"token": [0]})
    assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()
