"""collate / PairDataset edges that mutation testing found untested (benchmarks/run_mutants.py,
data/collate): a batch of one, the empty-batch messages, the pair's spacing and profile passed
through, float64 thin volumes returned as float32."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medgen.data import DataError, Volume
from medgen.data.loading.collate import PairDataset, collate_padded, pad_stack
from medgen.data.slicing.thick import simulate_thick, thick_mask, uint8_labels


def _volume(depth=12, side=4, dtype=np.float32, seed=0) -> Volume:
    a = np.random.default_rng(seed).uniform(-1, 1, (depth, side, side)).astype(dtype)
    return Volume(a, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))


def test_collate_a_batch_of_one_item():
    """Every kind of value, in a batch of a single item (no second item to look at)."""
    item = {
        "image": torch.full((1, 3, 4), 0.5),
        "array": np.ones((1, 2, 2), dtype=np.float32),
        "scalar": torch.tensor(2.0),
        "number": 3,
        "id": "case-0",
    }
    out = collate_padded([item])
    assert out["image"].shape == (1, 1, 3, 4) and out["image_valid"].all()
    assert out["image_shape"].tolist() == [[3, 4]]
    assert out["array"].shape == (1, 1, 2, 2) and out["array_shape"].tolist() == [[2, 2]]
    assert out["scalar"].tolist() == [2.0] and out["number"].tolist() == [3]
    assert out["id"] == ["case-0"]


def test_collate_empty_batches_are_named():
    with pytest.raises(DataError, match="^cannot collate an empty batch$"):
        collate_padded([])
    with pytest.raises(DataError, match="^cannot pad an empty batch$"):
        pad_stack([])


def test_pad_stack_shapes_are_int64():
    _, _, shapes = pad_stack([torch.zeros(1, 2, 3), torch.zeros(1, 4, 1)])
    assert shapes.dtype == torch.int64 and shapes.tolist() == [[2, 3], [4, 1]]


def test_pair_dataset_passes_spacing_and_profile_through():
    vol, lab = _volume(), _volume(seed=1)
    lab = Volume((lab.array > 0).astype(np.uint8), lab.spacing, lab.origin, lab.direction)
    ds = PairDataset([vol], thickness=4.0, spacing=2.0, profile="gaussian", labels=[lab])
    item = ds[0]
    want = simulate_thick(vol, 4.0, 2.0, "gaussian").array
    assert torch.equal(item["thick"][0], torch.from_numpy(want))
    assert not np.array_equal(want, simulate_thick(vol, 4.0).array)  # the arguments matter
    want_lab = uint8_labels(thick_mask(lab, 4.0, 2.0))
    assert torch.equal(item["thick_label"][0], torch.from_numpy(want_lab))
    assert item["thick_label"].shape[1] != uint8_labels(thick_mask(lab, 4.0)).shape[0]


def test_pair_dataset_thin_is_float32_for_float64_volumes():
    vol = _volume(dtype=np.float64)
    item = PairDataset([vol], thickness=4.0)[0]
    assert item["thin"].dtype == torch.float32 and item["thick"].dtype == torch.float32
    torch.testing.assert_close(item["thin"][0], torch.from_numpy(vol.array.astype(np.float32)))
