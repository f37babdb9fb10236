"""Mutation testing of the numeric and safety modules with mutmut 3 (``nox -s mutants``).

Each module is mutated in a scratch copy of its package (``<work>/<module>/``: the package's
``src/`` and ``tests/`` copied, a ``pyproject.toml`` naming the one file to mutate and the test
files that cover it), so the source tree is never touched and other processes importing the
packages meanwhile see the real code: mutmut 3 writes its trampolined copy to ``mutants/``
under that scratch directory and puts ``mutants/src`` first on ``sys.path`` (``medgen`` is a
namespace package, so the mutated ``medgen.<pkg>`` shadows the editable install while the
other packages still import from theirs).

Score per module = killed / mutants (timeouts count as killed; mutants no selected test runs
count as survivors). JSON + Markdown go to ``bench/results/<timestamp>_mutants.*`` with the diff
of every surviving mutant. Slow: run outside CI, one module at a time if CPUs are shared::

    python benchmarks/run_mutants.py --out bench/results train/ema train/nan_guard
    python benchmarks/run_mutants.py --report train/ema train/nan_guard  # one file, last runs
    python benchmarks/run_mutants.py --list
"""

from __future__ import annotations

import argparse
import ast
import datetime as dt
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = {n: ROOT / "packages" / f"medgen-{n}" for n in ("cuda", "data", "models", "train")}


@dataclass(frozen=True)
class Target:
    package: str  # cuda | data | models | train
    path: str  # the file to mutate, relative to the package's src/
    tests: tuple[str, ...]  # the package's test files covering it (mutmut runs, per mutant,
    # only the tests among these that executed the mutated function)
    deselect: tuple[str, ...] = ()  # -k expression of tests to leave out (subprocess-only ones)


# Tests that only run the code in a subprocess (of the installed, unmutated package): they
# cannot kill a mutant and cost minutes, so they are left out.
CLI = ("cli_fit",)

# The modules issue 17 names, each with the test files that cover it.
TARGETS: dict[str, Target] = {
    # medgen-cuda: coefficients and the python side of the steps / Haar dispatch
    "cuda/coeffs": Target(
        "cuda", "medgen/cuda/_coeffs.py",
        ("test_cuda_steps.py", "test_cuda_ddim.py", "test_cuda_finite.py"),
    ),
    "cuda/steps": Target(
        "cuda", "medgen/cuda/steps.py",
        ("test_cuda_steps.py", "test_cuda_ddim.py", "test_cuda_finite.py", "test_cuda_extension.py"),
    ),
    "cuda/haar": Target("cuda", "medgen/cuda/haar.py", ("test_cuda_haar.py", "test_cuda_extension.py")),
    # medgen-models: samplers and strategies
    "models/samplers_ddim": Target(
        "models", "medgen/models/samplers/ddim.py",
        ("test_models_samplers.py", "test_models_sampler_properties.py"),
    ),
    "models/samplers_ddpm": Target(
        "models", "medgen/models/samplers/ddpm.py",
        ("test_models_samplers.py", "test_models_sampler_properties.py", "test_models_ddpm.py"),
    ),
    "models/samplers_flow": Target(
        "models", "medgen/models/samplers/flow.py", ("test_models_flow.py", "test_models_samplers.py")
    ),
    "models/strategies_ddpm": Target(
        "models", "medgen/models/strategies/ddpm.py",
        ("test_models_ddpm.py", "test_models_strategy_common.py", "test_models_losses.py"),
    ),
    "models/strategies_flow": Target(
        "models", "medgen/models/strategies/flow.py",
        ("test_models_flow.py", "test_models_strategy_common.py"),
    ),
    "models/schedules": Target(
        "models", "medgen/models/strategies/schedules.py", ("test_models_schedules.py",)
    ),
    "models/timesteps": Target(
        "models", "medgen/models/strategies/timesteps.py", ("test_models_timesteps.py",)
    ),
    # medgen-data: z-binning, slicing, collate/padding, cache keys and verification
    "data/zbin": Target(
        "data", "medgen/data/slicing/zbin.py",
        ("test_data_zbin.py", "test_data_zbin_errors.py", "test_data_slices.py"),
    ),
    "data/slices": Target("data", "medgen/data/slicing/slices.py", ("test_data_slices.py",)),
    "data/collate": Target(
        "data", "medgen/data/loading/collate.py",
        ("test_data_collate.py", "test_data_collate_edges.py", "test_data_cache_key_and_padding.py"),
    ),
    "data/samplers": Target("data", "medgen/data/loading/samplers.py", ("test_data_samplers.py",)),
    "data/cache_recipe": Target(
        "data", "medgen/data/cache/recipe.py",
        ("test_data_recipe.py", "test_data_cache_key_and_padding.py", "test_data_cache_errors.py"),
    ),
    "data/cache_shards": Target(
        "data", "medgen/data/cache/shards.py",
        ("test_data_cache_shards.py", "test_data_cache_errors.py", "test_data_cache_manifest.py"),
    ),
    # medgen-train: checkpoint loading, NaN guard, EMA, accumulation/clipping, metrics
    "train/checkpoint_store": Target(
        "train", "medgen/train/checkpoint/store.py", ("test_checkpoint.py",)
    ),
    "train/nan_guard": Target(
        "train", "medgen/train/engine/nan_guard.py",
        ("test_nan_guard_units.py", "test_engine_safeguards.py", "test_engine.py"),
        deselect=CLI,
    ),
    "train/ema": Target(
        "train", "medgen/train/engine/ema.py",
        ("test_ema.py", "test_nan_guard_units.py", "test_engine_safeguards.py"), deselect=CLI,
    ),
    "train/optim": Target(
        "train", "medgen/train/engine/optim.py", ("test_engine_safeguards.py", "test_engine.py"),
        deselect=CLI,
    ),
    "train/metrics": Target(
        "train", "medgen/train/evaluation/metrics.py",
        ("test_evaluation_metrics.py", "test_evaluation_metrics_edges.py"),
    ),
}  # fmt: skip

KILLED = {"killed", "timeout", "caught by type check"}


def _ignore(_dir: str, names: list[str]) -> list[str]:
    return [n for n in names if n in ("__pycache__", ".pytest_cache", "mutants", "build")]


def undecorate_no_grad(source: str) -> str:
    """``@torch.no_grad()`` methods rewritten as a ``with torch.no_grad():`` body (the same
    semantics): mutmut 3 mutates no function with a decorator other than staticmethod /
    classmethod, and EMA.update, Snapshot.take/restore are such functions."""
    lines = source.splitlines(keepends=True)
    edits = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and [
            ast.unparse(d) for d in node.decorator_list
        ] == ["torch.no_grad()"]:
            edits.append(node)
    for node in sorted(edits, key=lambda n: -n.lineno):
        first, last = node.body[0].lineno - 1, node.end_lineno  # body lines [first, last)
        if isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant):
            first = node.body[0].end_lineno  # keep the docstring outside the with block
            if first >= last:
                continue
        indent = " " * node.body[0].col_offset
        body = ["    " + ln if ln.strip() else ln for ln in lines[first:last]]
        lines[first:last] = [f"{indent}with torch.no_grad():\n", *body]
        del lines[node.decorator_list[0].lineno - 1]
    return "".join(lines)


def prepare(name: str, target: Target, work: Path) -> Path:
    """A fresh scratch copy of the target's package with its mutmut configuration."""
    wd = work / name.replace("/", "__")
    if wd.exists():
        shutil.rmtree(wd)
    wd.mkdir(parents=True)
    pkg = PKG[target.package]
    shutil.copytree(pkg / "src", wd / "src", ignore=_ignore)
    shutil.copytree(pkg / "tests", wd / "tests", ignore=_ignore)
    mutated = wd / "src" / target.path
    mutated.write_text(undecorate_no_grad(mutated.read_text()))
    for t in target.tests:
        if not (wd / "tests" / t).is_file():
            raise SystemExit(f"{name}: no test file {t} in {pkg / 'tests'}")
    selection = [f"tests/{t}" for t in target.tests]
    extra = ["-q", "-p", "no:cacheprovider", "-x"]
    if target.deselect:
        extra += ["-k", f"not ({' or '.join(target.deselect)})"]
    toml = "\n".join(
        [
            "[tool.mutmut]",
            'source_paths = ["src/"]',
            f'only_mutate = ["src/{target.path}"]',
            f"pytest_add_cli_args_test_selection = {json.dumps(selection)}",
            f"pytest_add_cli_args = {json.dumps(extra)}",
            # torch (and the extension's OpenMP pool) are not fork-safe after use
            'process_isolation = "forkserver"',
            "use_git_change_detection = false",
            "",
            "[tool.pytest.ini_options]",
            'addopts = "--import-mode=importlib"',
            'markers = ["slow: slow", "cuda: needs a CUDA device"]',
            'filterwarnings = ["ignore::DeprecationWarning:monai.*"]',
            "",
        ]
    )
    (wd / "pyproject.toml").write_text(toml)
    return wd


def collect(wd: Path, target: Target) -> dict:
    """Statuses from mutmut's meta file, and the diff of each surviving mutant."""
    from mutmut.stats import status_by_exit_code

    meta = wd / "mutants" / "src" / (target.path + ".meta")
    data = json.loads(meta.read_text())
    statuses = {k: status_by_exit_code[v] for k, v in data["exit_code_by_key"].items()}
    counts: dict[str, int] = {}
    for s in statuses.values():
        counts[s] = counts.get(s, 0) + 1
    killed = sum(n for s, n in counts.items() if s in KILLED)
    survivors = {}
    for key, s in sorted(statuses.items()):
        if s not in KILLED:
            shown = subprocess.run(
                [sys.executable, "-m", "mutmut", "show", key],
                cwd=wd, capture_output=True, text=True,
            )  # fmt: skip
            survivors[key] = {"status": s, "diff": shown.stdout.strip()}
    total = len(statuses)
    return {
        "file": f"packages/medgen-{target.package}/src/{target.path}",
        "tests": list(target.tests),
        "total": total,
        "killed": killed,
        "counts": counts,
        "score": round(killed / total, 4) if total else None,
        "survivors": survivors,
    }


def run_one(name: str, target: Target, work: Path, children: int) -> dict:
    wd = prepare(name, target, work)
    source = (wd / "src" / target.path).read_bytes()  # the version mutated (the tree may move)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MEDGEN_QUIET="1")
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "mutmut", "run", "--max-children", str(children)],
        cwd=wd, env=env, capture_output=True, text=True,
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    (wd / "mutmut.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-3000:]
        raise SystemExit(f"{name}: mutmut run failed (rc={proc.returncode}):\n{tail}")
    result = collect(wd, target)
    result["seconds"] = round(seconds, 1)
    result["source_sha256"] = hashlib.sha256(source).hexdigest()
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    result["git_head"] = head.stdout.strip()
    result["source_modified_since_head"] = bool(
        subprocess.run(
            ["git", "diff", "--quiet", "HEAD", "--", result["file"]], cwd=ROOT
        ).returncode
    )
    (wd / "result.json").write_text(json.dumps(result, indent=2))
    return result


def last_result(name: str, work: Path) -> dict:
    path = work / name.replace("/", "__") / "result.json"
    if not path.is_file():
        raise SystemExit(f"{name}: no finished run in {path.parent}")
    return json.loads(path.read_text())


def markdown(results: dict[str, dict], stamp: str) -> str:
    lines = [
        f"# Mutation testing ({stamp}, mutmut)",
        "",
        "| module | file | mutants | killed | score | survivors |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | `{r['file']}` | {r['total']} | {r['killed']} | "
            f"{100 * r['score']:.1f}% | {len(r['survivors'])} |"
        )
    for name, r in results.items():
        if r["survivors"]:
            lines += ["", f"## {name}: surviving mutants", ""]
            for key, s in r["survivors"].items():
                lines += [f"### `{key}` ({s['status']})", "", "```diff", s["diff"], "```", ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("modules", nargs="*", help="modules to mutate (default: all); see --list")
    p.add_argument("--list", action="store_true", help="print the modules and their tests")
    p.add_argument(
        "--report", action="store_true",
        help="run nothing: write one report from the modules' last finished runs in --work",
    )  # fmt: skip
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    p.add_argument("--work", default=str(Path(os.environ.get("TMPDIR", "/tmp")) / "medgen-mutants"))
    p.add_argument("--children", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    args = p.parse_args(argv)
    if args.list:
        for name, t in TARGETS.items():
            print(f"{name:24s} packages/medgen-{t.package}/src/{t.path}  <- {', '.join(t.tests)}")
        return 0
    names = args.modules or list(TARGETS)
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        raise SystemExit(f"unknown modules {unknown}; known: {', '.join(TARGETS)}")
    work = Path(args.work)
    results = {}
    for name in names:
        if args.report:
            results[name] = last_result(name, work)
            continue
        print(f"mutants: {name} ...", flush=True)
        results[name] = r = run_one(name, TARGETS[name], work, args.children)
        print(f"  {r['killed']}/{r['total']} killed ({100 * r['score']:.1f}%) in {r['seconds']} s")
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"timestamp": stamp, "tool": "mutmut", "modules": results}
    (out / f"{stamp}_mutants.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out / f"{stamp}_mutants.md").write_text(markdown(results, stamp))
    print(f"written {out / f'{stamp}_mutants.json'} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
