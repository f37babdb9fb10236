"""Non-finite samples: counted per group, listed by index, excluded from the metrics with the
count stated (JSON, Markdown, one warning line), never silently; all non-finite is one error.
End to end through ``evaluate`` on a tiny trained run's samples with NaNs written into them, and
the other bad input of the evaluation issue (a split that does not exist, other channels)."""

import json
import shutil

import numpy as np
import pytest

from medgen.train.cli import main
from medgen.train.config.tiny import TINY as TINY_RUN
from medgen.train.evaluation.finite import (
    NonFiniteSamplesError,
    finite_samples,
    screen_samples,
    with_original_indices,
)
from medgen.train.evaluation.nearest import SampleScore

TINY = list(TINY_RUN)


def arrays(n=6):
    rng = np.random.default_rng(0)
    return {
        "images": rng.normal(size=(n, 1, 4, 4)).astype(np.float32),
        "masks": rng.random((n, 4, 4)) > 0.5,
        "z_bin": np.array([0, 0, 1, 1, 2, 2][:n]),
        "class_id": np.zeros(n, np.int64),
        "scalar": np.float32(3.0),
    }


def test_screen_counts_lists_and_excludes():
    a = arrays()
    a["images"][1, 0, 0, 0] = np.nan
    a["images"][4, 0, 2, 1] = np.inf
    kept, report = screen_samples(a, "s")
    assert report["n_samples"] == 6 and report["n_nonfinite"] == 2 and report["indices"] == [1, 4]
    assert report["per_group"]["z-bin 0 class 0"] == {"samples": 2, "non_finite": 1}
    assert report["per_group"]["z-bin 1 class 0"] == {"samples": 2, "non_finite": 0}
    assert "2 of 6 samples" in report["warning"] and "indices 1, 4" in report["warning"]
    assert "over the other 4" in report["warning"]
    assert len(kept["images"]) == 4 and np.isfinite(kept["images"]).all()
    assert np.array_equal(kept["z_bin"], [0, 1, 1, 2]) and kept["masks"].shape == (4, 4, 4)
    assert kept["scalar"] == 3.0
    scores = [SampleScore(i, 0, 0, 0, "all", 1.0, 1.0, None, 1.0) for i in range(4)]
    assert [s.index for s in with_original_indices(scores, report)] == [0, 2, 3, 5]


def test_all_finite_has_no_warning_and_all_nonfinite_is_an_error():
    kept, report = screen_samples(arrays(), "s")
    assert report["n_nonfinite"] == 0 and report["warning"] is None and len(kept["images"]) == 6
    a = arrays()
    a["images"][:] = np.nan
    with pytest.raises(NonFiniteSamplesError, match="s: all 6 samples hold NaN or infinite"):
        screen_samples(a, "s")


def test_a_soft_mask_counts_too():
    a = arrays(2)
    a["soft"] = np.array([[0.0, np.nan], [1.0, 0.5]])
    assert finite_samples(a, 2).tolist() == [False, True]


@pytest.fixture(scope="module")
def sampled(tmp_path_factory):
    root = tmp_path_factory.mktemp("finite")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDGEN_CACHE_DIR", str(root / "caches"))
        assert main(["fit", "quickstart", *TINY, "--out", str(root / "run"), "--quiet"]) == 0
        assert (
            main(
                [
                    "sample",
                    str(root / "run"),
                    "--steps",
                    "2",
                    "--n",
                    "12",
                    "--out",
                    str(root / "s"),
                    "--no-nifti",
                    "--quiet",
                ]
            )
            == 0
        )
        yield root


def poisoned(sampled, name, bad):
    target = sampled / name
    shutil.copytree(sampled / "s", target)
    with np.load(target / "samples.npz") as npz:
        data = {k: npz[k] for k in npz.files}
    data["images"][bad] = np.nan
    np.savez(target / "samples.npz", **data)
    return target, data


def test_evaluate_reports_nonfinite_samples(sampled, capsys):
    target, _ = poisoned(sampled, "nan", [2, 7])
    assert main(["evaluate", str(target), "--out", str(sampled / "ev"), "--quiet"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("evaluate: warning: 2 of 12 samples hold NaN")
    result = json.loads((sampled / "ev" / "evaluation.json").read_text())
    nf = result["non_finite"]
    assert nf["n_nonfinite"] == 2 and nf["indices"] == [2, 7] and nf["n_samples"] == 12
    assert sum(g["non_finite"] for g in nf["per_group"].values()) == 2
    assert result["overall"]["n"] == 10
    indices = [s["index"] for s in result["per_sample"]]
    assert 2 not in indices and 7 not in indices and indices == sorted(set(range(12)) - {2, 7})
    assert "**Warning:** 2 of 12 samples" in (sampled / "ev" / "evaluation.md").read_text()
    div = result["diversity"]
    assert div["overall"]["n_samples"] == 10 and div["overall"]["n_pairs"] == 45
    assert 0 < div["overall"]["mean"] <= 1
    assert "## Diversity" in (sampled / "ev" / "evaluation.md").read_text()


def test_evaluate_refuses_all_nonfinite(sampled, capsys):
    target, _ = poisoned(sampled, "allnan", slice(None))
    code = main(["evaluate", str(target), "--out", str(sampled / "ev2"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "all 12 samples hold NaN" in err
    assert not (sampled / "ev2").exists()


def test_reference_split_that_does_not_exist_lists_the_splits(sampled, capsys):
    cache = json.loads((sampled / "s" / "manifest.json").read_text())["data"]["cache"]
    code = main(
        [
            "evaluate",
            str(sampled / "s"),
            "--reference",
            f"{cache}:nosuchsplit",
            "--out",
            str(sampled / "ev3"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "'nosuchsplit'" in err and "this cache has the splits train" in err


def test_samples_with_other_channels_name_both_shapes(sampled, capsys):
    target = sampled / "twochannels"
    shutil.copytree(sampled / "s", target)
    with np.load(target / "samples.npz") as npz:
        data = {k: npz[k] for k in npz.files}
    data["images"] = np.concatenate([data["images"]] * 2, axis=1)
    np.savez(target / "samples.npz", **data)
    code = main(["evaluate", str(target), "--out", str(sampled / "ev4")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "samples of shape [2, 16, 16] cannot be compared with" in err
    assert "items of shape [1, 16, 16]" in err
