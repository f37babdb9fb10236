"""The README's Python examples run as written (in order, in one namespace)."""

import re
import tempfile
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_examples_run(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 2
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    out = capsys.readouterr().out
    assert "6 shards (6 built, 0 reused)" in out and "torch.Size([16, 1, 64, 64])" in out


def test_readme_states_the_bad_input_corpus_size():
    import importlib.util

    path = Path(__file__).with_name("test_data_bad_input.py")
    spec = importlib.util.spec_from_file_location("bad_input_corpus", path)
    corpus = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(corpus)
    CASES = corpus.CASES
    stated = re.search(r"no binaries committed\): (\d+) malformed", README.read_text())
    assert stated and int(stated.group(1)) == len(CASES), "update the README's corpus count"
    root = README.parents[2] / "README.md"  # the monorepo's overview table says it too
    if root.exists():
        assert f"{len(CASES)} kinds of bad input" in root.read_text()
