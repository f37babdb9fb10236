"""``medgen-train evaluate --features``: distribution metrics with CIs and their protocol in
evaluation.json / evaluation.md, end to end on a tiny trained run (a real subprocess), and
its bad input as one-line errors."""

import json
import subprocess
import sys

import pytest
import torch

from medgen.train.cli import main
from medgen.train.config.tiny import TINY as TINY_RUN
from medgen.train.evaluation.features import resnet2d_model

TINY = list(TINY_RUN)


@pytest.fixture(scope="module")
def sampled(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluated")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDGEN_CACHE_DIR", str(root / "caches"))
        assert main(["fit", "quickstart", *TINY, "--out", str(root / "run"), "--quiet"]) == 0
        assert main(["sample", str(root / "run"), "--steps", "2", "--n", "16", "--out",
                     str(root / "s"), "--no-nifti", "--quiet"]) == 0  # fmt: skip
        yield root


def evaluate(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "medgen.train.cli", "evaluate", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd)  # fmt: skip


def test_features_random_end_to_end(sampled):
    out = sampled / "ev"
    proc = evaluate(sampled / "s", "--features", "random:0", "--bootstrap", "20", "--out", out,
                    "--quiet")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "evaluation.json").read_text())
    (block,) = result["distribution"]
    p = block["protocol"]
    assert p["extractor"] == "random" and p["n_generated"] == 16
    assert p["n_reference"] == result["n_reference"] and p["reference_split"].endswith(":train")
    assert p["planes"] == ["2d"] and p["bootstrap"]["replicates"] == 20
    for m in ("fid", "kid", "cmmd", "precision", "recall"):
        v = block["planes"]["2d"][m]
        assert v["percentile"][0] <= v["percentile"][1] and v["n_boot"] == 20
    md = (out / "evaluation.md").read_text()
    assert "| 2d | FID |" in md and "not comparable with papers" in md
    assert "lesions" in md or "regional" not in result


def test_bad_feature_input(sampled, tmp_path, capsys):
    def fails(*argv, match):
        code = main(["evaluate", str(sampled / "s"), "--out", str(tmp_path / "o"), *argv])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and match in err, err

    fails("--features", f"medicalnet:{tmp_path / 'none.pt'}", match="none.pt: no such weights")
    torch.save(resnet2d_model().state_dict(), tmp_path / "r50.pt")
    fails("--features", f"medicalnet:{tmp_path / 'r50.pt'}", match="not a MedicalNet resnet")
    fails("--features", f"resnet2d:{tmp_path / 'r50.pt'}",
          match="FID on 2048-dimensional features needs more than 2048 samples")  # fmt: skip
    fails("--features", "random:x", match="random:SEED needs an integer")
    fails("--features", "random:0", "--bootstrap", "1", match="--bootstrap: expected at least 2")
    cache = json.loads((sampled / "s" / "manifest.json").read_text())["data"]["cache"]
    fails("--features", "random:0", "--reference", f"{cache}:nosuchsplit", match="nosuchsplit")
