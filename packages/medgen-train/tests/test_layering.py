"""Layering of medgen-train: it uses only the public interfaces of the packages below it, and
its evaluation layer imports no task (tasks pass what the evaluators need)."""

from __future__ import annotations

import ast
from pathlib import Path

import medgen.train

SRC = Path(medgen.train.__file__).parent
# evaluation/features.py loads an autoencoder run as a feature extractor (known, not yet inverted)
EVALUATION_IMPORTS_TASKS = {"features.py"}


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) of every import in ``path``, lazy ones inside functions included."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
    return out


def test_no_private_names_of_other_medgen_packages_are_imported():
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        for module, names in imports(path):
            parts = module.split(".")
            if parts[0] != "medgen" or len(parts) < 2 or parts[1] == "train":
                continue
            private = [p for p in parts[2:] if p.startswith("_")]
            private += [n for n in names if n.startswith("_")]
            if private:
                bad.append(f"{path.relative_to(SRC)}: from {module} import {private}")
    assert not bad, bad


def test_the_evaluation_layer_imports_no_task():
    bad = [
        f"evaluation/{path.name}: {module}"
        for path in sorted((SRC / "evaluation").rglob("*.py"))
        if path.name not in EVALUATION_IMPORTS_TASKS
        for module, names in imports(path)
        if module.startswith("medgen.train.tasks")
        or (module == "medgen.train" and "tasks" in names)
    ]
    assert not bad, bad


def private_members(cls_source: Path, name: str) -> set[str]:
    """Private attributes a class of ``cls_source`` defines (methods, ``self._x = ...``)."""
    tree = ast.parse(cls_source.read_text())
    cls = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == name)
    found = {n.name for n in cls.body if isinstance(n, ast.FunctionDef)}
    found |= {n.attr for n in ast.walk(cls) if isinstance(n, ast.Attribute)
              and isinstance(n.value, ast.Name) and n.value.id == "self"}  # fmt: skip
    return {n for n in found if n.startswith("_") and not n.startswith("__")}


def test_latent_dataset_reads_no_private_field_of_cache_dataset():
    import medgen.data.cache.dataset as base

    private = private_members(Path(base.__file__), "CacheDataset")
    assert {"_arrays", "_shard_of", "_item_of", "_meta"} <= private  # what the scan sees
    used = {n.attr for n in ast.walk(ast.parse((SRC / "latents" / "dataset.py").read_text()))
            if isinstance(n, ast.Attribute)}  # fmt: skip
    assert not used & private, sorted(used & private)
