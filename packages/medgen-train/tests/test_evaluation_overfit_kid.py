"""Train-vs-validation KID during training: its maths equal the distribution module's KID on
fixed features, memorised samples give a positive gap, the schedule, rank handling, off by
default, and a tiny run that logs kid_train / kid_val / kid_gap at the due evaluation."""

import csv

import numpy as np
import pytest

from medgen.train.cli import main
from medgen.train.evaluation.distribution import kid
from medgen.train.evaluation.features import Extractor
from medgen.train.evaluation.overfit import NAMES, OverfitKID, train_val_kid
from medgen.train.tasks.diffusion.config import DiffusionConfig

TINY = [
    "model.channels=16,32",
    "model.attention_levels=false,false",
    "training.steps=2",
    "training.batch_size=4",
    "training.warmup_steps=1",
    "task.eval_samples=4",
    "data.recipe.size=16",
    "data.recipe.n_bins=4",
    "training.eval_every=1",
]


def feats(seed, n=40, d=6, shift=0.0):
    return np.random.default_rng(seed).normal(size=(n, d)) + shift


def test_values_equal_the_distribution_kid_on_fixed_features():
    gen, train, val = feats(0), feats(1), feats(2, shift=0.3)
    out = train_val_kid(gen, train, val, subsets=5, subset_size=30, seed=4)
    k_train = kid(gen, train, subsets=5, subset_size=30, seed=4)["mean"]
    k_val = kid(gen, val, subsets=5, subset_size=30, seed=4)["mean"]
    assert out == {"kid_train": k_train, "kid_val": k_val, "kid_gap": k_val - k_train}


def test_memorised_samples_are_closer_to_train_than_val():
    train = feats(1, n=60)
    val = feats(2, n=60)  # the same distribution, other items
    memorised = train + 0.01 * feats(3, n=60)
    out = train_val_kid(memorised, train, val)
    assert out["kid_train"] < out["kid_val"] and out["kid_gap"] > 0
    fresh = train_val_kid(feats(4, n=60), train, val)
    assert abs(fresh["kid_gap"]) < out["kid_gap"]


class Ctx:
    def __init__(self, is_main):
        self.is_main = is_main


def evaluator(every=2, eval_every=5, last=12):
    rng = np.random.default_rng(0)
    train = np.tanh(rng.normal(size=(12, 1, 8, 8))).astype(np.float32)
    val = np.tanh(rng.normal(size=(12, 1, 8, 8)) + 0.5).astype(np.float32)
    calls = []

    def generate(modules, ema):
        calls.append(1)
        return train + 0.01

    ev = OverfitKID(
        generate,
        lambda: train,
        lambda: val,
        Extractor("random:0"),
        every=every,
        eval_every=eval_every,
        last_step=last,
    )
    return ev, calls, (train, val)


def test_schedule_ranks_and_extracted_features():
    ev, calls, (train, val) = evaluator()
    assert ev.metric_names() == NAMES
    assert [s for s in range(1, 13) if ev.due(s)] == [10, 12]
    assert ev.evaluate({}, {}, 5, Ctx(True)).sums == {} and not calls
    assert ev.evaluate({}, {}, 10, Ctx(False)).sums == {k: (0.0, 0.0) for k in NAMES}
    sums = ev.evaluate({}, {}, 10, Ctx(True)).sums
    e = Extractor("random:0")
    want = train_val_kid(*(e.extract(x)["2d"][:, 0] for x in (train + 0.01, train, val)))
    assert {k: v for k, (v, _) in sums.items()} == pytest.approx(want, rel=1e-12)
    assert all(c == 1.0 for _, c in sums.values()) and sums["kid_gap"][0] > 0
    assert OverfitKID(None, None, None, None, every=3, eval_every=0, last_step=9).due(4)


def test_off_by_default():
    assert DiffusionConfig().overfit_kid_every == 0


def read_eval(path):
    with path.open() as fh:
        return list(csv.DictReader(fh))


def test_a_tiny_run_logs_the_kids_at_the_due_evaluation(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDGEN_CACHE_DIR", str(tmp_path / "caches"))
    over = [
        "task.overfit_kid_every=2",
        "task.overfit_kid_samples=4",
        "task.overfit_kid_steps=2",
        "data.eval_split=train",
    ]
    assert main(["fit", "quickstart", *TINY, *over, "--out", str(tmp_path / "on"), "--quiet"]) == 0
    rows = read_eval(tmp_path / "on" / "eval.csv")
    assert [r["step"] for r in rows] == ["1", "2"]
    assert rows[0]["kid_train"] == "" and all(np.isfinite(float(rows[1][k])) for k in NAMES)
    gap = float(rows[1]["kid_val"]) - float(rows[1]["kid_train"])
    assert float(rows[1]["kid_gap"]) == pytest.approx(gap)
    assert (
        main(
            [
                "fit",
                "quickstart",
                *TINY,
                "data.eval_split=train",
                "--out",
                str(tmp_path / "off"),
                "--quiet",
            ]
        )
        == 0
    )
    assert "kid_train" not in read_eval(tmp_path / "off" / "eval.csv")[0]


def test_bad_settings_name_the_key(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MEDGEN_CACHE_DIR", str(tmp_path / "caches"))
    code = main(
        [
            "fit",
            "quickstart",
            *TINY,
            "task.overfit_kid_every=1",
            "data.eval_split=",
            "--out",
            str(tmp_path / "a"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "task.overfit_kid_every: 1" in err and "no validation split" in err
    code = main(
        [
            "fit",
            "quickstart",
            *TINY,
            "task.overfit_kid_every=1",
            "task.overfit_kid_features=inception:x",
            "data.eval_split=train",
            "--out",
            str(tmp_path / "b"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "task.overfit_kid_features" in err and "unknown extractor" in err
