"""Benchmark of DICOM series reading: MedGen vs SimpleITK vs naive pydicom (CPU).

    python benchmarks/bench_data.py --out DIR [--slices 200] [--size 512] [--repeats 5]
                                    [--threads N]

Writes a synthetic CT series (``--slices`` files of ``--size`` x ``--size`` int16, written with
pydicom, file names and InstanceNumbers out of spatial order) into a temporary directory, then
times, on that same series, medians of ``--repeats`` rounds after one warm-up round (each round
runs every implementation once, in turn, so that load from other processes hits all alike):
  * medgen:            ``medgen.data.read_dicom(dir)`` (scan, group, sort by position, HU);
  * simpleitk:         ``ImageSeriesReader`` with ``GetGDCMSeriesFileNames(dir)`` (GDCM sorts);
  * simpleitk-names:   ``ImageSeriesReader`` given the sorted file names (no discovery);
  * pydicom-naive:     dcmread every file, sort by InstanceNumber, stack, apply rescale.
All produce a float32 (z, y, x) array; the bench checks they agree. The page cache is warm
for every implementation (the warm-up reads every file). Writes DIR/bench_data.json and
DIR/bench_data.md (each written to a temporary name, then renamed).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from harness import DEFAULT_OUT, base_meta, write_results

from medgen.data import read_dicom
from medgen.data.synthetic.dicom import write_series


def time_interleaved(impls: dict, repeats: int) -> tuple[dict, dict]:
    """({impl: [seconds]}, {impl: last result}): a warm-up round, then ``repeats`` rounds."""
    results = {name: fn() for name, fn in impls.items()}
    times: dict[str, list[float]] = {name: [] for name in impls}
    for _ in range(repeats):
        for name, fn in impls.items():
            t0 = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - t0)
    return times, results


def medgen_read(directory: Path) -> np.ndarray:
    return read_dicom(directory).array


def sitk_read(directory: Path) -> np.ndarray:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(directory)))
    return sitk.GetArrayFromImage(sitk.Cast(reader.Execute(), sitk.sitkFloat32))


def sitk_read_names(names: list[str]) -> np.ndarray:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(names)
    return sitk.GetArrayFromImage(sitk.Cast(reader.Execute(), sitk.sitkFloat32))


def pydicom_naive(directory: Path) -> np.ndarray:
    datasets = [pydicom.dcmread(p) for p in sorted(directory.iterdir())]
    datasets.sort(key=lambda ds: int(ds.InstanceNumber))
    return np.stack(
        [
            ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
            for ds in datasets
        ]
    )


def run(slices: int, size: int, repeats: int, workdir: Path) -> dict:
    rng = np.random.default_rng(0)
    stored = rng.integers(-1024, 3000, size=(slices, size, size), dtype=np.int16)
    t0 = time.perf_counter()
    files = write_series(workdir, stored, spacing=(1.0, 0.7, 0.7), intercept=-1024)
    write_s = time.perf_counter() - t0
    names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(workdir))
    impls = {
        "medgen": lambda: medgen_read(workdir),
        "simpleitk": lambda: sitk_read(workdir),
        "simpleitk-names": lambda: sitk_read_names(list(names)),
        "pydicom-naive": lambda: pydicom_naive(workdir),
    }
    expected = stored.astype(np.float32) - 1024
    rows = []
    all_times, arrays = time_interleaved(impls, repeats)
    for impl, times in all_times.items():
        median, array = statistics.median(times), arrays[impl]
        if impl == "pydicom-naive":  # InstanceNumber runs backwards in this series
            array = array[::-1]
        rows.append(
            {
                "impl": impl,
                "seconds": median,
                "min_s": min(times),
                "max_s": max(times),
                "slices_per_s": slices / median,
                "MBps": stored.nbytes / median / 1e6,
                "correct": bool(np.array_equal(array, expected)),
            }
        )
    ours = next(r["seconds"] for r in rows if r["impl"] == "medgen")
    for r in rows:
        r["medgen_speedup"] = r["seconds"] / ours
    return {
        "rows": rows,
        "series": {
            "slices": slices,
            "size": size,
            "files_MB": sum(f.stat().st_size for f in files) / 1e6,
            "write_s": write_s,
        },
    }


def to_markdown(result: dict) -> str:
    meta, s = result["meta"], result["series"]
    lines = [
        f"medgen-data DICOM series read, {meta['timestamp']} on {meta['cpu']} "
        f"(SimpleITK threads {meta['sitk_threads']}, OMP_NUM_THREADS "
        f"{meta['omp_num_threads']}, pydicom {meta['pydicom']}, SimpleITK {meta['simpleitk']})",
        "",
        f"Series: {s['slices']} slices of {s['size']}x{s['size']} int16 CT "
        f"({s['files_MB']:.1f} MB of files, page cache warm); median of {meta['repeats']} "
        "interleaved rounds after one warm-up round.",
        "",
        "| impl | time (s) | min (s) | max (s) | slices/s | MB/s | correct | medgen speedup |",
        "|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['impl']} | {r['seconds']:.3f} | {r['min_s']:.3f} | {r['max_s']:.3f} | "
            f"{r['slices_per_s']:.0f} | {r['MBps']:.0f} | {r['correct']} | "
            f"{r['medgen_speedup']:.2f}x |"
        )
    lines += [
        "",
        "MB/s = stored pixel bytes / time. 'medgen speedup' = row time / medgen time (>1: medgen "
        "faster). simpleitk includes series discovery (GetGDCMSeriesFileNames), as medgen "
        "does; simpleitk-names is given the sorted names. pydicom-naive sorts by InstanceNumber "
        "(wrong in general: it is reversed here and un-reversed before the check).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    ap.add_argument("--slices", type=int, default=200)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, help="SimpleITK threads (default: its own default)")
    args = ap.parse_args(argv)
    if args.threads:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    warnings.simplefilter("ignore")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        result = run(args.slices, args.size, args.repeats, Path(tmp))
    result["meta"] = {
        **base_meta(),
        "sitk_threads": sitk.ProcessObject.GetGlobalDefaultNumberOfThreads(),
        "repeats": args.repeats,
        "pydicom": pydicom.__version__,
        "simpleitk": sitk.Version.VersionString(),
        "numpy": np.__version__,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    write_results(args.out, "data", result, to_markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
