"""Imports only go downward: train -> models, data; models -> cuda; cuda and data import no
other medgen package. Checked on the source (AST), so a lazy import inside a function counts."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = {
    "cuda": set(),
    "data": set(),
    "models": {"cuda"},
    "train": {"data", "models", "cuda"},
}


def medgen_imports(source: str) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(source)):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "medgen" and len(parts) > 1:
                found.add(parts[1])
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_only_go_downward(package):
    src = ROOT / "packages" / f"medgen-{package}" / "src" / "medgen"
    files = list(src.rglob("*.py"))
    assert files, f"no sources under {src}"
    bad = {}
    for f in files:
        wrong = medgen_imports(f.read_text()) - ALLOWED[package] - {package}
        if wrong:
            bad[str(f.relative_to(ROOT))] = sorted(wrong)
    assert not bad, f"medgen.{package} imports packages it must not: {bad}"


def test_checker_catches_a_violation():
    assert medgen_imports("from medgen.train.ema import EMA\nimport medgen.data") == {
        "train",
        "data",
    }
    assert medgen_imports("from . import x\nimport medgenx") == set()


def test_namespace_has_no_init():
    for pkg in ALLOWED:
        src = ROOT / "packages" / f"medgen-{pkg}" / "src"
        assert not (src / "medgen" / "__init__.py").exists(), f"{src}/medgen is not PEP 420"
        assert (src / "medgen" / pkg / "__init__.py").is_file()


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_each_package_has_its_own_metadata(package):
    import tomllib

    root = ROOT / "packages" / f"medgen-{package}"
    meta = tomllib.loads((root / "pyproject.toml").read_text())
    assert meta["project"]["name"] == f"medgen-{package}"
    assert meta["project"]["version"] == f"0.{2 if package != 'cuda' else 1}.0"
    assert (root / "README.md").stat().st_size > 500
    deps = " ".join(meta["project"].get("dependencies", []))
    for other in {"cuda", "data", "models", "train"} - ALLOWED[package] - {package}:
        assert f"medgen-{other}" not in deps
    build_requires = " ".join(meta["build-system"]["requires"])
    assert "torch" not in build_requires, "an isolated build would pull the CUDA wheel"
