"""ControlNet on ConditionedUNet, checked against MONAI's own ControlNet + DiffusionModelUNet
pipeline with the same weights."""

import pytest
import torch
from monai.networks.nets import ControlNet

from medgen.models import ConditionedUNet, Conditioning
from medgen.models.networks.controlnet import ControlBranch, ControlledUNet, bits_for, label_bits

ARCH = dict(channels=(16, 32), attention_levels=(False, True), num_head_channels=16)


def base_unet(dims=2, **kw):
    torch.manual_seed(0)
    net = ConditionedUNet(dims, 1, 1, **ARCH, **kw)
    for p in net.parameters():  # a "trained" base: MONAI zero-initialises its output conv
        p.data.add_(0.05 * torch.randn_like(p))
    return net.requires_grad_(False)


def perturb(module, scale=0.05):
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))


def inputs(dims=2, size=8, control_channels=2, halvings=0, b=2):
    g = torch.Generator().manual_seed(1)
    shape = (size,) * dims
    x = torch.randn((b, 1, *shape), generator=g)
    control = torch.randn((b, control_channels, *(s * 2**halvings for s in shape)), generator=g)
    return x, torch.tensor([3.0, 700.0])[:b], control


@pytest.mark.parametrize("dims", [2, 3])
def test_branch_equals_monai_controlnet_and_the_pair_equals_monais_pipeline(dims):
    base = base_unet(dims)
    branch = ControlBranch(base, 2)
    perturb(branch)  # zero convolutions non-zero, so the comparison sees them
    x, t, control = inputs(dims)
    monai = ControlNet(
        dims,
        1,
        num_res_blocks=1,
        norm_num_groups=16,
        conditioning_embedding_in_channels=2,
        conditioning_embedding_num_channels=(16,),
        **ARCH,
    )
    monai.load_state_dict(branch.net.state_dict())
    down_ref, mid_ref = monai(x, t, control)
    down, mid = branch(x, t, Conditioning(control=control))
    assert len(down) == len(down_ref) == base.num_down_residuals
    for a, b in zip(down, down_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(mid, mid_ref, rtol=0, atol=0)
    # the pair = MONAI's DiffusionModelUNet fed MONAI's ControlNet residuals
    expected = base.net(
        x, t, down_block_additional_residuals=down_ref, mid_block_additional_residual=mid_ref
    )
    out = ControlledUNet(base, branch)(x, t, Conditioning(control=control))
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    assert (out - base(x, t)).abs().max() > 1e-3  # the control does steer


def test_at_initialisation_the_controlled_unet_predicts_what_its_base_does():
    base = base_unet(num_tokens=6)
    pair = ControlledUNet(base, ControlBranch(base, 3))
    x, t, control = inputs(control_channels=3)
    token = torch.tensor([1, 4])
    out = pair(x, t, Conditioning(token=token, control=control))
    torch.testing.assert_close(out, base(x, t, token), rtol=0, atol=0)


def test_the_encoder_is_copied_from_the_base_and_a_foreign_base_is_refused():
    base = base_unet(num_tokens=6)
    branch = ControlBranch(base, 1)
    theirs = base.net.state_dict()
    copied = [k for k in branch.net.state_dict() if k in theirs]
    assert any(k.startswith("down_blocks.") for k in copied) and "time_embed.0.weight" in copied
    for k in copied:
        torch.testing.assert_close(branch.net.state_dict()[k], theirs[k], rtol=0, atol=0)
    torch.testing.assert_close(
        branch.token_embedding.embedding.weight, base.token_embedding.embedding.weight
    )
    other = ConditionedUNet(2, 1, 1, channels=(16, 32, 32), attention_levels=(False,) * 3)
    with pytest.raises(ValueError, match="does not match its ControlNet copy|size mismatch"):
        branch.copy_encoder(other)
    assert all(p.requires_grad for p in branch.parameters())
    assert not any(p.requires_grad for p in base.parameters())  # the base stays frozen


def test_only_the_branch_gets_gradients_and_tokens_reach_it():
    base = base_unet(num_tokens=6)
    branch = ControlBranch(base, 2)
    perturb(branch)
    pair = ControlledUNet(base, branch)
    x, t, control = inputs()
    out = pair(x, t, Conditioning(token=torch.tensor([0, 5]), control=control))
    out.square().mean().backward()
    assert all(p.grad is None for p in base.parameters())
    grads = [p.grad for p in branch.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    with torch.no_grad():
        down_a, _ = branch(x, t, Conditioning(token=torch.tensor([0, 5]), control=control))
        down_b, _ = branch(x, t, Conditioning(token=torch.tensor([2, 5]), control=control))
    diff = (down_a[-1] - down_b[-1]).flatten(1).abs().amax(1)
    assert diff[0] > 1e-4 and diff[1] == 0  # per sample: only sample 0's token changed


def test_a_control_map_at_twice_the_grid_needs_one_embedding_halving():
    base = base_unet()
    branch = ControlBranch(base, 1, embedding_channels=(8, 16))
    x, t, control = inputs(control_channels=1, halvings=1)
    down, _ = branch(x, t, Conditioning(control=control))
    assert down[0].shape == (2, 16, 8, 8)
    with pytest.raises(ValueError, match=r"control: spatial size \(8, 8\), expected \(16, 16\)"):
        branch(x, t, Conditioning(control=control[..., ::2, ::2]))


def test_bad_control_inputs_name_the_mismatch():
    base = base_unet()
    pair = ControlledUNet(base, ControlBranch(base, 2))
    x, t, control = inputs()
    with pytest.raises(ValueError, match="needs Conditioning.control"):
        pair(x, t, Conditioning())
    with pytest.raises(ValueError, match=r"control: expected \(B, 2, \*spatial\)"):
        pair(x, t, Conditioning(control=control[:, :1]))
    with pytest.raises(ValueError, match="got control but was built without it"):
        base(x, t, Conditioning(control=control))
    with pytest.raises(ValueError, match="control_channels must be >= 1"):
        ControlBranch(base, 0)


def test_label_bits_is_the_binary_expansion():
    labels = torch.tensor([0, 1, 5, 200, 255]).reshape(1, 1, 5)
    bits = label_bits(labels, 8)
    assert bits.shape == (1, 8, 5) and set(bits.unique().tolist()) == {-1.0, 1.0}
    weights = (2 ** torch.arange(8)).reshape(1, 8, 1)
    assert torch.equal((((bits + 1) / 2) * weights).sum(1, keepdim=True).long(), labels)
    assert bits[0, :, 2].tolist() == [1, -1, 1, -1, -1, -1, -1, -1]  # 5 = 0b101
    assert bits_for([0, 1]) == 1 and bits_for([0, 1, 2, 3]) == 2 and bits_for(range(256)) == 8
    with pytest.raises(ValueError, match="do not fit in 2 bits"):
        label_bits(labels, 2)
