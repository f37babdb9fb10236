"""ConditionedUNet, the one UNet wrapper: token conditioning (2D/3D), the Network protocol, and
MONAI's ControlNet inputs, checked against MONAI's own ``DiffusionModelUNet.forward`` with the
same weights and the residuals of a ``monai.networks.nets.ControlNet`` built from the same
config."""

import pytest
import torch
from monai.networks.nets import ControlNet, DiffusionModelUNet

from medgen.models import DDPM, ConditionedUNet, Network, schedules

NET = dict(
    channels=(16, 32), attention_levels=(False, True), norm_num_groups=8, num_head_channels=16
)


def _randomise(module, seed=0, std=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():  # MONAI zero-initialises the output conv (and ControlNet
            p.copy_(torch.randn(p.shape, generator=g) * std)  # its residual convs)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_shapes_and_token_effect(spatial_dims):
    net = ConditionedUNet(spatial_dims, 2, 2, num_tokens=5, **NET)
    _randomise(net)
    x = torch.randn((2, 2) + (8,) * spatial_dims)
    t = torch.tensor([10, 900])
    a = net(x, t, torch.tensor([0, 1]))
    b = net(x, t, torch.tensor([4, 1]))
    assert a.shape == x.shape
    assert not torch.allclose(a[0], b[0])  # the token conditions sample 0
    torch.testing.assert_close(a[1], b[1])  # and only sample 0
    a.sum().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


def test_token_out_of_range_and_missing_token_are_clear_errors():
    net = ConditionedUNet(
        2, 1, 1, num_tokens=3, channels=(16, 32), attention_levels=(False, False), norm_num_groups=8
    )
    x, t = torch.randn(1, 1, 8, 8), torch.tensor([1])
    with pytest.raises(ValueError, match=r"token out of range \[0, 3\)"):
        net(x, t, torch.tensor([3]))
    with pytest.raises(ValueError, match=r"token out of range \[0, 3\)"):
        net(x, t, torch.tensor([-1]))
    with pytest.raises(ValueError, match="built with token but got none"):
        net(x, t)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_tokens_equal_monai_class_embedding(spatial_dims):
    """The port of TokenConditionedUNet's reference: MONAI with ``num_class_embeds``."""
    ours = ConditionedUNet(spatial_dims, 2, 2, num_tokens=5, **NET)
    _randomise(ours, 3)
    ref = DiffusionModelUNet(spatial_dims=spatial_dims, in_channels=2, out_channels=2,
                             num_res_blocks=1, num_class_embeds=5, **NET)  # fmt: skip
    ref.load_state_dict(_monai_state(ours))
    x, t, tok = (
        torch.randn((3, 2) + (8,) * spatial_dims),
        torch.tensor([0, 4, 999]),
        torch.tensor([4, 0, 2]),
    )
    torch.testing.assert_close(ours(x, t, tok), ref(x, t, class_labels=tok), rtol=0, atol=0)


def test_is_a_network_and_takes_model_time_exactly():
    """Network protocol: float32 ``DDPM.model_time(t)`` gives the output integer t gives, for a
    bfloat16 network too (the time never passes through bf16)."""
    net = ConditionedUNet(2, 1, 1, num_tokens=2, **NET)
    assert isinstance(net, Network)
    _randomise(net)
    strategy = DDPM(schedules.cosine(1000))
    x, t, tok = torch.randn(2, 1, 8, 8), torch.tensor([750, 3]), torch.tensor([0, 1])
    assert torch.equal(net(x, strategy.model_time(t), tok), net(x, t, tok))
    net = net.to(torch.bfloat16)
    xb = x.to(torch.bfloat16)
    y750 = net(xb, strategy.model_time(torch.tensor([750, 750])), tok)
    y752 = net(xb, strategy.model_time(torch.tensor([752, 752])), tok)
    assert y750.dtype == torch.bfloat16 and not torch.equal(y750, y752)


# --- ControlNet inputs ---------------------------------------------------------------------


def _monai_state(ours: ConditionedUNet) -> dict:
    state = dict(ours.net.state_dict())
    if ours.token_embedding is not None:
        state["class_embedding.weight"] = ours.token_embedding.embedding.weight.detach()
    return state


def _pair_and_controlnet(spatial_dims, num_res_blocks):
    """Our UNet, MONAI's DiffusionModelUNet with the same weights, and a randomised ControlNet
    of the same config (``num_class_embeds`` for the token)."""
    ours = ConditionedUNet(spatial_dims, 2, 2, num_tokens=4, num_res_blocks=num_res_blocks, **NET)
    _randomise(ours, 1)
    common = dict(
        spatial_dims=spatial_dims, num_res_blocks=num_res_blocks, num_class_embeds=4, **NET
    )
    ref = DiffusionModelUNet(in_channels=2, out_channels=2, **common)
    ref.load_state_dict(_monai_state(ours))
    control = ControlNet(in_channels=2, conditioning_embedding_in_channels=1,
                         conditioning_embedding_num_channels=(16,), **common)  # fmt: skip
    _randomise(control, 2, std=0.3)  # residuals of the size of the features they join
    return ours, ref, control


@pytest.mark.parametrize("num_res_blocks", [1, (1, 2)], ids=["res1", "res1-2"])
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_controlnet_residuals_equal_monai(spatial_dims, num_res_blocks):
    ours, ref, control = _pair_and_controlnet(spatial_dims, num_res_blocks)
    s = (8,) * spatial_dims
    g = torch.Generator().manual_seed(4)
    x, hint = torch.randn(3, 2, *s, generator=g), torch.randn(3, 1, *s, generator=g)
    t, tok = torch.tensor([0, 421, 999]), torch.tensor([3, 0, 1])
    with torch.no_grad():
        down, mid = control(x, t, hint, conditioning_scale=0.7, class_labels=tok)
        assert len(down) == ours.num_down_residuals  # the count ControlNet returns
        plain = ours(x, t, tok)
        for kw in [  # both inputs, then each alone: each is applied at MONAI's place
            dict(down_block_additional_residuals=down, mid_block_additional_residual=mid),
            dict(down_block_additional_residuals=tuple(down)),
            dict(mid_block_additional_residual=mid),
        ]:
            y = ours(x, t, tok, **kw)
            torch.testing.assert_close(y, ref(x, t, class_labels=tok, **kw), rtol=0, atol=0)
            assert (y - plain).abs().max() > 0.1 * plain.abs().max()  # they matter


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_random_residuals_equal_monai(spatial_dims):
    """Residuals of the right shapes from anywhere (not only a ControlNet), no token."""
    ours = ConditionedUNet(spatial_dims, 1, 1, **NET)
    _randomise(ours, 5)
    ref = DiffusionModelUNet(spatial_dims=spatial_dims, in_channels=1, out_channels=1,
                             num_res_blocks=1, **NET)  # fmt: skip
    ref.load_state_dict(ours.net.state_dict())
    x, t = torch.randn((2, 1) + (8,) * spatial_dims), torch.tensor([7, 300])
    shapes = _skip_shapes(ours, x, t)
    g = torch.Generator().manual_seed(6)
    down = [torch.randn(shape, generator=g) for shape in shapes]
    mid = torch.randn(shapes[-1], generator=g)  # the middle block keeps the deepest shape
    kw = dict(down_block_additional_residuals=down, mid_block_additional_residual=mid)
    torch.testing.assert_close(ours(x, t, **kw), ref(x, t, **kw), rtol=0, atol=0)


def _skip_shapes(net: ConditionedUNet, x, t) -> list[tuple[int, ...]]:
    """The skip connections' shapes, read off a zero ControlNet's outputs."""
    control = ControlNet(spatial_dims=x.ndim - 2, in_channels=x.shape[1], num_res_blocks=1,
                         conditioning_embedding_num_channels=(16,), **NET)  # fmt: skip
    down, _ = control(x, t, torch.zeros(x.shape[0], 1, *x.shape[2:]))
    return [tuple(d.shape) for d in down]


def test_wrong_residuals_are_errors_naming_what_was_expected():
    ours, _, control = _pair_and_controlnet(2, 1)
    x, t, tok = torch.randn(2, 2, 8, 8), torch.tensor([1, 2]), torch.tensor([0, 1])
    down, mid = control(x, t, torch.randn(2, 1, 8, 8), class_labels=tok)
    n = ours.num_down_residuals
    # conv_in's output, 2 from level 0 (its resnet and its downsampler), 1 from level 1
    assert n == len(down) == 1 + 2 + 1
    with pytest.raises(ValueError, match=rf"expected {n} tensors .*got {n - 1}"):
        ours(x, t, tok, down_block_additional_residuals=down[:-1])
    with pytest.raises(ValueError, match=rf"expected {n} tensors .*got {n + 1}"):
        ours(x, t, tok, down_block_additional_residuals=[*down, down[-1]])
    with pytest.raises(TypeError, match="sequence of tensors"):
        ours(x, t, tok, down_block_additional_residuals=down[0])
    wrong = [*down[:-1], down[-1][:, :1]]
    with pytest.raises(ValueError, match=rf"residuals\[{n - 1}\]: expected shape \(2, 32, 4, 4\)"):
        ours(x, t, tok, down_block_additional_residuals=wrong)
    with pytest.raises(ValueError, match=r"mid_block_additional_residual: expected shape"):
        ours(x, t, tok, mid_block_additional_residual=mid[..., :2])
