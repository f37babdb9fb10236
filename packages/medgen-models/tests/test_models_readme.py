"""The README's "Transformer backbones", "ControlNet" and "Loss terms" examples run as written
(the other sections' examples sample hundreds of steps and are covered by their own tests;
the autoencoder and DC-AE examples are run by their own test files)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def test_transformer_backbones_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", _section("Transformer backbones"), flags=re.S)
    assert blocks
    namespace = {"__name__": "readme"}
    for i, block in enumerate(blocks):
        exec(compile(block, f"README.md transformer block {i}", "exec"), namespace)
    assert capsys.readouterr().out.strip().startswith("674.8")


def test_controlnet_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", _section("ControlNet"), flags=re.S)
    assert blocks
    namespace = {"__name__": "readme"}
    for i, block in enumerate(blocks):
        exec(compile(block, f"README.md controlnet block {i}", "exec"), namespace)
    assert capsys.readouterr().out.strip() == "True"


def test_loss_terms_example_runs(capsys):
    (block,) = re.findall(r"```python\n(.*?)```", _section("Loss terms from the seeds"), flags=re.S)
    exec(compile(block, "README.md loss terms block", "exec"), {"__name__": "readme"})
    assert capsys.readouterr().out.strip().endswith("[True, True]")
