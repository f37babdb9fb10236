"""One test class every autoencoder passes (KL, VQ, MAISI; DC-AE once it exists), 2D and 3D.

References: torch.distributions for the KL term, MONAI's own quantizer loss and perplexity
for the VQ terms, autograd for the straight-through estimator; weights round-trip through
safetensors and through MAISI's checkpoint layout.
"""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import save_file

from medgen.models.autoencoders import (
    AUTOENCODERS,
    Autoencoder,
    KLAutoencoder,
    MaisiAutoencoder,
    MissingWeightsError,
    VQAutoencoder,
    WeightsError,
    codebook_stats,
)

torch.set_num_threads(1)

TINY = {
    "kl": lambda d: KLAutoencoder(d, 1, latent_channels=3, channels=(8, 16, 16), norm_num_groups=4),
    "vq": lambda d: VQAutoencoder(d, 1, channels=(8, 16), num_embeddings=16, embedding_dim=3),
    "maisi": lambda d: MaisiAutoencoder(
        spatial_dims=d,
        num_channels=(8, 16, 16),
        num_res_blocks=(1, 1, 1),
        norm_num_groups=4,
        num_splits=1,
    ),
}
CASES = [("kl", 2), ("kl", 3), ("vq", 2), ("vq", 3), ("maisi", 3)]
TINY["dcae"] = lambda d: AUTOENCODERS["dcae"].from_variant("tiny", spatial_dims=d)
CASES += [("dcae", 2), ("dcae", 3)]
SIZES = {2: (16, 16), 3: (8, 16, 16)}


def build(kind: str, dims: int, seed: int = 0):
    torch.manual_seed(seed)
    return TINY[kind](dims)


def data(dims: int, batch: int = 2, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((batch, 1, *SIZES[dims]), generator=g) * 2 - 1


@pytest.mark.parametrize("kind,dims", CASES)
class TestAutoencoderShared:
    def test_protocol_and_shapes(self, kind, dims):
        ae = build(kind, dims).eval()
        assert isinstance(ae, Autoencoder)
        x = data(dims)
        z = ae.encode(x)
        assert tuple(z.shape) == ae.latent_shape(x.shape)
        assert z.shape[1] == ae.latent_channels
        assert all(s * ae.downsample == t for s, t in zip(z.shape[2:], x.shape[2:], strict=True))
        assert ae.decode(z).shape == x.shape
        out = ae(x)
        assert out.reconstruction.shape == x.shape and out.latent.shape == z.shape

    def test_non_divisible_size_refused_naming_the_axis(self, kind, dims):
        ae = build(kind, dims)
        names = ("D", "H", "W")[3 - dims :]
        for axis, name in enumerate(names):
            shape = [2, 1, *SIZES[dims]]
            shape[2 + axis] += 2  # divisible by 2, not by the downsample (>= 4)
            with pytest.raises(ValueError, match=rf"axis {name} has size {shape[2 + axis]}.*"
                               rf"downsample factor {ae.downsample}"):  # fmt: skip
                ae.latent_shape(shape)
            with pytest.raises(ValueError, match=f"axis {name}"):
                ae.encode(torch.zeros(shape))

    def test_encode_is_deterministic_and_pure(self, kind, dims):
        ae = build(kind, dims).train()  # even in training mode: no sampling, no codebook update
        before = {k: v.clone() for k, v in ae.state_dict().items()}
        x = data(dims)
        z1, z2 = ae.encode(x), ae.encode(x)
        assert torch.equal(z1, z2)
        assert all(torch.equal(before[k], v) for k, v in ae.state_dict().items())

    def test_forward_terms(self, kind, dims):
        ae = build(kind, dims).train()
        x = data(dims)
        out = ae(x)
        assert all(torch.isfinite(t) and t.ndim == 0 for t in out.terms.values())
        expected_terms = {"kl": {"kl"}, "maisi": {"kl"}, "vq": {"vq"}, "dcae": set()}[kind]
        assert set(out.terms) == expected_terms  # DC-AE: no regularisation term
        if kind in ("kl", "maisi"):
            torch.manual_seed(5)
            out = ae(x)
            mu, sigma = ae.posterior(x)
            ref = torch.distributions.kl_divergence(
                torch.distributions.Normal(mu, sigma), torch.distributions.Normal(0.0, 1.0)
            )
            expected = ref.flatten(1).sum(1).mean()
            torch.testing.assert_close(out.terms["kl"], expected, rtol=1e-5, atol=1e-5)
            assert not torch.equal(out.latent, mu)  # forward samples the posterior
        if kind == "vq":
            ae.eval()  # no EMA update, so MONAI's own pass sees the same codebook
            out = ae(x)
            z_e = ae.net.encode(x)
            q, monai_loss = ae.net.quantize(z_e)
            torch.testing.assert_close(out.terms["vq"], monai_loss)
            torch.testing.assert_close(
                out.terms["vq"], 0.25 * torch.nn.functional.mse_loss(q, z_e)
            )  # commitment_cost * ||sg[q] - z_e||^2
            assert out.stats["perplexity"] == pytest.approx(
                float(ae.net.quantizer.perplexity), rel=1e-5
            )
            assert 0 < out.stats["usage"] <= 1
            assert out.stats["dead_codes"] == ae.num_embeddings * (1 - out.stats["usage"])

    def test_decoder_head_is_part_of_the_decoder(self, kind, dims):
        ae = build(kind, dims)
        head = ae.decoder_head()
        decoder = {id(p) for p in getattr(ae, "net", ae).decoder.parameters()}
        assert head and all(id(p) in decoder for p in head)
        assert len(head) < len(decoder)
        if hasattr(ae, "last_layer"):
            assert any(p is ae.last_layer() for p in head)

    def test_safetensors_round_trip(self, kind, dims, tmp_path):
        a, b = build(kind, dims, seed=0).eval(), build(kind, dims, seed=1).eval()
        x = data(dims)
        assert not torch.equal(a.decode(a.encode(x)), b.decode(b.encode(x)))
        # MONAI's keys (as a MONAI script saves them) and the wrapper's own (net.-prefixed)
        for i, state in enumerate([getattr(a, "net", a).state_dict(), a.state_dict()]):
            path = tmp_path / f"w{i}.safetensors"
            save_file({k: v.contiguous() for k, v in state.items()}, str(path))
            c = build(kind, dims, seed=2).eval().load_weights(path)
            assert torch.equal(c.decode(c.encode(x)), a.decode(a.encode(x)))

    def test_gradients_flow(self, kind, dims):
        ae = build(kind, dims).train()
        x = data(dims)
        out = ae(x)
        loss = (out.reconstruction - x).abs().mean() + sum(out.terms.values())
        loss.backward()
        trainable = [(n, p) for n, p in ae.named_parameters() if p.requires_grad]
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for _, p in trainable)
        first = next(p for n, p in trainable if "encoder" in n and n.endswith("weight"))
        assert first.grad.abs().sum() > 0  # the gradient reaches the encoder's first layer


@pytest.mark.parametrize("dims", [2, 3])
def test_vq_straight_through_gradient_reaches_the_encoder_unchanged(dims):
    ae = build("vq", dims).train()
    x = data(dims)
    seen = {}
    z_e = ae.net.encode(x)
    z_e.register_hook(lambda g: seen.__setitem__("encoder_out", g))
    quantized, _, _ = ae.net.quantizer.quantizer(z_e)
    quantized.register_hook(lambda g: seen.__setitem__("decoder_in", g))
    ae.net.decode(quantized).square().mean().backward()
    assert seen["decoder_in"].abs().sum() > 0
    torch.testing.assert_close(seen["encoder_out"], seen["decoder_in"], rtol=0, atol=0)


def test_codebook_stats_closed_forms():
    idx = torch.tensor([0, 1, 2, 3] * 5)  # 4 of 16 codes, uniform
    s = codebook_stats(idx, 16)
    assert s["perplexity"] == pytest.approx(4.0)
    assert s["entropy"] == pytest.approx(math.log(4))
    assert s["usage"] == 0.25 and s["dead_codes"] == 12
    s = codebook_stats(torch.zeros(7, dtype=torch.long), 8)
    assert s["perplexity"] == pytest.approx(1.0) and s["dead_codes"] == 7
    p = torch.tensor([0.5, 0.25, 0.25])
    idx = torch.tensor([0, 0, 1, 2])
    assert codebook_stats(idx, 3)["entropy"] == pytest.approx(float(-(p * p.log()).sum()))


def test_maisi_preset_is_the_published_architecture():
    with torch.device("meta"):
        ae = MaisiAutoencoder()
    assert (ae.latent_channels, ae.downsample, ae.spatial_dims) == (4, 4, 3)
    assert ae.latent_shape((1, 1, 128, 256, 256)) == (1, 4, 32, 64, 64)
    n = sum(p.numel() for p in ae.parameters())
    assert 20.8e6 < n < 21.0e6  # MAISI's VAE: ~20.9M parameters


def test_maisi_is_3d_only_and_rejects_unknown_arguments():
    with pytest.raises(ValueError, match="spatial_dims must be 3"):
        MaisiAutoencoder(spatial_dims=2)
    with pytest.raises(ValueError, match=r"unknown argument\(s\) \['channels'\]"):
        MaisiAutoencoder(channels=(8, 16))


def test_maisi_checkpoint_layouts_load(tmp_path):
    ref = build("maisi", 3, seed=0).eval()
    x = data(3, batch=1)
    expected = ref.decode(ref.encode(x))
    for key in ("unet_state_dict", "state_dict"):  # MAISI's layout, Lightning's
        path = tmp_path / f"{key}.pt"
        torch.save({key: ref.net.state_dict(), "epoch": 273}, path)
        ae = build("maisi", 3, seed=1).eval().load_weights(path)
        assert torch.equal(ae.decode(ae.encode(x)), expected)


class TestWeightsErrors:
    def test_missing_maisi_file_names_path_and_how_to_obtain(self, tmp_path):
        path = tmp_path / "autoencoder_epoch273.pt"
        with pytest.raises(MissingWeightsError) as err:
            build("maisi", 3).load_weights(path)
        msg = str(err.value)
        assert str(path) in msg and "autoencoder_epoch273.pt" in msg and "licen" in msg
        assert "\n" not in msg and isinstance(err.value, FileNotFoundError)

    def test_truncated_safetensors(self, tmp_path):
        ae = build("kl", 2)
        path = tmp_path / "ae.safetensors"
        save_file({k: v.contiguous() for k, v in ae.net.state_dict().items()}, str(path))
        path.write_bytes(path.read_bytes()[:-100])
        before = {k: v.clone() for k, v in ae.state_dict().items()}
        with pytest.raises(WeightsError, match=rf"{path}.*truncated") as err:
            ae.load_weights(path)
        assert "\n" not in str(err.value)
        assert all(torch.equal(before[k], v) for k, v in ae.state_dict().items())

    @pytest.mark.parametrize(
        "other",
        [
            lambda: KLAutoencoder(2, 1, latent_channels=4, channels=(8, 16, 16), norm_num_groups=4),
            lambda: KLAutoencoder(2, 1, latent_channels=3, channels=(8, 16), norm_num_groups=4),
            lambda: VQAutoencoder(2, 1, channels=(8, 16), num_embeddings=16, embedding_dim=3),
        ],
        ids=["latent-size", "depth", "architecture"],
    )
    def test_other_architecture_or_latent_size(self, tmp_path, other):
        ae = build("kl", 2)
        path = tmp_path / "other.safetensors"
        save_file({k: v.contiguous() for k, v in other().net.state_dict().items()}, str(path))
        before = {k: v.clone() for k, v in ae.state_dict().items()}
        with pytest.raises(WeightsError, match=rf"weights file {path} does not fit") as err:
            ae.load_weights(path)
        msg = str(err.value)
        assert "\n" not in msg and len(msg) < 1200  # a few keys, not a 200-line dump
        assert all(torch.equal(before[k], v) for k, v in ae.state_dict().items())

    def test_latent_size_mismatch_lists_the_shapes(self, tmp_path):
        ae = build("kl", 2)
        other = KLAutoencoder(2, 1, latent_channels=4, channels=(8, 16, 16), norm_num_groups=4)
        path = tmp_path / "l4.pt"
        torch.save(other.net.state_dict(), path)
        with pytest.raises(
            WeightsError, match=r"quant_conv_mu.conv.weight \(4, 4, 1, 1\) vs \(3, 3, 1, 1\)"
        ):
            ae.load_weights(path)

    def test_pickled_objects_are_refused(self, tmp_path):
        path = tmp_path / "pickled.pt"
        torch.save({"state_dict": build("kl", 2).net.state_dict(), "cfg": object()}, path)
        with pytest.raises(WeightsError, match=rf"{path}.*weights_only=True"):
            build("kl", 2).load_weights(path)

    def test_sha256_checked(self, tmp_path):
        ae = build("kl", 2)
        path = tmp_path / "ae.safetensors"
        save_file({k: v.contiguous() for k, v in ae.net.state_dict().items()}, str(path))
        with pytest.raises(WeightsError, match="sha256"):
            ae.load_weights(path, expected_sha256="0" * 64)


def test_readme_autoencoders_example_runs(capsys):
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = text.index("## Autoencoders\n")
    ends = [i for i in (text.find("\n### DC-AE", start), text.find("\n## ", start + 1)) if i > 0]
    section = text[start : min(ends) if ends else None]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks
    namespace = {"__name__": "readme"}
    for i, block in enumerate(blocks):
        exec(compile(block, f"README.md autoencoders block {i}", "exec"), namespace)
    out = capsys.readouterr().out.split("\n")
    assert out[0] == "(2, 3, 4, 8, 8) 4"
    assert out[1] == "weights file /nonexistent/vgg16-397923af.pth does not exist"
    assert out[2] == "2 True"
