import pytest

from medgen.data import class_token, normalize_z_local, quantize_z, z_bin_bounds, z_bin_to_index


def test_seed_examples():
    assert quantize_z(24, (24, 93), 10) == 0
    assert quantize_z(58, (24, 93), 10) == 4
    assert quantize_z(93, (24, 93), 10) == 9


@pytest.mark.parametrize(("z_range", "n_bins"), [((24, 93), 50), ((50, 100), 10), ((0, 127), 50)])
def test_every_bin_used(z_range, n_bins):
    bins = {quantize_z(z, z_range, n_bins) for z in range(z_range[0], z_range[1] + 1)}
    assert bins == set(range(n_bins))


def test_even_distribution():
    counts = [0] * 50
    for z in range(24, 94):
        counts[quantize_z(z, (24, 93), 50)] += 1
    assert min(counts) == 1 and max(counts) == 2


def test_user_example_bin_edges():
    assert z_bin_bounds(0, (50, 100), 10) == (50, 54)
    assert z_bin_bounds(1, (50, 100), 10) == (55, 59)
    assert z_bin_bounds(9, (50, 100), 10) == (95, 100)
    assert z_bin_bounds(0, (24, 93), 50) == (24, 25)
    assert z_bin_bounds(1, (24, 93), 50) == (26, 26)
    assert z_bin_bounds(49, (24, 93), 50) == (92, 93)


def test_matches_seed_formula_inside_range():
    # the seed's formula int((z - min) / (max - min) * n) with the last index folded into
    # the last bin; compared where float rounding cannot matter
    for z in range(24, 93):
        expected = int((z - 24) / (93 - 24) * 10)
        assert quantize_z(z, (24, 93), 10) == expected


@pytest.mark.parametrize("z", [20, 23, 94, 100])
def test_outside_range_raises(z):
    with pytest.raises(ValueError, match="outside z_range"):
        quantize_z(z, (24, 93), 10)


def test_bad_arguments():
    with pytest.raises(ValueError):
        quantize_z(30, (24, 93), 0)
    with pytest.raises(ValueError):
        quantize_z(30, (93, 24), 10)
    with pytest.raises(ValueError):
        quantize_z(30.5, (24, 93), 10)


def test_roundtrip():
    for z_range, n_bins in [((24, 93), 50), ((50, 100), 10), ((0, 9), 10)]:
        for b in range(n_bins):
            z = z_bin_to_index(b, z_range, n_bins)
            assert quantize_z(z, z_range, n_bins) == b


def test_bin_without_slices_raises():
    with pytest.raises(ValueError, match="holds no slice"):
        z_bin_to_index(1, (0, 2), 10)


def test_single_slice_range_and_normalize():
    assert quantize_z(5, (5, 5), 4) == 0
    assert normalize_z_local(24, (24, 93)) == 0.0
    assert normalize_z_local(93, (24, 93)) == 1.0


def test_class_token():
    assert class_token(7, 0, 50) == 7
    assert class_token(7, 1, 50) == 57
    with pytest.raises(ValueError):
        class_token(50, 0, 50)
