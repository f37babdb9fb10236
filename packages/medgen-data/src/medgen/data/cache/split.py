"""Subject-level train/val/test split: seeded, stratified by subject class, fixed where given.

Subjects whose table row names a split keep it. The others are split here: with ``n`` of them,
a split with fraction ``f > 0`` gets ``max(1, floor(n f + 1/2))`` subjects and train keeps the
rest, which must be at least one. The held-out count (val + test) is shared out over the
subject classes in proportion to their sizes (largest remainders; ties to the class with more
room, then the smaller class id), then the test count the same way within the held-out
subjects, and val takes the rest of them. Within a class the subjects (ordered by pseudonym,
then permuted with ``numpy.random.default_rng(seed)``) go to test first, then val, then train.
So the split depends on the seed, the fractions and the subjects' pseudonyms and classes,
never on the order the sources list them in.
"""

from __future__ import annotations

import math

import numpy as np

from medgen.data.errors import DataError

SPLITS = ("train", "val", "test")


def split_counts(n: int, val_fraction: float, test_fraction: float) -> dict[str, int]:
    """How many of ``n`` subjects go to each split (see the module docstring)."""
    counts = {}
    for name, fraction in (("val", val_fraction), ("test", test_fraction)):
        counts[name] = max(1, math.floor(n * fraction + 0.5)) if fraction > 0 else 0
    counts["train"] = n - counts["val"] - counts["test"]
    if counts["train"] < 1:
        raise DataError(
            f"val_fraction: {n} subject{'s' if n != 1 else ''} to split cannot give val "
            f"{counts['val']} and test {counts['test']} and keep at least one for train"
        )
    return counts


def apportion(total: int, sizes: dict[int, int], caps: dict[int, int]) -> dict[int, int]:
    """Share ``total`` over classes in proportion to ``sizes`` (largest remainders first; ties
    to the class with more room under its cap, then the smaller class id), giving class ``c``
    at most ``caps[c]``."""
    n = sum(sizes.values())
    quota = {c: total * s / n for c, s in sizes.items()}
    out = {c: min(caps[c], math.floor(q)) for c, q in quota.items()}
    order = sorted(sizes, key=lambda c: (math.floor(quota[c]) - quota[c], -caps[c], c))
    while sum(out.values()) < total:
        room = [c for c in order if out[c] < caps[c]]
        if not room:
            raise DataError(f"cannot place {total} subjects into classes of sizes {sizes}")
        for c in room[: total - sum(out.values())]:
            out[c] += 1
    return out


def assign_splits(
    classes: dict[str, int],
    fixed: dict[str, str],
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> dict[str, str]:
    """``{pseudonym: split}`` for the subjects in ``classes`` (``{pseudonym: subject class}``).

    ``fixed`` gives the split of subjects whose table names one (others: "" or absent).
    """
    free = sorted(p for p in classes if not fixed.get(p))
    out = {p: fixed[p] for p in classes if fixed.get(p)}
    if not free:
        return out
    counts = split_counts(len(free), val_fraction, test_fraction)
    by_class: dict[int, list[str]] = {}
    for p in free:
        by_class.setdefault(classes[p], []).append(p)
    sizes = {c: len(m) for c, m in sorted(by_class.items())}
    held = apportion(counts["val"] + counts["test"], sizes, sizes)
    test = apportion(counts["test"], sizes, held)
    val = {c: held[c] - test[c] for c in sizes}
    rng = np.random.default_rng(seed)
    for c, members in sorted(by_class.items()):
        order = [members[i] for i in rng.permutation(len(members))]
        for i, p in enumerate(order):
            out[p] = "test" if i < test[c] else "val" if i < test[c] + val[c] else "train"
    return out
