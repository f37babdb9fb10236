"""DiT against its peers: diffusers' ``DiTTransformer2DModel`` with the same weights (2D, class
tokens), diffusers' sin-cos position and timestep embeddings, and the paper's parameter counts
of DiT-S/2, B/2, L/2, XL/2 (Peebles & Xie 2023, Table 4: 33M / 130M / 458M / 675M)."""

import pytest
import torch
from diffusers import DiTTransformer2DModel
from diffusers.models.embeddings import get_2d_sincos_pos_embed, get_timestep_embedding

from medgen.models import DiT
from medgen.models.networks.transformer import sincos_position_embedding, timestep_features


def _randomise(module, seed=0, std=0.1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)


def _from_diffusers(ref: DiTTransformer2DModel) -> dict:
    """diffusers' state dict under our names. diffusers gives every block its own time + class
    embedder (the original DiT shares one); the caller ties them before calling this."""
    sd = ref.state_dict()
    emb = "transformer_blocks.0.norm1.emb."
    out = {
        "patch_embed.proj.weight": sd["pos_embed.proj.weight"],
        "patch_embed.proj.bias": sd["pos_embed.proj.bias"],
        "embed.time_mlp.0.weight": sd[emb + "timestep_embedder.linear_1.weight"],
        "embed.time_mlp.0.bias": sd[emb + "timestep_embedder.linear_1.bias"],
        "embed.time_mlp.2.weight": sd[emb + "timestep_embedder.linear_2.weight"],
        "embed.time_mlp.2.bias": sd[emb + "timestep_embedder.linear_2.bias"],
        "embed.token_embedding.embedding.weight": sd[emb + "class_embedder.embedding_table.weight"],
        "final_layer.adaLN_modulation.1.weight": sd["proj_out_1.weight"],
        "final_layer.adaLN_modulation.1.bias": sd["proj_out_1.bias"],
        "final_layer.linear.weight": sd["proj_out_2.weight"],
        "final_layer.linear.bias": sd["proj_out_2.bias"],
    }
    for i in range(len(ref.transformer_blocks)):
        d, o = f"transformer_blocks.{i}.", f"blocks.{i}."
        pairs = {
            "norm1.linear": "adaLN_modulation.1",
            "attn1.to_out.0": "attn.proj",
            "ff.net.0.proj": "mlp.fc1",
            "ff.net.2": "mlp.fc2",
        }
        for src, dst in pairs.items():
            for kind in ("weight", "bias"):
                out[f"{o}{dst}.{kind}"] = sd[f"{d}{src}.{kind}"]
        for kind in ("weight", "bias"):
            qkv = [sd[f"{d}attn1.to_{n}.{kind}"] for n in "qkv"]
            out[f"{o}attn.qkv.{kind}"] = torch.cat(qkv, dim=0)
    return out


def test_equals_diffusers_dit_for_the_same_weights():
    """Tolerance 1e-5: the same float32 operations in the same order; only our fused qkv
    matmul may round differently from diffusers' three (~1e-7 relative per element)."""
    torch.manual_seed(0)
    ref = DiTTransformer2DModel(
        num_attention_heads=4,
        attention_head_dim=16,
        in_channels=3,
        out_channels=6,
        num_layers=2,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=5,
        norm_eps=1e-6,
    ).eval()  # fmt: skip  (eval: no random class dropout; norm_eps as the paper's 1e-6)
    _randomise(ref)
    with torch.no_grad():  # one shared time + class embedder, as in the paper
        first = ref.transformer_blocks[0].norm1.emb
        for block in ref.transformer_blocks[1:]:
            block.norm1.emb.load_state_dict(first.state_dict())
    ours = DiT(2, 3, 6, patch_size=2, hidden_size=64, depth=2, num_heads=4, num_tokens=5,
               null_token=True)  # fmt: skip
    missing = ours.load_state_dict(_from_diffusers(ref), strict=True)
    assert not missing.missing_keys and not missing.unexpected_keys
    x = torch.randn(3, 3, 8, 8)
    t = torch.tensor([0.0, 421.0, 999.0])
    labels = torch.tensor([0, 4, 5])  # 5: the null (guidance) row
    expected = ref(x, timestep=t, class_labels=labels).sample
    got = ours(x, t, labels)
    assert expected.abs().max() > 0.1  # a non-trivial output
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("grid", [4, 8])
def test_position_embedding_equals_diffusers_in_2d(grid):
    ref = get_2d_sincos_pos_embed(64, grid, base_size=grid)
    torch.testing.assert_close(sincos_position_embedding(64, (grid, grid)), ref.float())


def test_position_embedding_3d_axes_and_dims():
    emb = sincos_position_embedding(66, (2, 3, 4))  # 66 = 3 axes x 22 features
    assert emb.shape == (24, 66)
    grid = emb.reshape(2, 3, 4, 66)
    # the first 22 features depend on the last axis only, then the middle, then the first
    assert torch.equal(grid[0, 0, :, :22], grid[1, 2, :, :22])
    assert torch.equal(grid[0, :, 0, 22:44], grid[1, :, 3, 22:44])
    assert torch.equal(grid[:, 0, 0, 44:], grid[:, 2, 3, 44:])
    # closed form of one feature: sin(position * 10000^0) = sin(position)
    torch.testing.assert_close(grid[:, 0, 0, 44], torch.sin(torch.arange(2.0)))
    padded = sincos_position_embedding(64, (2, 3, 4))  # 64 = 3 x 20 + 4 zero features
    assert padded.shape == (24, 64) and torch.equal(padded[:, 60:], torch.zeros(24, 4))


@pytest.mark.parametrize("shift", [0, 1])
def test_timestep_features_equal_diffusers(shift):
    t = torch.tensor([0.0, 1.0, 37.5, 999.0])
    ref = get_timestep_embedding(t, 256, flip_sin_to_cos=True, downscale_freq_shift=shift)
    torch.testing.assert_close(timestep_features(t, 256, freq_shift=shift), ref, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("name", "paper"), [("S/2", 33e6), ("B/2", 130e6), ("L/2", 458e6), ("XL/2", 675e6)]
)
def test_parameter_counts_match_the_paper(name, paper):
    """ImageNet 256 latents: 32x32x4 in, learned sigma (8 out), 1000 classes + the null class.
    Built on the meta device: no memory is allocated for the weights."""
    with torch.device("meta"):
        net = DiT.variant(name, 2, 4, 8, num_tokens=1000, null_token=True)
    count = sum(p.numel() for p in net.parameters())
    assert abs(count - paper) / paper < 0.01, (name, count)
