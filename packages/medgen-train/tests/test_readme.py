"""The Python examples of the package README run as written."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs(index):
    exec(compile(BLOCKS[index], f"README.md block {index}", "exec"), {"__name__": "readme"})


def test_readme_has_examples():
    assert len(BLOCKS) >= 2


def _module(name: str, folder: Path = Path(__file__).parent):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_states_the_corpus_sizes():
    """The counts in "When something goes wrong" are the tests' own (kept honest here)."""
    import ast

    tree = ast.parse(Path(__file__).with_name("test_bad_input.py").read_text())
    refusals = sum(
        isinstance(n, ast.Call) and getattr(n.func, "id", None) == "fails" for n in ast.walk(tree)
    )
    config = _module("test_config").test_bad_values_name_the_key.pytestmark[0].args[1]
    text = " ".join(README.read_text().split())
    assert f"The corpus: {refusals} refusals through the CLI" in text
    assert f"{len(config)} bad config values" in text
    scans = README.parents[1] / "medgen-data" / "tests"
    if (scans / "test_data_bad_input.py").exists():  # the monorepo checkout
        cases = _module("test_data_bad_input", scans).CASES
        assert f"medgen-data's {len(cases)} malformed scans" in text
