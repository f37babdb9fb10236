import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from medgen.data import DataError, Volume
from medgen.data.loading.collate import PairDataset, collate_padded, pad_stack
from medgen.data.slicing.thick import simulate_thick


def thin_volume(depth, side=6, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.uniform(-1, 1, size=(depth, side, side)).astype(np.float32)
    return Volume(a, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))


def test_pad_stack_values_masks_shapes_and_dtype():
    a = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    b = torch.ones(2, 5, 2)
    out, valid, shapes = pad_stack([a, b])
    assert out.shape == (2, 2, 5, 4) and out.dtype == torch.float32
    assert valid.shape == (2, 1, 5, 4) and valid.dtype == torch.bool
    assert torch.equal(out[0, :, :3, :4], a) and torch.equal(out[1, :, :5, :2], b)
    assert (out[0, :, 3:] == -1).all() and (out[1, :, :, 2:] == -1).all()
    assert valid[0, 0, :3, :4].all() and valid[0, 0].sum() == 12
    assert valid[1, 0, :5, :2].all() and valid[1, 0].sum() == 10
    # the mask is exact: padded voxels are exactly those outside it
    assert torch.equal((out == -1).all(1, keepdim=True) & ~valid, ~valid)
    assert shapes.tolist() == [[3, 4], [5, 2]] and shapes.dtype == torch.int64


def test_pad_stack_labels_pad_with_zero_and_keep_dtype():
    out, valid, _ = pad_stack(
        [torch.ones(1, 2, dtype=torch.uint8), torch.ones(1, 3, dtype=torch.uint8)]
    )
    assert out.dtype == torch.uint8 and out.tolist() == [[[1, 1, 0]], [[1, 1, 1]]]
    assert valid.tolist() == [[[True, True, False]], [[True, True, True]]]


def test_pad_stack_rejects_mismatched_items():
    with pytest.raises(DataError, match="item 1"):
        pad_stack([torch.zeros(1, 3), torch.zeros(2, 3)])
    with pytest.raises(DataError, match="item 1"):
        pad_stack([torch.zeros(1, 3), torch.zeros(1, 3, dtype=torch.float64)])
    with pytest.raises(DataError, match="empty"):
        pad_stack([])


def test_pair_dataset_items_match_simulate_thick():
    vols = [thin_volume(23, seed=0), thin_volume(12, seed=1)]
    ds = PairDataset(vols, thickness=5.0)
    item = ds[0]
    assert item["thin"].shape == (1, 23, 6, 6) and item["thick"].shape == (1, 4, 6, 6)
    np.testing.assert_array_equal(item["thick"][0].numpy(), simulate_thick(vols[0], 5.0).array)


def test_dataloader_pads_variable_depth_pairs_with_minus_one_and_masks():
    vols = [thin_volume(23, seed=0), thin_volume(12, side=4, seed=1), thin_volume(17, seed=2)]
    labels = [
        Volume((v.array > 0).astype(np.uint8), v.spacing, v.origin, v.direction) for v in vols
    ]
    ds = PairDataset(vols, thickness=5.0, labels=labels)
    batch = next(iter(DataLoader(ds, batch_size=3, collate_fn=collate_padded)))
    thin, thick = batch["thin"], batch["thick"]
    assert thin.shape == (3, 1, 23, 6, 6) and thick.shape == (3, 1, 4, 6, 6)
    assert thin.dtype == thick.dtype == torch.float32
    assert batch["thin_shape"].tolist() == [[23, 6, 6], [12, 4, 4], [17, 6, 6]]
    assert batch["thick_shape"][:, 0].tolist() == [4, 2, 3]
    for b, v in enumerate(vols):
        d, h, w = v.shape
        np.testing.assert_array_equal(thin[b, 0, :d, :h, :w].numpy(), v.array)
        assert batch["thin_valid"][b].sum() == d * h * w
        assert (thin[b][~batch["thin_valid"][b].expand_as(thin[b])] == -1).all()
    assert (thick[1, 0, 2:] == -1).all() and (thick[1, 0, :, 4:] == -1).all()
    assert not batch["thick_valid"][1, 0, 2:].any() and batch["thick_valid"][1, 0, :2, :4, :4].all()
    assert (
        batch["thin_label"].dtype == torch.uint8 and batch["thick_label_valid"].dtype == torch.bool
    )
    assert batch["index"].tolist() == [0, 1, 2]


def test_collate_numpy_scalars_and_ids():
    batch = collate_padded(
        [
            {"x": np.zeros((1, 2), np.float32), "c": 1, "id": "a", "t": torch.tensor(3)},
            {"x": np.zeros((1, 3), np.float32), "c": 0, "id": "b", "t": torch.tensor(4)},
        ]
    )
    assert batch["x"].shape == (2, 1, 3) and batch["x"][0, 0, 2] == -1
    assert batch["c"].tolist() == [1, 0] and batch["id"] == ["a", "b"]
    assert batch["t"].tolist() == [3, 4]


def test_pair_dataset_rejects_mismatched_labels():
    v = thin_volume(10)
    bad = Volume(np.zeros((9, 6, 6), np.uint8), v.spacing, v.origin, v.direction)
    with pytest.raises(DataError, match="label volume 0"):
        PairDataset([v], 5.0, labels=[bad])
    with pytest.raises(DataError, match="1 label volumes for 2"):
        PairDataset([v, v], 5.0, labels=[v])


def test_pair_dataset_refuses_labels_a_uint8_cast_would_corrupt():
    v = thin_volume(10)
    for value in (0.7, 256.0, -1.0):
        lab = Volume(np.full(v.shape, value, np.float32), v.spacing, v.origin, v.direction)
        with pytest.raises(DataError, match="not an integer label"):
            PairDataset([v], 5.0, labels=[lab])[0]
    ok = Volume(np.full(v.shape, 3.0, np.float32), v.spacing, v.origin, v.direction)
    assert PairDataset([v], 5.0, labels=[ok])[0]["thin_label"].unique().tolist() == [3]
