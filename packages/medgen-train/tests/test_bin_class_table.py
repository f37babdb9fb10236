"""The per z-bin x class table of an evaluation (report.html and evaluation.md), against numpy's
mean and (population) std of the per-sample scores of each group."""

import math

import numpy as np

from medgen.train.reports.evaluation import evaluation_markdown
from medgen.train.reports.evaluation_blocks import bin_class_blocks


def sample(i, b, c, matched="bin+class"):
    rng = np.random.default_rng(i)
    return {"index": i, "z_bin": b, "class_id": c, "nearest": 0, "matched_on": matched,
            "psnr": float(rng.uniform(5, 30)), "ssim": float(rng.uniform(-0.1, 1)),
            "dice": float(rng.uniform(0, 1)), "laplacian_ratio": 1.0, "speckled": i % 3 == 0}  # fmt: skip


def test_groups_are_means_and_stds_by_hand():
    per_sample = [sample(0, 1, 0), sample(1, 0, 1, "bin"), sample(2, 1, 0), sample(3, 0, 1),
                  sample(4, 0, 0), sample(5, 1, 0)]  # fmt: skip
    per_sample[5]["ssim"] = math.nan  # non-finite values are left out of the mean
    _, table = bin_class_blocks({"per_sample": per_sample})
    assert table.head[:6] == ["z-bin", "class", "n", "SSIM", "PSNR (dB)", "mask Dice"]
    assert [r[:3] for r in table.rows] == [["0", "0", "1"], ["0", "1", "2"], ["1", "0", "3"]]
    groups = {(0, 0): [4], (0, 1): [1, 3], (1, 0): [0, 2, 5]}
    for row, members in zip(table.rows, groups.values(), strict=True):
        for col, key, digits in ((3, "ssim", 3), (4, "psnr", 2), (5, "dice", 3)):
            v = np.array([per_sample[i][key] for i in members])
            v = v[np.isfinite(v)]
            assert row[col] == f"{v.mean():.{digits}f} ± {v.std():.{digits}f}"
        assert row[6] == str(sum(per_sample[i]["speckled"] for i in members))
    assert [r[7] for r in table.rows] == ["0", "1", "0"]  # sample 1 matched on its bin alone


def test_in_evaluation_markdown_and_absent_without_samples():
    result = {"samples": "s", "reference": "c:val", "n_reference": 3, "per_class": {},
              "per_bin": {}, "speckle_rule": "r", "bin_mean_reference_ssim": 0.5,
              "per_sample": [sample(0, 2, 1)]}  # fmt: skip
    result["overall"] = {"n": 1, "ssim": {"mean": 0.1, "std": 0.0}, "psnr": {"mean": 9, "std": 0},
                         "dice": {"mean": 0.2, "std": 0.0}, "speckled": 1}  # fmt: skip
    md = evaluation_markdown(result)
    assert "### Nearest-real scores per z-bin and class" in md and "| 2 | 1 | 1 |" in md
    assert bin_class_blocks({"per_sample": []}) == []
    no_dice = [{**sample(0, 0, 0), "dice": None}]
    assert "mask Dice" not in bin_class_blocks({"per_sample": no_dice})[1].head
