import pytest
import torch

from medgen.models import TokenConditionedUNet


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_shapes_and_token_effect(spatial_dims):
    torch.manual_seed(0)
    net = TokenConditionedUNet(
        spatial_dims,
        2,
        2,
        num_tokens=5,
        channels=(16, 32),
        attention_levels=(False, True),
        norm_num_groups=8,
        num_head_channels=16,
    )
    for p in net.parameters():  # MONAI zero-initialises the output conv: make it non-trivial
        torch.nn.init.normal_(p, std=0.05)
    x = torch.randn((2, 2) + (8,) * spatial_dims)
    t = torch.tensor([10, 900])
    a = net(x, t, torch.tensor([0, 1]))
    b = net(x, t, torch.tensor([4, 1]))
    assert a.shape == x.shape
    assert not torch.allclose(a[0], b[0])  # the token conditions sample 0
    torch.testing.assert_close(a[1], b[1])  # and only sample 0
    a.sum().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


def test_token_out_of_range_is_a_clear_error():
    net = TokenConditionedUNet(
        2, 1, 1, num_tokens=3, channels=(16, 32), attention_levels=(False, False), norm_num_groups=8
    )
    with pytest.raises(ValueError, match=r"token out of range \[0, 3\)"):
        net(torch.randn(1, 1, 8, 8), torch.tensor([1]), torch.tensor([3]))
