import io
import math

import numpy as np
import pytest
import torch

from medgen.data import DataError
from medgen.data.slicing.codec import bits_per_value, decode_mask, encode_mask

SEED_SHAPES = [(32, 8, 8), (128, 4, 4), (512, 2, 2)]  # seed 003: DC-AE f32 / f64 / f128
INT_SHAPES = [(16, 16, 16), (32, 16, 16), (3, 31, 31), (4096,)]


def random_masks(*shape, seed=0, p=0.5):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(*shape, generator=g) < p).to(torch.uint8)


@pytest.mark.parametrize("latent_shape", SEED_SHAPES)
def test_seed_shapes_round_trip_exactly_raw32(latent_shape):
    masks = random_masks(4, 256, 256)
    z = encode_mask(masks, latent_shape, scheme="raw32")
    assert z.shape == (4, *latent_shape) and z.dtype == torch.float32
    # lossless through copies and serialisation (what raw32 promises) ...
    buf = io.BytesIO()
    torch.save(z.clone(), buf)
    buf.seek(0)
    z2 = torch.load(buf, weights_only=True)
    assert torch.equal(decode_mask(z2, (256, 256), latent_shape, scheme="raw32"), masks)
    # ... but the bit patterns include NaN/Inf for practically every random mask
    assert not torch.isfinite(z).all()


@pytest.mark.parametrize("latent_shape", SEED_SHAPES)
def test_seed_shapes_are_impossible_for_the_finite_int_scheme(latent_shape):
    with pytest.raises(DataError, match=r"\(256, 256\).*32 bits per float.*at most 24"):
        encode_mask(random_masks(256, 256), latent_shape)


def test_no_finite_code_fits_65536_bits_into_2048_floats():
    non_nan_patterns = 2**32 - (2**24 - 2)  # exponent all ones and non-zero mantissa = NaN
    assert 2048 * math.log2(non_nan_patterns) < 256 * 256


@pytest.mark.parametrize("latent_shape", INT_SHAPES)
def test_int_scheme_round_trips_and_stays_finite_integers(latent_shape):
    masks = random_masks(2, 3, 256, 256, seed=1)
    z = encode_mask(masks, latent_shape)
    assert z.shape == (2, 3, *latent_shape) and z.dtype == torch.float32
    k = bits_per_value((256, 256), latent_shape)
    assert torch.isfinite(z).all() and (z >= 0).all() and (z < 2**k).all()
    assert torch.equal(z, z.round())
    # survives float64 round trip and arithmetic that leaves it unchanged
    z = (z.double() * 1.0 + 0.0).float()
    assert torch.equal(decode_mask(z, (256, 256), latent_shape), masks)


def test_bit_layout_is_row_major_lsb_first():
    mask = torch.zeros(4, 4, dtype=torch.uint8)
    mask[0, 0] = 1  # bit 0 of word 0
    mask[0, 3] = 1  # bit 3 of word 0
    mask[2, 1] = 1  # flat 9 -> bit 1 of word 1 (8 bits per word)
    z = encode_mask(mask, (2,))
    assert z.tolist() == [1.0 + 8.0, 2.0]


def test_bool_float_numpy_inputs_and_dtype():
    m = random_masks(64, 64, seed=2)
    ref = encode_mask(m, (16, 4, 4))
    assert torch.equal(encode_mask(m.bool(), (16, 4, 4)), ref)
    assert torch.equal(encode_mask(m.float(), (16, 4, 4)), ref)
    assert torch.equal(encode_mask(m.numpy(), (16, 4, 4)), ref)
    out = decode_mask(ref, (64, 64), (16, 4, 4), dtype=torch.bool)
    assert out.dtype == torch.bool and torch.equal(out, m.bool())


def test_all_zero_and_all_one_masks():
    for value in (0, 1):
        m = torch.full((256, 256), value, dtype=torch.uint8)
        for scheme, shape in (("int", (16, 16, 16)), ("raw32", (32, 8, 8))):
            z = encode_mask(m, shape, scheme=scheme)
            assert torch.equal(decode_mask(z, (256, 256), shape, scheme=scheme), m)


@pytest.mark.parametrize("bad", [0.5, 2, -1, float("nan")])
def test_non_binary_mask_is_a_data_error(bad):
    m = torch.zeros(16, 16)
    m[3, 4] = bad
    with pytest.raises(DataError, match=r"\(16, 16\)"):
        encode_mask(m, (32,))


def test_impossible_and_malformed_shapes_name_the_shapes():
    with pytest.raises(DataError, match=r"\(256, 256\).*\(8, 8\)"):
        encode_mask(torch.zeros(256, 256), (8, 8), scheme="raw32")
    with pytest.raises(DataError, match="at least 2 dims"):
        encode_mask(torch.zeros(16), (4,))
    with pytest.raises(DataError, match="unknown mask codec scheme"):
        encode_mask(torch.zeros(4, 4), (4,), scheme="bf16")
    z = encode_mask(torch.zeros(16, 16), (16,))
    with pytest.raises(DataError, match=r"does not end in \(4, 4\)"):
        decode_mask(z, (16, 16), (4, 4))
    with pytest.raises(DataError, match="float32"):
        decode_mask(z.double(), (16, 16), (16,))


def test_altered_latents_are_rejected():
    z = encode_mask(random_masks(16, 16), (16,))
    with pytest.raises(DataError, match="not an integer"):
        decode_mask(z + 0.5, (16, 16), (16,))
    with pytest.raises(DataError, match="not an integer"):
        decode_mask(z - 70000.0, (16, 16), (16,))
    # 15x15 = 225 bits in 16 words of 15 bits: the last word has 15 padding bits
    z = encode_mask(random_masks(15, 15), (16,))
    z[-1] = 2**14
    with pytest.raises(DataError, match="padding bits"):
        decode_mask(z, (15, 15), (16,))


def test_non_square_and_padding_round_trip():
    m = random_masks(5, 37, 41, seed=3)
    z = encode_mask(m, (7, 11))  # 1517 bits in 77 words of 20 bits
    assert bits_per_value((37, 41), (7, 11)) == 20
    assert torch.equal(decode_mask(z, (37, 41), (7, 11)), m)
    assert np.array_equal(decode_mask(z.numpy(), (37, 41), (7, 11)).numpy(), m.numpy())
