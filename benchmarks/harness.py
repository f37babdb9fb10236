"""What every MedGen benchmark script shares: where results go and how they are recorded.

Each script (``python benchmarks/bench_<name>.py``) builds a result dict with ``rows`` and
``meta`` and a Markdown table, then calls :func:`write_results`, which writes
``<out>/<timestamp>_<name>.json`` and ``.md`` (each to a temporary name, then renamed) and
prints the table. ``<out>`` defaults to ``bench/results``.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

DEFAULT_OUT = Path("bench/results")


def utc_timestamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def cpu_name() -> str:
    """The CPU model and how many CPUs this process may see."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f" ({os.cpu_count()} cpus)"
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def base_meta() -> dict:
    """Timestamp, CPU, Python and OMP_NUM_THREADS: the fields every result records."""
    return {
        "timestamp": utc_timestamp(),
        "cpu": cpu_name(),
        "python": sys.version.split()[0],
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "unset"),
    }


def load_at_start() -> float:
    """The 1-minute load average before a benchmark starts (its own work not yet in it); warns
    on stderr when other jobs already keep half the CPUs busy, since timings then measure the
    contention (OpenMP threads spin-waiting on descheduled peers) more than the code."""
    load = round(os.getloadavg()[0], 2)
    cpus = os.cpu_count() or 1
    if load > 0.5 * cpus:
        print(
            f"warning: load average {load} on {cpus} cpus before the benchmark: other jobs "
            "are running, timings will be unreliable",
            file=sys.stderr,
        )
    return load


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_results(out: Path, name: str, result: dict, markdown: str) -> Path:
    """Write ``<out>/<timestamp>_<name>.json`` and ``.md``; print the table; return the stem."""
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{result['meta']['timestamp'].replace(':', '')}_{name}"
    _write_atomic(stem.with_suffix(".json"), json.dumps(result, indent=2))
    _write_atomic(stem.with_suffix(".md"), markdown)
    print(markdown)
    print(f"wrote {stem}.json and .md in {result['meta'].get('wall_s', '?')} s")
    return stem
