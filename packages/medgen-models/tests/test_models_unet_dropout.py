"""Residual dropout in ConditionedUNet: checked against a hand-built DDPM / ADM residual block
(norm1 -> act -> conv1 -> + temb -> norm2 -> act -> dropout -> conv2 -> + skip) on MONAI's own
block parameters, against the same network without dropout (eval mode, state dicts), and for
the copies and recomputations training makes (EMA deepcopy, gradient checkpointing)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from monai.networks.nets.diffusion_model_unet import DiffusionUNetResnetBlock

from medgen.models import ConditionedUNet
from medgen.models.networks.residual_dropout import (
    ResidualDropout,
    add_residual_dropout,
    dropout_hooks,
    residual_blocks,
)

NET = dict(channels=(16, 32), attention_levels=(False, False), norm_num_groups=8)


def _randomise(module, seed=0, std=0.1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():  # MONAI zero-initialises conv2 and the output conv
            p.copy_(torch.randn(p.shape, generator=g) * std)


def _pair(p, spatial_dims=2, **kw):
    """A network with dropout p and the same network (same weights) without dropout."""
    torch.manual_seed(0)
    a = ConditionedUNet(spatial_dims, 2, 2, dropout=p, **NET, **kw)
    b = ConditionedUNet(spatial_dims, 2, 2, **NET, **kw)
    _randomise(a)
    b.load_state_dict(a.state_dict())
    return a, b


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_eval_mode_is_bitwise_the_network_without_dropout(spatial_dims):
    a, b = _pair(0.3, spatial_dims)
    x = torch.randn((2, 2) + (8,) * spatial_dims)
    t = torch.tensor([3.0, 700.0])
    a.eval(), b.eval()
    assert torch.equal(a(x, t), b(x, t))
    a.train(), b.train()  # and in training mode it does drop (the test above can fail)
    torch.manual_seed(1)
    assert not torch.allclose(a(x, t), b(x, t))


def _hand_built(block, x, emb, p):
    """The DDPM / ADM / diffusers ResnetBlock2D forward with MONAI's block parameters."""
    h = F.silu(F.group_norm(x, block.norm1.num_groups, block.norm1.weight, block.norm1.bias,
                            block.norm1.eps))  # fmt: skip
    h = F.conv2d(h, block.conv1.conv.weight, block.conv1.conv.bias, padding=1)
    temb = F.linear(F.silu(emb), block.time_emb_proj.weight, block.time_emb_proj.bias)
    h = h + temb[:, :, None, None]
    h = F.silu(F.group_norm(h, block.norm2.num_groups, block.norm2.weight, block.norm2.bias,
                            block.norm2.eps))  # fmt: skip
    h = F.dropout(h, p, training=True)
    h = F.conv2d(h, block.conv2.conv.weight, block.conv2.conv.bias, padding=1)
    if isinstance(block.skip_connection, torch.nn.Identity):
        skip = x
    else:
        skip = F.conv2d(x, block.skip_connection.conv.weight, block.skip_connection.conv.bias)
    return skip + h


@pytest.mark.parametrize("which", ["same width", "wider (1x1 skip conv)"])
def test_train_mode_block_equals_the_hand_built_residual_block(which):
    p = 0.25
    net, _ = _pair(p)
    net.train()
    blocks = residual_blocks(net.net)
    block = next(b for b in blocks if (b.channels == b.out_channels) == (which == "same width"))
    x = torch.randn(2, block.channels, 8, 8)
    emb = torch.randn(2, block.emb_channels)
    torch.manual_seed(5)
    ours = block(x, emb)
    torch.manual_seed(5)
    ref = _hand_built(block, x, emb, p)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    torch.manual_seed(5)
    assert not torch.allclose(ours, _hand_built(block, x, emb, 0.0))  # the dropout mattered


def test_p_near_one_zeroes_conv2s_input():
    net, _ = _pair(1 - 1e-7)
    net.train()
    seen = []
    hooks = [b.conv2.register_forward_hook(lambda m, i, o: seen.append((m, o)))
             for b in residual_blocks(net.net)]  # fmt: skip
    torch.manual_seed(0)
    net(torch.randn(2, 2, 8, 8), torch.tensor([3.0, 700.0]))
    for h in hooks:
        h.remove()
    assert len(seen) == len(residual_blocks(net.net))
    for conv, out in seen:  # a convolution of zeros is its bias
        bias = conv.conv.bias.view(1, -1, 1, 1).expand_as(out)
        assert torch.equal(out, bias)


@pytest.mark.parametrize("num_res_blocks", [1, 2])
def test_one_dropout_per_residual_block(num_res_blocks):
    net = ConditionedUNet(2, 1, 1, num_res_blocks=num_res_blocks, dropout=0.1, **NET)
    levels = len(NET["channels"])
    # down: num_res_blocks per level; middle: 2; up: num_res_blocks + 1 per level (MONAI)
    expected = levels * num_res_blocks + 2 + levels * (num_res_blocks + 1)
    n_blocks = sum(isinstance(m, DiffusionUNetResnetBlock) for m in net.modules())
    assert n_blocks == expected == net.dropout_blocks == len(dropout_hooks(net))
    assert all(h.p == 0.1 for h in dropout_hooks(net))
    assert ConditionedUNet(2, 1, 1, **NET).dropout_blocks == 0
    assert dropout_hooks(ConditionedUNet(2, 1, 1, **NET)) == []


@pytest.mark.parametrize("p", [1.0, -0.1, 1.5])
def test_invalid_probability_is_a_value_error(p):
    with pytest.raises(ValueError, match=r"dropout: expected a probability in \[0, 1\)"):
        ConditionedUNet(2, 1, 1, dropout=p, **NET)


def test_registering_twice_is_refused():
    net = ConditionedUNet(2, 1, 1, dropout=0.1, **NET)
    with pytest.raises(ValueError, match="already has residual dropout"):
        add_residual_dropout(net.net, 0.2)


def test_state_dicts_load_both_ways_with_unchanged_keys():
    with_p, without = _pair(0.1)
    assert list(with_p.state_dict()) == list(without.state_dict())
    fresh_with = ConditionedUNet(2, 2, 2, dropout=0.1, **NET)
    fresh_with.load_state_dict(without.state_dict(), strict=True)  # an old checkpoint, new net
    fresh_without = ConditionedUNet(2, 2, 2, **NET)
    fresh_without.load_state_dict(with_p.state_dict(), strict=True)
    x, t = torch.randn(1, 2, 8, 8), torch.tensor([10.0])
    assert torch.equal(fresh_with.eval()(x, t), without.eval()(x, t))


def test_an_eval_mode_deepcopy_does_not_drop_and_keeps_its_own_hooks():
    """EMA keeps ``copy.deepcopy(net).eval()``: the copy must read its own training flag."""
    net, plain = _pair(0.5)
    ema = copy.deepcopy(net).eval()
    net.train()
    x, t = torch.randn(2, 2, 8, 8), torch.tensor([3.0, 700.0])
    assert torch.equal(ema(x, t), plain.eval()(x, t))
    assert all(isinstance(h, ResidualDropout) for h in dropout_hooks(ema))
    assert not set(map(id, dropout_hooks(ema))) & set(map(id, dropout_hooks(net)))
    torch.manual_seed(0)
    assert not torch.allclose(net(x, t), ema(x, t))  # the original still drops


def test_gradient_checkpointing_replays_the_same_dropout_masks():
    a, _ = _pair(0.3)
    b = ConditionedUNet(2, 2, 2, dropout=0.3, gradient_checkpointing=True, **NET)
    b.load_state_dict(a.state_dict())
    x, t = torch.randn(2, 2, 8, 8), torch.tensor([3.0, 700.0])
    grads = []
    for net in (a, b):
        net.train().zero_grad()
        torch.manual_seed(3)
        net(x, t).square().mean().backward()
        grads.append([p.grad.clone() for p in net.parameters()])
    for ga, gb in zip(*grads, strict=True):
        torch.testing.assert_close(ga, gb)


def test_the_readme_example_runs(capsys):
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text[text.index("**Residual dropout.**") :]
    block = re.findall(r"```python\n(.*?)```", section, flags=re.S)[0]
    exec(compile(block, "README.md residual dropout", "exec"), {"__name__": "readme"})
    assert capsys.readouterr().out.strip() == "8"
