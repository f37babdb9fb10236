"""z-binning errors name the offending value, and the edge cases mutation testing found
untested (benchmarks/run_mutants.py, data/zbin): a single-slice range, one non-integer end of
z_range, the bin index n_bins itself."""

from __future__ import annotations

import pytest

from medgen.data.slicing.zbin import class_token, normalize_z_local, quantize_z, z_bin_bounds


def test_zbin_single_slice_range_normalizes_to_zero():
    assert normalize_z_local(5, (5, 5)) == 0.0  # no division by the empty extent
    assert normalize_z_local(7, (5, 9)) == 0.5


@pytest.mark.parametrize("z_range", [(24.5, 93), (24, 93.5)], ids=["start", "end"])
def test_zbin_either_non_integer_end_is_refused(z_range):
    with pytest.raises(ValueError, match=r"z_range must hold integers, got \(24"):
        quantize_z(30, z_range, 10)


def test_zbin_error_messages_name_the_values():
    with pytest.raises(ValueError, match=r"z_range \(93, 24\) is empty"):
        quantize_z(30, (93, 24), 10)
    with pytest.raises(ValueError, match="n_bins must be a positive integer, got 0"):
        quantize_z(30, (24, 93), 0)
    with pytest.raises(ValueError, match="z_index must be an integer, got 30.5"):
        quantize_z(30.5, (24, 93), 10)
    with pytest.raises(ValueError, match=r"z_index 23 outside z_range \[24, 93\]"):
        normalize_z_local(23, (24, 93))
    with pytest.raises(ValueError, match=r"z_bin 10 outside \[0, 10\)"):
        z_bin_bounds(10, (24, 93), 10)  # n_bins itself is out of range, not an empty bin
    with pytest.raises(ValueError, match=r"z_bin 1 holds no slice: 10 bins over 3 slices"):
        z_bin_bounds(1, (4, 6), 10)
    with pytest.raises(ValueError, match=r"z_bin 50 outside \[0, 50\)"):
        class_token(50, 0, 50)
    with pytest.raises(ValueError, match="class_id must be >= 0, got -1"):
        class_token(3, -1, 50)
