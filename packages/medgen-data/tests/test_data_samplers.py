from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from medgen.data import DataError
from medgen.data.loading.samplers import (
    ClassBalancedSampler,
    GroupedBatchSampler,
    ResumableBatchSampler,
    oversampled_indices,
    oversampled_share,
)

# seed 000 (JS-DDPM): 916 lesion slices (12.2 %) and 6623 healthy ones
N_LESION, N_HEALTHY = 916, 6623


def seed_labels():
    labels = np.zeros(N_LESION + N_HEALTHY, dtype=np.int64)
    labels[np.random.default_rng(0).choice(labels.size, N_LESION, replace=False)] = 1
    return labels


def test_seed_000_oversampling_5x_lifts_lesion_share_12_to_41_percent():
    labels = seed_labels()
    assert labels.mean() == pytest.approx(0.1215, abs=5e-4)
    sampler = ClassBalancedSampler(labels, factor=5, seed=0)
    epoch = list(sampler)
    share = labels[epoch].mean()
    # the closed form p f / (p f + 1 - p), exactly, over a whole epoch
    assert share == oversampled_share(N_LESION, N_HEALTHY, 5) == 4580 / 11203
    assert share == pytest.approx(0.41, abs=0.005)
    assert len(epoch) == len(sampler) == 5 * N_LESION + N_HEALTHY
    counts = Counter(epoch)
    assert {counts[i] for i in np.flatnonzero(labels)} == {5}
    assert {counts[i] for i in np.flatnonzero(labels == 0)} == {1}


def test_oversampled_indices_order_and_errors():
    assert oversampled_indices([0, 1, 0, 2], 3, positive=(1, 2)).tolist() == [
        0,
        1,
        1,
        1,
        2,
        3,
        3,
        3,
    ]
    with pytest.raises(DataError, match="factor"):
        oversampled_indices([0, 1], 0)
    with pytest.raises(DataError, match="factor"):
        oversampled_indices([0, 1], 2.5)


# 10 items -> 13 epoch entries, 12 -> 15 (odd: padded, or one dropped), 11 -> 14 (even)
@pytest.mark.parametrize(
    "n_items,drop_last", [(10, False), (11, False), (11, True), (12, True), (12, False)]
)
def test_class_balanced_sampler_ddp_shards_two_ranks(n_items, drop_last):
    labels = (np.arange(n_items) % 4 == 0).astype(int)
    ranks = [
        ClassBalancedSampler(labels, 2, seed=7, rank=r, world_size=2, drop_last=drop_last)
        for r in range(2)
    ]
    for epoch in (0, 1):
        for s in ranks:
            s.set_epoch(epoch)
        shards = [list(s) for s in ranks]
        order = ranks[0].epoch_order()
        assert order == ranks[1].epoch_order()  # same epoch on every rank
        assert len(shards[0]) == len(shards[1]) == len(ranks[0])
        interleaved = [x for pair in zip(*shards, strict=True) for x in pair]
        n = len(order)
        if drop_last:  # strictly disjoint positions, at most world_size - 1 dropped
            assert interleaved == order[: n - n % 2]
        else:  # covers the epoch; padding repeats at most world_size - 1 positions
            assert interleaved[:n] == order and len(interleaved) - n < 2
    ranks[0].set_epoch(0)
    first = list(ranks[0])
    ranks[0].set_epoch(1)
    assert list(ranks[0]) != first
    ranks[0].set_epoch(0)
    assert list(ranks[0]) == first  # deterministic per seed + epoch


def groups_fixture():
    # three modes with 7, 5 and 4 items, interleaved
    return np.array(["t1"] * 7 + ["t2"] * 5 + ["flair"] * 4)[
        np.random.default_rng(1).permutation(16)
    ]


def test_grouped_batches_hold_one_group_and_cover_the_epoch():
    groups = groups_fixture()
    sampler = GroupedBatchSampler(groups, batch_size=3, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 3 + 2 + 2
    for b in batches:
        assert len({groups[i] for i in b}) == 1 and 1 <= len(b) <= 3
    assert sorted(i for b in batches for i in b) == list(range(16))
    sampler.set_epoch(1)
    assert list(sampler) != batches


def test_grouped_batches_drop_last_keeps_only_full_batches():
    sampler = GroupedBatchSampler(groups_fixture(), batch_size=3, drop_last=True)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 2 + 1 + 1
    assert all(len(b) == 3 for b in batches)


@pytest.mark.parametrize("batch_size,drop_last", [(3, False), (2, False), (3, True)])
def test_grouped_batch_sampler_ddp_two_ranks(batch_size, drop_last):
    groups = groups_fixture()
    ranks = [
        GroupedBatchSampler(groups, batch_size, seed=3, rank=r, world_size=2, drop_last=drop_last)
        for r in range(2)
    ]
    for epoch in (0, 5):
        for s in ranks:
            s.set_epoch(epoch)
        shards = [list(s) for s in ranks]
        order = ranks[0].epoch_batches()
        assert order == ranks[1].epoch_batches()
        assert len(shards[0]) == len(shards[1]) == len(ranks[1])  # same number of steps
        interleaved = [b for pair in zip(*shards, strict=True) for b in pair]
        n = len(order)
        if drop_last:
            assert interleaved == order[: n - n % 2]
            seen = [i for b in interleaved for i in b]
            assert len(seen) == len(set(seen))  # strictly disjoint
        else:
            assert interleaved[:n] == order and len(interleaved) - n < 2
            assert {i for b in interleaved for i in b} == set(range(16))
        for b in interleaved:
            assert len({groups[i] for i in b}) == 1


def test_grouped_with_oversampled_items_and_dataloader():
    labels = np.array([1, 0, 0, 0, 1, 0, 0, 0])
    groups = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    items = oversampled_indices(labels, 3)
    sampler = GroupedBatchSampler(groups, 2, items=items, seed=0)
    batches = list(sampler)
    flat = [i for b in batches for i in b]
    assert Counter(flat) == Counter(items.tolist())
    ds = TensorDataset(torch.arange(8), torch.as_tensor(groups))
    for idx, grp in DataLoader(ds, batch_sampler=sampler):
        assert grp.unique().numel() == 1 and len(idx) <= 2


def test_sampler_argument_errors():
    with pytest.raises(DataError, match="rank 2"):
        ClassBalancedSampler([0, 1], 2, rank=2, world_size=2)
    with pytest.raises(DataError, match="batch_size"):
        GroupedBatchSampler([0, 1], 0)
    with pytest.raises(DataError, match="items must index"):
        GroupedBatchSampler([0, 1], 1, items=[0, 2])
    s = ClassBalancedSampler([0, 1, 1], 2)
    assert (s.rank, s.world_size) == (0, 1)  # no process group: a single rank


# ------------------------------------------------------------------ ResumableBatchSampler


def flat(batches):
    return [entry for batch in batches for entry in batch]


@pytest.mark.parametrize("groups", [None, np.arange(50) % 3])
def test_two_ranks_of_b_see_exactly_what_one_rank_of_2b_sees(groups):
    labels = (np.arange(50) % 5 == 0).astype(int)
    kw = dict(seed=11, labels=labels, oversample=3, groups=groups)
    one = ResumableBatchSampler(50, 8, **kw)
    ranks = [ResumableBatchSampler(50, 4, rank=r, world_size=2, **kw) for r in range(2)]
    for epoch in (0, 3):
        for s in (one, *ranks):
            s.epoch = epoch
        big, halves = list(one), [list(s) for s in ranks]
        assert len(big) == len(halves[0]) == len(halves[1]) == one.batches_per_epoch()
        for step, batch in enumerate(big):
            assert batch == halves[0][step] + halves[1][step]  # items and their seeds
    entries = 50 + 2 * 10  # 10 positives listed 3 times
    if groups is None:
        assert one.batches_per_epoch() == entries // 8
    for batch in big:
        assert all(isinstance(i, int) and isinstance(s, int) for i, s in batch)
        if groups is not None:
            assert len({groups[i] for i, _ in batch}) == 1  # one group per global batch


def test_epoch_order_is_a_seeded_permutation_of_the_oversampled_entries():
    labels = np.array([1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0])  # 3 positives of 12
    s = ResumableBatchSampler(12, 3, seed=4, labels=labels, oversample=4)
    items = [i for i, _ in flat(s)]
    assert Counter(items) == Counter(oversampled_indices(labels, 4).tolist())  # 21 = 7 x 3
    assert labels[items].mean() == oversampled_share(3, 9, 4) == 12 / 21
    s.epoch = 1
    assert [i for i, _ in flat(s)] != items
    s.epoch = 0
    assert [i for i, _ in flat(s)] == items
    plain = ResumableBatchSampler(12, 5, shuffle=False)
    assert [i for i, _ in flat(plain)] == list(range(10))  # ragged tail of 2 dropped


def test_item_seeds_are_seedsequence_of_seed_epoch_and_position():
    s = ResumableBatchSampler(10, 2, seed=9, rank=1, world_size=2)
    s.epoch = 2
    order = s.epoch_batches(2).ravel()
    for step, batch in enumerate(s):
        for p, (item, seed) in enumerate(batch):
            position = step * 4 + 2 + p  # rank 1 takes entries [2, 4) of each global batch
            assert item == order[position]
            assert seed == np.random.SeedSequence([9, 2, position]).generate_state(1)[0]


def test_restart_at_epoch_and_start_yields_the_rest_of_the_uninterrupted_epoch():
    labels = np.arange(40) % 4 == 0
    kw = dict(seed=3, labels=labels.astype(int), oversample=2, rank=1, world_size=2)
    full = ResumableBatchSampler(40, 3, **kw)
    full.epoch = 5
    expected = list(full)
    for start in (0, 1, 4, len(expected)):
        resumed = ResumableBatchSampler(40, 3, **kw)
        resumed.load_state_dict({"epoch": 5, "start": start, "seed": 3})
        assert len(resumed) == len(expected) - start
        assert list(resumed) == expected[start:]
        assert resumed.state_dict() == {"epoch": 5, "start": start, "seed": 3}
    restored = ResumableBatchSampler(40, 3, **{**kw, "seed": 0})
    restored.load_state_dict(full.state_dict())
    assert list(restored) == expected  # the checkpointed seed wins


def test_resumable_sampler_errors():
    with pytest.raises(
        DataError,
        match="batch_size: an epoch of 7 entries holds no full global batch of 4 x 2 ranks = 8",
    ):
        ResumableBatchSampler(7, 4, world_size=2)
    with pytest.raises(DataError, match="within one group"):
        ResumableBatchSampler(8, 4, groups=[0, 1, 2, 3] * 2)
    with pytest.raises(DataError, match="rank 2 is not in"):
        ResumableBatchSampler(8, 2, rank=2, world_size=2)
    with pytest.raises(DataError, match="labels: 3 labels for 8 items"):
        ResumableBatchSampler(8, 2, labels=[0, 1, 0])
    with pytest.raises(DataError, match="oversample: 2 needs labels"):
        ResumableBatchSampler(8, 2, oversample=2)
    s = ResumableBatchSampler(8, 2)
    with pytest.raises(DataError, match="sampler state start: expected an integer >= 0"):
        s.load_state_dict({"epoch": 0, "start": -1, "seed": 0})
    with pytest.raises(DataError, match="sampler state seed"):
        s.load_state_dict({"epoch": 0, "start": 0})
    with pytest.raises(DataError, match="start: 5 is past the 4 batches"):
        s.load_state_dict({"epoch": 0, "start": 5, "seed": 0})
