"""Distribution metrics and their bootstrap intervals against independent references:
scipy's ``sqrtm`` closed form and torchmetrics' FID / KID maths on the same features, MMD by
explicit double sums, BCa against ``scipy.stats.bootstrap``, and interval coverage by
simulation on Gaussians whose FID is known in closed form."""

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy import stats

from medgen.train.evaluation import distribution as D
from medgen.train.evaluation.bootstrap import bootstrap_ci

tm_fid = pytest.importorskip("torchmetrics.image.fid")
tm_kid = pytest.importorskip("torchmetrics.image.kid")


def features(seed=0, n=300, m=400, d=8):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * 0.5
    return a, rng.normal(size=(m, d)) * 1.3 + 0.2


def sqrtm_fid(g, r):
    m1, s1 = g.mean(0), np.cov(g, rowvar=False)
    m2, s2 = r.mean(0), np.cov(r, rowvar=False)
    root = np.real(scipy.linalg.sqrtm(s1 @ s2))
    return float(((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * root))


@pytest.mark.parametrize("d", [2, 8, 64])
def test_fid_equals_sqrtm_closed_form_and_torchmetrics(d):
    g, r = features(d, n=3 * d + 10, m=4 * d + 10, d=d)
    ours = D.fid(g, r)
    assert ours == pytest.approx(sqrtm_fid(g, r), rel=1e-6)
    stats_ = [torch.tensor(x, dtype=torch.float64) for x in (*D.mean_cov(g), *D.mean_cov(r))]
    assert ours == pytest.approx(float(tm_fid._compute_fid(*stats_)), rel=1e-6)


def test_fid_of_identical_sets_is_zero_and_too_few_samples_say_how_many():
    g, _ = features(n=50, d=8)
    assert abs(D.fid(g, g)) < 1e-9
    with pytest.raises(D.SampleSizeError, match=r"needs more than 64 samples.*N = 40.*rank-defic"):
        D.fid(np.zeros((40, 64)) + np.arange(40)[:, None], np.ones((100, 64)))
    rng = np.random.default_rng(0)
    with pytest.raises(D.SampleSizeError, match="N = 8"):
        D.fid(rng.normal(size=(8, 8)), rng.normal(size=(20, 8)))
    assert np.isfinite(D.fid(rng.normal(size=(9, 8)), rng.normal(size=(20, 8))))
    with pytest.raises(ValueError, match="dimension 8 but reference features 4"):
        D.fid(g, g[:, :4])


def test_kid_equals_torchmetrics_poly_mmd_on_the_same_subsets():
    g, r = features(1, n=120, m=150, d=16)
    out = D.kid(g, r, subsets=20, subset_size=50, seed=3)
    subs = D.kid_subsets(len(g), len(r), 20, 50, 3)
    tg, tr = torch.tensor(g), torch.tensor(r)
    theirs = torch.stack([tm_kid.poly_mmd(tr[b], tg[a]) for a, b in subs])
    assert out["mean"] == pytest.approx(float(theirs.mean()), rel=1e-10)
    assert out["std"] == pytest.approx(float(theirs.std(unbiased=False)), rel=1e-10)


def test_mmd_equals_explicit_double_sums_on_tiny_sets():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(4, 3)), rng.normal(size=(5, 3)) + 1

    def k_poly(a, b):
        return (a @ b / 3 + 1) ** 3

    def k_rbf(a, b):
        return np.exp(-((a - b) ** 2).sum() / 200)

    def u_stat(k):
        xx = sum(k(x[i], x[j]) for i in range(4) for j in range(4) if i != j) / 12
        yy = sum(k(y[i], y[j]) for i in range(5) for j in range(5) if i != j) / 20
        return xx + yy - 2 * sum(k(a, b) for a in x for b in y) / 20

    def v_stat(k):
        xx = sum(k(a, b) for a in x for b in x) / 16
        yy = sum(k(a, b) for a in y for b in y) / 25
        return xx + yy - 2 * sum(k(a, b) for a in x for b in y) / 20

    assert D.mmd2_unbiased(*D.kernels(x, y, D.poly_kernel)) == pytest.approx(u_stat(k_poly))
    assert D.cmmd(x, y) == pytest.approx(1000 * v_stat(k_rbf), rel=1e-10)
    kid = D.kid(x, y, subsets=3, subset_size=4, seed=0)
    assert np.isfinite(kid["mean"]) and kid["subset_size"] == 4


def test_precision_recall_equal_brute_force_loops():
    rng = np.random.default_rng(4)
    g, r = rng.normal(size=(30, 2)), rng.normal(size=(25, 2)) + 0.7

    def covered(points, centres):
        radii = [sorted(np.linalg.norm(centres - c, axis=1))[3] for c in centres]
        inside = [any(np.linalg.norm(p - c) <= rc for c, rc in zip(centres, radii, strict=True))
                  for p in points]  # fmt: skip
        return np.mean(inside)

    out = D.precision_recall(g, r)
    assert out["precision"] == pytest.approx(covered(g, r))
    assert out["recall"] == pytest.approx(covered(r, g))
    assert D.precision_recall(g, g) == {"precision": 1.0, "recall": 1.0, "k": 3}


def test_bca_equals_scipy_bootstrap_within_monte_carlo_error():
    rng = np.random.default_rng(5)
    x, y = rng.exponential(size=80), rng.exponential(size=60) * 1.5
    mine = bootstrap_ci(lambda gi, ri: np.log(x[gi].mean() / y[ri].mean()), 80, 60,
                        n_boot=20000, jackknife_groups=1000, seed=1)  # fmt: skip
    ref = stats.bootstrap((x, y), lambda a, b, axis=-1: np.log(a.mean(axis) / b.mean(axis)),
                          n_resamples=20000, method="BCa", rng=1,
                          vectorized=True).confidence_interval  # fmt: skip
    assert mine["bca"] == pytest.approx([ref.low, ref.high], abs=0.01)
    assert mine["n_generated"] == 80 and mine["n_reference"] == 60 and mine["seed"] == 1


def test_intervals_cover_a_known_fid_in_90_to_98_percent_of_200_repetitions():
    sig, delta = np.array([1.0, 1.5]), np.array([1.5, 1.0])
    true = float((delta**2).sum() + ((1 - sig) ** 2).sum())  # Gaussians: closed form
    hits = {"percentile": 0, "bca": 0}
    reps = 200
    for rep in range(reps):
        rng = np.random.default_rng(1000 + rep)
        g, r = rng.normal(size=(500, 2)), rng.normal(size=(500, 2)) * sig + delta
        ci = D.distribution_metrics(g, r, n_boot=200, seed=rep, metrics=("fid",))["fid"]
        for m in hits:
            hits[m] += ci[m][0] <= true <= ci[m][1]
    for m, h in hits.items():
        assert 0.90 <= h / reps <= 0.98, (m, h / reps)


def test_all_metrics_with_intervals_on_units_of_several_rows():
    g, r = features(6, n=60, m=80, d=4)
    out = D.distribution_metrics(g.reshape(20, 3, 4), r.reshape(20, 4, 4), n_boot=20)
    assert out["fid"]["estimate"] == pytest.approx(D.fid(g, r))
    assert out["cmmd"]["estimate"] == pytest.approx(D.cmmd(g, r))
    assert out["kid"]["mmd2_full"] == pytest.approx(
        D.mmd2_unbiased(*D.kernels(g, r, D.poly_kernel))
    )
    p = D.precision_recall(g, r)
    assert out["precision"]["estimate"] == p["precision"]
    assert out["recall"]["estimate"] == p["recall"]
    for m in ("fid", "kid", "cmmd", "precision", "recall"):
        lo, hi = out[m]["percentile"]
        assert lo <= hi and out[m]["n_generated"] == 20 and out[m]["n_reference"] == 20
