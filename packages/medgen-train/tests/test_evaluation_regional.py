"""Lesion sizes and per-bin metrics: Feret diameters of rasterised shapes against their
geometry (within one voxel), RANO-BM bins of planted lesions, per-bin Dice / detection."""

import numpy as np
import pytest

from medgen.train.evaluation.regional import (
    feret_diameter,
    lesions,
    regional_metrics,
    size_bin,
    size_bin_counts,
)


def grid(shape):
    return np.stack(np.meshgrid(*[np.arange(n) - (n - 1) / 2 for n in shape], indexing="ij"))


@pytest.mark.parametrize("diameter", [3.0, 7.0, 12.5, 20.0, 31.0])
@pytest.mark.parametrize("spacing", [(1.0, 1.0), (0.5, 0.5)])
def test_disc_and_sphere(diameter, spacing):
    s = spacing[0]
    n = int(diameter / s) + 5
    yx = grid((n, n)) * s
    disc = (yx**2).sum(0) <= (diameter / 2) ** 2
    assert abs(feret_diameter(disc, spacing) - diameter) <= s
    zyx = grid((n, n, n)) * s
    ball = (zyx**2).sum(0) <= (diameter / 2) ** 2
    assert abs(feret_diameter(ball, (s, s, s)) - diameter) <= s


@pytest.mark.parametrize("side", [1, 2, 5, 11])
def test_square_and_box(side):
    sq = np.zeros((side + 4, side + 6), bool)
    sq[2 : 2 + side, 3 : 3 + side] = True
    assert abs(feret_diameter(sq, (1.0, 1.0)) - side * np.sqrt(2)) <= 1.0
    box = np.zeros((side + 2, side + 2, 2 * side + 2), bool)
    box[1:-1, 1:-1, 1:-1] = True  # side x side x 2 side
    assert abs(feret_diameter(box, (1.0, 1.0, 1.0)) - side * np.sqrt(6)) <= 1.0


@pytest.mark.parametrize("axes", [(10.0, 4.0), (25.0, 9.0)])
def test_ellipse_with_anisotropic_spacing(axes):
    a, b = axes  # semi-axes in mm, x and y
    spacing = (0.5, 1.0)  # (y, x)
    yx = grid((int(2 * b / 0.5) + 6, int(2 * a) + 6))
    y, x = yx[0] * spacing[0], yx[1] * spacing[1]
    ell = (x / a) ** 2 + (y / b) ** 2 <= 1
    assert abs(feret_diameter(ell, spacing) - 2 * a) <= 1.0
    assert feret_diameter(np.ones((1, 1), bool), spacing) == 1.0


@pytest.mark.parametrize("n", [1, 4, 9])
def test_lines_measure_exactly_along_each_axis(n):
    line = np.ones((n, 1), bool)  # along y, spacing 0.5 mm
    assert feret_diameter(line, (0.5, 1.0)) == pytest.approx(max(n * 0.5, 1.0 if n == 1 else 0))
    assert feret_diameter(line.T, (0.5, 1.0)) == pytest.approx(n * 1.0)
    if n > 1:
        diag = np.eye(n, dtype=bool)  # centres (n - 1) sqrt 2 apart, plus one voxel
        assert feret_diameter(diag, (1.0, 1.0)) == pytest.approx((n - 1) * np.sqrt(2) + 1)


def test_bins_of_planted_lesions_and_per_bin_metrics():
    yx = grid((100, 100))
    truth = np.zeros((100, 100), bool)
    centres = {"tiny": (-35, -35), "small": (-30, 20), "medium": (20, -25), "large": (25, 25)}
    diam = {"tiny": 6, "small": 15, "medium": 25, "large": 40}
    for name, (cy, cx) in centres.items():
        truth |= (yx[0] - cy) ** 2 + (yx[1] - cx) ** 2 <= (diam[name] / 2) ** 2
    found = sorted(les["bin"] for les in lesions(truth, (1.0, 1.0)))
    assert found == sorted(centres)
    assert size_bin_counts(truth, (0.5, 0.5)) == {"tiny": 2, "small": 1, "medium": 1, "large": 0}
    assert [size_bin(x) for x in (9.99, 10.0, 29.9, 30.0)] == ["tiny", "small", "medium", "large"]
    pred = truth.copy()
    cy, cx = centres["small"]
    pred[(yx[0] - cy) ** 2 + (yx[1] - cx) ** 2 <= 64] = False  # miss the small lesion
    pred[:, :50] &= yx[0][:, :50] < 0  # keep the top half of the left side: medium lost
    image = np.zeros((1, 100, 100))
    ref = image + truth * 0.5  # error 0.25 inside lesions, 0 outside
    out = regional_metrics([truth], [pred], (1.0, 1.0), [image], [ref])
    assert out["tiny"]["detection_rate"] == 1.0 and out["tiny"]["dice"] == 1.0
    assert out["small"]["detection_rate"] == 0.0 and out["small"]["dice"] == 0.0
    assert out["medium"]["detection_rate"] == 0.0
    assert out["large"]["iou"] == 1.0
    assert out["large"]["mse_lesion"] == pytest.approx(0.25)
    assert out["background"]["mse"] == 0.0
