"""Subject-level split: closed-form counts, stratification, determinism, fixed splits."""

from collections import Counter

import numpy as np
import pytest

from medgen.data import DataError
from medgen.data.cache.split import apportion, assign_splits, split_counts


def subjects(n_per_class: dict[int, int]) -> dict[str, int]:
    rng = np.random.default_rng(42)
    out = {}
    for c, n in n_per_class.items():
        for _ in range(n):
            out[rng.bytes(8).hex()] = c
    return out


def tally(classes, splits):
    return {
        name: Counter(classes[p] for p, s in splits.items() if s == name)
        for name in ("train", "val", "test")
    }


@pytest.mark.parametrize(
    "n,val,test,expected",
    [
        (10, 0.2, 0.2, (6, 2, 2)),
        (10, 0.15, 0.0, (8, 2, 0)),  # floor(1.5 + 0.5) = 2
        (10, 0.14, 0.0, (9, 1, 0)),
        (3, 0.01, 0.01, (1, 1, 1)),  # a fraction > 0 gives at least one subject
        (7, 0.0, 0.3, (5, 0, 2)),
    ],
)
def test_split_counts_closed_form(n, val, test, expected):
    c = split_counts(n, val, test)
    assert (c["train"], c["val"], c["test"]) == expected


def test_too_few_subjects_is_an_error_naming_the_key():
    with pytest.raises(DataError, match="^val_fraction: 2 subjects to split cannot give val 1"):
        split_counts(2, 0.1, 0.1)


def test_stratified_counts_follow_the_class_shares():
    classes = subjects({0: 70, 1: 30})
    t = tally(classes, assign_splits(classes, {}, 0.1, 0.2, seed=0))
    assert t["test"] == {0: 14, 1: 6} and t["val"] == {0: 7, 1: 3}
    assert t["train"] == {0: 49, 1: 21}


def test_largest_remainders_and_ties():
    # 10 subjects, 6/4: held-out 4 -> 2.4/1.6 -> 2/2 (remainder .6 wins); test 2 -> 1/1
    classes = subjects({0: 6, 1: 4})
    t = tally(classes, assign_splits(classes, {}, 0.2, 0.2, seed=3))
    assert t == {"train": {0: 4, 1: 2}, "val": {0: 1, 1: 1}, "test": {0: 1, 1: 1}}
    # 5 subjects, 3/2: held-out 2 -> 1.2/0.8 -> 1/1; test 1 -> 0.6/0.4 -> class 0; val class 1
    classes = subjects({0: 3, 1: 2})
    t = tally(classes, assign_splits(classes, {}, 0.2, 0.2, seed=0))
    assert t == {"train": {0: 2, 1: 1}, "val": {1: 1}, "test": {0: 1}}
    # a tie goes to the class with more room, then to the smaller id
    assert apportion(1, {0: 3, 1: 3}, {0: 3, 1: 3}) == {0: 1, 1: 0}
    assert apportion(1, {0: 3, 1: 3}, {0: 2, 1: 3}) == {0: 0, 1: 1}
    assert apportion(3, {0: 1, 1: 9}, {0: 0, 1: 9}) == {0: 0, 1: 3}


def test_seeded_and_independent_of_listing_order():
    classes = subjects({0: 20, 1: 8, 2: 5})
    a = assign_splits(classes, {}, 0.2, 0.1, seed=7)
    reordered = dict(reversed(list(classes.items())))
    assert assign_splits(reordered, {}, 0.2, 0.1, seed=7) == a
    b = assign_splits(classes, {}, 0.2, 0.1, seed=8)
    assert b != a and Counter(b.values()) == Counter(a.values())


def test_fixed_splits_are_kept_and_the_rest_is_generated():
    classes = subjects({0: 8, 1: 2})
    names = sorted(classes)
    fixed = {names[0]: "test", names[1]: "val", names[2]: ""}
    out = assign_splits(classes, fixed, 0.25, 0.0, seed=0)
    assert out[names[0]] == "test" and out[names[1]] == "val"
    free = [p for p in names if p not in (names[0], names[1])]
    assert Counter(out[p] for p in free) == {"train": 6, "val": 2}  # 25 % of the 8 free ones
    assert assign_splits(classes, dict.fromkeys(classes, "train"), 0.5, 0.0, 0) == dict.fromkeys(
        classes, "train"
    )
