"""DC-AE (medgen.models.autoencoders.dcae): exact equality with diffusers' AutoencoderDC in 2D,
3D pixel (un)shuffle as an exact inverse pair and permutation, per-axis factors and the
seed-002 "24 slices" refusal, deterministic encode, the DC-AE 1.5 structured latent, and the
variant table against diffusers' published layouts."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from medgen.models.autoencoders.dcae import (
    DCAE_VARIANTS,
    DCAutoencoder,
    load_diffusers_state_dict,
    sample_channel_counts,
    structured_channel_mask,
)
from medgen.models.autoencoders.dcae_blocks import pixel_shuffle, pixel_unshuffle
from medgen.models.autoencoders.protocol import Autoencoder, AutoencoderOutput
from medgen.models.autoencoders.weights import MissingWeightsError, WeightsError

diffusers = pytest.importorskip("diffusers")

# Same ops in the same order and memory layout as diffusers, so equality is expected to be
# exact (measured: 0.0 for every config and mode). The bound, 1e-6 of the output's largest
# magnitude (~8 float32 ulp), leaves room for a BLAS picking another kernel on other hardware
# and nothing more: a changed reduction order alone (a contiguous instead of a channels-last
# input to a matmul) gave 2e-7 relative here, a real bug gives 1e-2 or more.
RTOL = 1e-6

CONFIGS = {
    # ResBlocks only, stage 0 with layers (plain conv_in / conv_out), RMSNorm everywhere
    "resblock": dict(
        encoder_block_out_channels=(8, 16, 32),
        decoder_block_out_channels=(8, 16, 32),
        encoder_layers_per_block=(1, 1, 2),
        decoder_layers_per_block=(1, 2, 1),
        attention_head_dim=8,
    ),
    # the published layout in small: stage 0 empty (folded resampling), BatchNorm + ReLU in the
    # ResBlock stages, EfficientViT stages with multi-scale linear attention
    "published_like": dict(
        encoder_block_out_channels=(8, 16, 32, 32),
        decoder_block_out_channels=(8, 16, 32, 32),
        encoder_layers_per_block=(0, 1, 1, 1),
        decoder_layers_per_block=(0, 2, 1, 1),
        encoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock", "EfficientViTBlock"),
        decoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock", "EfficientViTBlock"),
        encoder_qkv_multiscales=((), (), (3,), (5,)),
        decoder_qkv_multiscales=((), (), (5,), (3, 5)),
        decoder_norm_types=("batch_norm", "batch_norm", "rms_norm", "rms_norm"),
        decoder_act_fns=("relu", "relu", "silu", "silu"),
        attention_head_dim=8,
    ),
    # SANA-like: strided-conv down, interpolation up, no in/out shortcuts, and a deepest stage
    # small enough (4 positions <= head dim 16) for the quadratic form of the attention
    "attention_conv_interp": dict(
        encoder_block_out_channels=(16, 32, 32),
        decoder_block_out_channels=(16, 32, 32),
        encoder_layers_per_block=(1, 1, 2),
        decoder_layers_per_block=(1, 1, 2),
        encoder_block_types=("ResBlock", "EfficientViTBlock", "EfficientViTBlock"),
        decoder_block_types=("ResBlock", "EfficientViTBlock", "EfficientViTBlock"),
        encoder_qkv_multiscales=((), (5,), (5,)),
        decoder_qkv_multiscales=((), (5,), (5,)),
        downsample_block_type="conv",
        upsample_block_type="interpolate",
        encoder_out_shortcut=False,
        decoder_in_shortcut=False,
        decoder_conv_act_fn="silu",
        attention_head_dim=16,
    ),
}


def _randomize(module: torch.nn.Module, scale: float = 0.2) -> None:
    """Perturb every weight, bias, norm scale and BatchNorm statistic (variances kept > 0)."""
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if t.is_floating_point():
                t.add_(scale * torch.randn_like(t))
                if "running_var" in name:
                    t.abs_()


def _pair(config: dict, in_channels: int = 2, latent: int = 4, seed: int = 0):
    """A diffusers AutoencoderDC with random weights (and BatchNorm statistics) and our 2D
    model loaded from its state dict."""
    torch.manual_seed(seed)
    ref = diffusers.AutoencoderDC(in_channels=in_channels, latent_channels=latent, **config)
    _randomize(ref)
    ours = DCAutoencoder(spatial_dims=2, in_channels=in_channels, latent_channels=latent, **config)
    load_diffusers_state_dict(ours, ref.state_dict())
    return ref, ours


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_equals_diffusers_autoencoder_dc(name):
    ref, ours = _pair(CONFIGS[name])
    x = torch.randn(2, 2, 16, 16)
    diffs = {}
    for train in (False, True):  # eval: BN running stats; train: batch statistics
        ref.train(train)
        ours.train(train)
        with torch.no_grad():
            z_ref = ref.encode(x).latent
            z = ours.encode(x)
            x_ref = ref.decode(z_ref).sample
            x_hat = ours.decode(z_ref)
            out = ours(x)
        assert z.shape == z_ref.shape == ours.latent_shape(x.shape)
        assert x_hat.shape == x.shape
        pairs = (
            ("encode", z, z_ref),
            ("decode", x_hat, x_ref),
            ("forward", out.reconstruction, x_ref),
        )
        for key, a, b in pairs:
            diffs[f"{key}/{'train' if train else 'eval'}"] = (
                (a - b).abs().max() / b.abs().max()
            ).item()
    print(f"{name}: max |ours - diffusers| / max |diffusers|: {diffs}")
    assert max(diffs.values()) <= RTOL, diffs


@pytest.mark.parametrize("size", [(4, 4), (4, 5), (2, 2), (8, 8)])
@pytest.mark.parametrize("norm", ["rms_norm", "batch_norm"])
def test_lite_mla_equals_diffusers_bitwise_on_both_sides_of_the_threshold(size, norm):
    """diffusers' SanaMultiscaleLinearAttention switches from the quadratic to the linear form
    when N = H * W exceeds the head dim (16 here): (4, 4) and (2, 2) are quadratic, (4, 5) and
    (8, 8) linear. The two forms are equal in exact arithmetic, so only bitwise equality
    shows that ours switches at the same N."""
    from diffusers.models.attention_processor import SanaMultiscaleLinearAttention

    from medgen.models.autoencoders.dcae_blocks import LiteMLA

    torch.manual_seed(0)
    ref = SanaMultiscaleLinearAttention(
        32, 32, attention_head_dim=16, norm_type=norm, kernel_sizes=(3, 5),
        residual_connection=True,
    ).eval()  # fmt: skip
    ours = LiteMLA(2, 32, 16, norm, (3, 5)).eval()
    _randomize(ref, 0.3)
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 32, *size)
    with torch.no_grad():
        assert torch.equal(ours(x), ref(x))


def test_load_diffusers_state_dict_refuses_other_layout_unchanged():
    ref, _ = _pair(CONFIGS["resblock"])
    other = DCAutoencoder.from_variant("tiny", in_channels=2)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(WeightsError, match="does not fit DCAutoencoder"):
        load_diffusers_state_dict(other, ref.state_dict())
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())
    with pytest.raises(ValueError, match="2D only"):
        load_diffusers_state_dict(DCAutoencoder.from_variant("tiny", spatial_dims=3), {})


def test_load_weights_from_local_safetensors(tmp_path):
    from safetensors.torch import save_file

    ref, _ = _pair(CONFIGS["published_like"], seed=3)
    path = tmp_path / "diffusion_pytorch_model.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    ours = DCAutoencoder(
        spatial_dims=2, in_channels=2, latent_channels=4, **CONFIGS["published_like"]
    )
    assert ours.load_weights(path) is ours
    x = torch.randn(1, 2, 16, 16)
    with torch.no_grad():
        assert torch.equal(ours.eval().encode(x), ref.eval().encode(x).latent)
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(MissingWeightsError, match="nope.safetensors.*never downloads"):
        ours.load_weights(missing)


# ---------------------------------------------------------------- pixel (un)shuffle, 2D and 3D


def test_pixel_unshuffle_2d_equals_torch():
    x = torch.randn(2, 3, 8, 12)
    assert torch.equal(pixel_unshuffle(x, (2, 2)), F.pixel_unshuffle(x, 2))
    assert torch.equal(pixel_unshuffle(x, (4, 4)), F.pixel_unshuffle(x, 4))
    y = torch.randn(2, 12, 4, 6)
    assert torch.equal(pixel_shuffle(y, (2, 2)), F.pixel_shuffle(y, 2))


@pytest.mark.parametrize("factors", [(2, 2, 2), (1, 2, 2), (2, 1, 4)])
def test_pixel_unshuffle_3d_closed_form_permutation_and_inverse(factors):
    fd, fh, fw = factors
    c, d, h, w = 2, 4, 4, 8
    x = torch.arange(c * d * h * w, dtype=torch.float64).reshape(1, c, d, h, w)
    y = pixel_unshuffle(x, factors)
    assert y.shape == (1, c * fd * fh * fw, d // fd, h // fh, w // fw)
    # closed form: channel c * prod(f) + (a * fh + i) * fw + j at (p, q, r) holds
    # input channel c at (p * fd + a, q * fh + i, r * fw + j)
    for ci, a, i, j in itertools.product(range(c), range(fd), range(fh), range(fw)):
        ch = ci * fd * fh * fw + (a * fh + i) * fw + j
        assert torch.equal(y[0, ch], x[0, ci, a::fd, i::fh, j::fw])
    # a permutation: every value exactly once
    assert torch.equal(y.flatten().sort().values, x.flatten())
    # an exact inverse pair, both ways
    assert torch.equal(pixel_shuffle(y, factors), x)
    z = torch.randn(1, 2 * fd * fh * fw, 2, 3, 2)
    assert torch.equal(pixel_unshuffle(pixel_shuffle(z, factors), factors), z)


# ---------------------------------------------------------------- 3D model and per-axis factors

TINY_3D = dict(  # the f32c32_3d layout with toy widths
    encoder_block_out_channels=(4, 8, 8, 16, 16, 16),
    decoder_block_out_channels=(4, 8, 8, 16, 16, 16),
    latent_channels=4,
    attention_head_dim=4,
)


def test_3d_variant_steps_factors_and_shapes():
    m = DCAutoencoder.from_variant("f32c32_3d", **TINY_3D)
    assert m.spatial_dims == 3 and m.downsample == 32 and m.factors == (4, 32, 32)
    # depth halved in the last two (deepest) of the five steps
    assert m.steps == [(1, 2, 2)] * 3 + [(2, 2, 2)] * 2
    assert isinstance(m, Autoencoder)
    x = torch.randn(1, 1, 8, 32, 64)
    assert m.latent_shape(x.shape) == (1, 4, 2, 1, 2)
    m.eval()
    with torch.no_grad():
        z = m.encode(x)
        assert z.shape == (1, 4, 2, 1, 2)
        assert m.decode(z).shape == x.shape
    iso = DCAutoencoder.from_variant("tiny", spatial_dims=3)
    assert iso.factors == (4, 4, 4) and iso.steps == [(2, 2, 2)] * 2
    with torch.no_grad():
        assert iso.eval()(torch.randn(1, 1, 8, 8, 8)).latent.shape == (1, 4, 2, 2, 2)


def test_3d_refuses_non_divisible_depth_naming_axis():
    # seed-002: 24 slices through an encoder that reduces depth 16-fold
    m = DCAutoencoder.from_variant("f32c32_3d", downsample_depth=16, **TINY_3D)
    assert m.factors == (16, 32, 32)
    assert m.steps == [(1, 2, 2)] + [(2, 2, 2)] * 4
    with pytest.raises(ValueError, match=r"axis D has size 24.*factor 16"):
        m.check_shape((1, 1, 24, 64, 64))
    with pytest.raises(ValueError, match=r"axis D has size 24.*factor 16"):
        m.encode(torch.zeros(1, 1, 24, 32, 32))
    with pytest.raises(ValueError, match=r"axis H has size 48.*factor 32"):
        m.latent_shape((1, 1, 32, 48, 64))
    m.check_shape((1, 1, 32, 64, 32))  # divisible: no error


def test_factor_and_config_validation():
    with pytest.raises(ValueError, match="spatial_dims=3 only"):
        DCAutoencoder.from_variant("tiny", downsample_depth=2)
    with pytest.raises(ValueError, match="power of two <= the in-plane factor 4"):
        DCAutoencoder.from_variant("tiny", spatial_dims=3, downsample_depth=3)
    with pytest.raises(ValueError, match="power of two <= the in-plane factor 4"):
        DCAutoencoder.from_variant("tiny", spatial_dims=3, downsample_depth=8)
    with pytest.raises(ValueError, match="unknown variant 'f16'.*f128c512"):
        DCAutoencoder.from_variant("f16")
    with pytest.raises(ValueError, match="encoder_layers_per_block must be >= 1"):
        DCAutoencoder.from_variant("tiny", encoder_layers_per_block=(1, 0, 1))
    with pytest.raises(ValueError, match="same number"):
        DCAutoencoder.from_variant("tiny", decoder_block_out_channels=(8, 16))
    with pytest.raises(ValueError, match="unknown block type 'Transformer'"):
        DCAutoencoder.from_variant("tiny", decoder_block_types="Transformer")
    with pytest.raises(ValueError, match="unknown norm type 'group_norm'"):
        DCAutoencoder.from_variant("tiny", decoder_norm_types="group_norm")
    with pytest.raises(ValueError, match="expected 1 input channels, got 3"):
        DCAutoencoder.from_variant("tiny").check_shape((1, 3, 16, 16))
    with pytest.raises(ValueError, match=r"expected a latent \(B, 4, H, W\)"):
        DCAutoencoder.from_variant("tiny").decode(torch.zeros(1, 3, 4, 4))


# ---------------------------------------------------------------- protocol, determinism


def test_protocol_forward_and_decoder_head():
    m = DCAutoencoder.from_variant("tiny", in_channels=2)
    assert isinstance(m, Autoencoder)
    assert (m.spatial_dims, m.in_channels, m.latent_channels, m.downsample) == (2, 2, 4, 4)
    out = m(torch.randn(2, 2, 16, 16))
    assert isinstance(out, AutoencoderOutput)
    assert out.terms == {} and out.stats == {}
    assert out.latent.shape == (2, 4, 4, 4) and out.reconstruction.shape == (2, 2, 16, 16)
    head = m.decoder_head()
    names = {id(p): n for n, p in m.named_parameters()}
    assert sorted(names[id(p)] for p in head) == [
        "decoder.conv_out.bias",
        "decoder.conv_out.weight",
        "decoder.norm_out.bias",
        "decoder.norm_out.weight",
    ]
    # the head is the tail: with the rest frozen, only the head gets gradients
    for p in m.parameters():
        p.requires_grad_(False)
    for p in head:
        p.requires_grad_(True)
    m(torch.randn(2, 2, 16, 16)).reconstruction.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head)


@pytest.mark.parametrize("train", [False, True])
def test_encode_is_deterministic(train):
    _, m = _pair(CONFIGS["published_like"])
    m.train(train)
    x = torch.randn(2, 2, 16, 16)
    with torch.no_grad():
        assert torch.equal(m.encode(x), m.encode(x))
        assert torch.equal(m(x).latent, m.encode(x))  # no structured latent: forward's latent


# ---------------------------------------------------------------- DC-AE 1.5 structured latent


def test_sample_channel_counts_grid_and_reproducible():
    g = torch.Generator().manual_seed(7)
    counts = sample_channel_counts(4000, 32, 16, 4, generator=g)
    assert counts.dtype == torch.int64 and counts.shape == (4000,)
    grid = {16, 20, 24, 28, 32}
    assert set(counts.tolist()) == grid  # only the grid, and all of it (incl. the full c)
    freq = torch.bincount((counts - 16) // 4, minlength=5).float() / 4000
    assert (freq - 0.2).abs().max() < 0.03  # uniform over the grid
    again = sample_channel_counts(4000, 32, 16, 4, generator=torch.Generator().manual_seed(7))
    assert torch.equal(counts, again)
    assert set(sample_channel_counts(50, 8, 8, 3).tolist()) == {8}  # min == c: no masking


@pytest.mark.parametrize(
    "args, match",
    [
        ((32, 0, 4), "min_channels must be in"),
        ((32, 40, 4), "min_channels must be in"),
        ((32, 16, 5), "channel_step must be >= 1 and divide"),
        ((32, 16, 0), "channel_step must be >= 1 and divide"),
    ],
)
def test_structured_validation(args, match):
    with pytest.raises(ValueError, match=match):
        sample_channel_counts(2, *args)
    with pytest.raises(ValueError, match=match):
        DCAutoencoder.from_variant("tiny", latent_channels=args[0], structured_latent=args[1:])


def test_structured_channel_mask_exact():
    z = torch.randn(3, 8, 2, 2) + 10.0  # no exact zeros to begin with
    n = torch.tensor([2, 8, 5])
    out = structured_channel_mask(z, n)
    for b, k in enumerate(n.tolist()):
        assert torch.equal(out[b, :k], z[b, :k])
        assert torch.equal(out[b, k:], torch.zeros_like(z[b, k:]))
    assert torch.equal(structured_channel_mask(z, 3)[:, 3:], torch.zeros(3, 5, 2, 2))


def test_forward_applies_structured_latent_in_training_only():
    m = DCAutoencoder.from_variant("tiny", latent_channels=8, structured_latent=(2, 3))
    x = torch.randn(16, 1, 8, 8)
    torch.manual_seed(1)
    out = m.train()(x)
    z = m.encode(x)
    kept = (out.latent != 0).flatten(2).any(-1).sum(1)  # channels with any non-zero value
    assert set(kept.tolist()) <= {2, 5, 8} and len(set(kept.tolist())) > 1
    for b, k in enumerate(kept.tolist()):
        assert torch.equal(out.latent[b, :k], z[b, :k])
        assert not out.latent[b, k:].any()
    torch.manual_seed(1)
    assert torch.equal(m(x).latent, out.latent)  # the draw follows the global RNG
    with torch.no_grad():
        assert torch.equal(m.eval()(x).latent, m.encode(x))  # eval: the full latent


# ---------------------------------------------------------------- variant table

# Parameter counts with in_channels=3 (RGB, as published): diffusers' AutoencoderDC built from
# the same config has exactly these (checked below on the meta device, nothing allocated).
PARAMS_RGB = {
    "f32c32": 323_356_460,
    "f64c128": 676_896_140,
    "f128c512": 1_120_682_252,
    "f32c32_sana": 312_250_275,
    "f32c32_3d": 139_197_292,  # ours, no diffusers counterpart: pinned (README table)
    "tiny": 77_707,
}


@pytest.mark.parametrize("name", sorted(DCAE_VARIANTS))
def test_variant_table_matches_diffusers(name):
    with torch.device("meta"):
        ours = DCAutoencoder.from_variant(name, in_channels=3)
    n_ours = sum(p.numel() for p in ours.parameters())
    print(f"{name}: {n_ours:,} parameters, factors {ours.factors}")
    f = int(name[1:].split("c")[0]) if name[0] == "f" else 4
    assert ours.downsample == f
    assert ours.latent_channels == (int(name.split("c")[1].split("_")[0]) if name[0] == "f" else 4)
    assert n_ours == PARAMS_RGB[name]
    if ours.spatial_dims == 3:
        assert ours.factors == (4, 32, 32)
        return
    config = {k: v for k, v in DCAE_VARIANTS[name].items() if k != "downsample_depth"}
    with torch.device("meta"):
        ref = diffusers.AutoencoderDC(in_channels=3, **config)
    ref_sd, our_sd = ref.state_dict(), ours.state_dict()
    assert list(ref_sd) == list(our_sd)  # same names, same order: a hub checkpoint loads
    assert all(ref_sd[k].shape == our_sd[k].shape for k in ref_sd)
    assert n_ours == sum(p.numel() for p in ref.parameters())
    assert ref.spatial_compression_ratio == ours.downsample


def test_readme_dcae_example_runs(capsys):
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = text.index("### DC-AE\n")
    ends = [i for i in (text.find("\n## ", start), text.find("\n### ", start + 1)) if i > 0]
    blocks = re.findall(r"```python\n(.*?)```", text[start : min(ends, default=None)], flags=re.S)
    assert len(blocks) == 1
    exec(compile(blocks[0], "README.md DC-AE block", "exec"), {"__name__": "readme"})
    assert capsys.readouterr().out.splitlines() == [
        "(2, 4, 8, 8) (2, 1, 32, 32)",
        "(2, 4, 4) (1, 4, 4, 8, 8)",
        "[8, 2, 8, 2]",
    ]
