"""U-ViT and HDiT beyond the shared contract: U-ViT's parameter counts against the paper
(Bao et al. 2023, Table 1: S 44M, S-Deep 58M, M 131M, L 287M), the token merge / split of
HDiT against a closed form, and HDiT's sequence length per level."""

import pytest
import torch

from medgen.models import HDiT, UViT
from medgen.models.networks.transformer import merge_tokens, split_tokens, unpatchify


@pytest.mark.parametrize(
    ("name", "paper"), [("S/2", 44e6), ("S-Deep/2", 58e6), ("M/2", 131e6), ("L/2", 287e6)]
)
def test_uvit_parameter_counts_match_the_paper(name, paper):
    """CIFAR-10-like input (3 channels, patch 2, no classes). The paper learns its position
    embedding (+0.1-0.3M); ours is fixed sin-cos. Built on the meta device."""
    with torch.device("meta"):
        net = UViT.variant(name, 2, 3)
    count = sum(p.numel() for p in net.parameters())
    assert abs(count - paper) / paper < 0.01, (name, count)


def test_uvit_prepends_time_and_token_and_ends_in_a_3x3_conv():
    net = UViT(2, 1, patch_size=2, hidden_size=32, depth=3, num_heads=2, num_tokens=3)
    seen = []
    net.mid_block.register_forward_hook(lambda m, a, out: seen.append(out.shape))
    net(torch.randn(2, 1, 8, 8), torch.tensor([1.0, 2.0]), torch.tensor([0, 2]))
    assert seen == [(2, 2 + 16, 32)]  # time + token + 4x4 patches
    assert net.final_layer.kernel_size == (3, 3) and net.in_blocks[0].attn.qkv.bias is None
    assert len(net.in_blocks) == len(net.out_blocks) == 1
    assert all(b.skip_linear is not None for b in net.out_blocks)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_merge_groups_neighbours_and_split_inverts_it(spatial_dims):
    grid = (4, 6) if spatial_dims == 2 else (2, 4, 6)
    d = 3
    x = torch.randn(2, d, *grid)
    tokens = x.flatten(2).transpose(1, 2)  # (B, N, D) row-major over the grid
    merged, half = merge_tokens(tokens, grid)
    assert half == tuple(g // 2 for g in grid)
    assert merged.shape == (2, x[0, 0].numel() // 2**spatial_dims, 2**spatial_dims * d)
    # closed form: coarse token 0 holds the 2x2(x2) corner block, features (offsets..., D)
    corner = x[(slice(None), slice(None)) + (slice(0, 2),) * spatial_dims]
    expected = corner.permute(0, *range(2, 2 + spatial_dims), 1).reshape(2, -1)
    torch.testing.assert_close(merged[:, 0], expected, rtol=0, atol=0)
    back, full = split_tokens(merged, half)
    assert full == grid and torch.equal(back, tokens)


def test_unpatchify_inverts_patch_flattening():
    x = torch.randn(2, 3, 4, 6, 8)
    p = 2
    # patches with features (p, p, p, C), like the linear head's output layout
    h = x.reshape(2, 3, 2, p, 3, p, 4, p).permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(2, 24, -1)
    assert torch.equal(unpatchify(h, (2, 3, 4), p, 3), x)


def test_hdit_runs_most_blocks_on_short_sequences():
    net = HDiT(3, 1, patch_size=2, hidden_size=32, num_heads=2, level_depths=(1, 2, 3, 2, 1),
               level_widths=(32, 64, 64))  # fmt: skip
    lengths = []
    for stage in (*net.down, net.mid, *net.up):
        for block in stage:
            block.register_forward_hook(lambda m, a, out: lengths.append(out.shape[1:]))
    net(torch.randn(1, 1, 16, 16, 16), torch.tensor([3.0]))
    # 8^3 = 512 tokens at level 0, 64 at level 1, 8 in the bottleneck; widths 32, 64, 64
    assert lengths == [(512, 32), (64, 64), (64, 64), (8, 64), (8, 64), (8, 64),
                       (64, 64), (64, 64), (512, 32)]  # fmt: skip
    assert net.input_multiple == 8
