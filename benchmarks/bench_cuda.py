"""Benchmark of medgen-cuda against the libraries people use today (CPU; GPU rows if available).

    python benchmarks/bench_cuda.py --out DIR [--threads N] [--budget SECONDS] [--device cpu|cuda]
                                    [--only haar|steps]

Times, in ONE run on the same inputs, medians of repeated timings after warm-up:
  * the bandwidth limit: a STREAM-like copy and triad at each op's working-set size and at 256 MiB;
  * Haar 2D (8, 1, 256, 256) and 3D (1, 1, 128, 128, 128), plus DRAM-sized (64, 1, 512, 512) and
    (1, 1, 256, 256, 256), forward and inverse: medgen (compiled extension; also with out=
    preallocated outputs, as the copy baseline has), medgen reference (pure PyTorch), PyWavelets
    (dwtn/idwtn 'haar', periodization), ptwt (if installed) and WDM-style strided slicing; in
    float32, and at the first two shapes also in bfloat16 and float16 (medgen, medgen reference
    and WDM-style slicing);
  * DDIM step on (4, 4, 64, 64), (4, 4, 256, 256) and (1, 4, 32, 128, 128), in float32, bfloat16
    and float16: medgen, medgen reference, diffusers' DDIMScheduler.step, MONAI's
    DDIMScheduler.step (if installed), the direct PyTorch formula.
For every row: time, effective bandwidth (bytes that must be read and written / time), its fraction
of the copy bandwidth at that size, and the speed ratio of medgen to it (same op, shape and dtype);
plus, per op and shape, medgen's float16 time over its bfloat16 and float32 times. ``--only``
times one group (a short run). Writes DIR/<timestamp>_cuda.json and DIR/<timestamp>_cuda.md (DIR
defaults to bench/results).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from harness import DEFAULT_OUT, base_meta, cpu_name, write_results

import medgen.cuda as mc
from medgen.cuda import reference

MiB = 1 << 20
HAAR_SHAPES = ((8, 1, 256, 256), (1, 1, 128, 128, 128), (64, 1, 512, 512), (1, 1, 256, 256, 256))
HAAR_HALF_SHAPES = HAAR_SHAPES[:2]  # bfloat16 / float16 rows (medgen and the torch peers)
STEP_SHAPES = ((4, 4, 64, 64), (4, 4, 256, 256), (1, 4, 32, 128, 128))
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
GROUPS = ("haar", "steps")
SKIPPED: dict[str, str] = {}  # peer -> why its rows are absent (reported in the results)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_fn(fn, device: str, budget: float, min_reps: int = 5, max_reps: int = 200) -> float:
    """Median seconds per call: 2 warm-up calls, then repeats until `budget` seconds are spent."""
    for _ in range(2):
        fn()
    _sync(device)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_reps or (time.perf_counter() - start < budget and len(times) < max_reps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bandwidth(nbytes: int, device: str, budget: float) -> dict[str, float]:
    """STREAM-like copy (2 x bytes moved) and triad a = b + s*c (3 x bytes) in GB/s."""
    n = max(nbytes // 4, 1)
    a, b, c = (torch.rand(n, device=device) for _ in range(3))
    t_copy = time_fn(lambda: a.copy_(b), device, budget)
    t_triad = time_fn(lambda: torch.add(b, c, alpha=1.5, out=a), device, budget)
    return {"copy_GBps": 2 * n * 4 / t_copy / 1e9, "triad_GBps": 3 * n * 4 / t_triad / 1e9}


# ----------------------------------------------------------------------------- peers


def wdm_dwt(x: torch.Tensor) -> torch.Tensor:
    """WDM-style Haar by strided slicing (no dense matrices), same layout and normalisation."""
    nd = x.dim() - 2
    bands = [x]
    for axis in range(2, 2 + nd):
        nxt = []
        for band in bands:
            idx_e = [slice(None)] * band.dim()
            idx_o = [slice(None)] * band.dim()
            idx_e[axis], idx_o[axis] = slice(0, None, 2), slice(1, None, 2)
            e, o = band[tuple(idx_e)], band[tuple(idx_o)]
            nxt += [(e + o) * 0.7071067811865476, (e - o) * 0.7071067811865476]
        bands = nxt
    return torch.cat(bands, dim=1)


def wdm_idwt(w: torch.Tensor) -> torch.Tensor:
    nd = w.dim() - 2
    bands = list(w.chunk(1 << nd, dim=1))
    for axis in reversed(range(2, 2 + nd)):
        nxt = []
        for lo, hi in zip(bands[0::2], bands[1::2], strict=True):
            e, o = (lo + hi) * 0.7071067811865476, (lo - hi) * 0.7071067811865476
            out = torch.stack((e, o), dim=axis + 1).flatten(axis, axis + 1)
            nxt.append(out)
        bands = nxt
    return bands[0]


def haar_impls(x: torch.Tensor, device: str):
    """Haar implementations; for bfloat16/float16 only medgen's and the torch slicing (PyWavelets
    and ptwt are float32/float64 libraries)."""
    nd = x.dim() - 2
    w = mc.haar_dwt(x)
    impls = {}
    if mc.extension_available():
        impls["medgen"] = (lambda: mc.haar_dwt(x), lambda: mc.haar_idwt(w))
        # into preallocated outputs, like the copy baseline: the kernel without allocation and
        # first-touch page faults (which dominate above glibc's mmap threshold, ~32 MiB)
        w_out, x_out = torch.empty_like(w), torch.empty_like(x)
        impls["medgen-out"] = (
            lambda: mc.haar_dwt(x, out=w_out),
            lambda: mc.haar_idwt(w, out=x_out),
        )
    impls["medgen-reference"] = (lambda: reference.haar_dwt(x), lambda: reference.haar_idwt(w))
    impls["wdm-slicing"] = (lambda: wdm_dwt(x), lambda: wdm_idwt(w))
    if x.dtype != torch.float32:
        return impls
    if device == "cpu":
        try:
            import pywt

            xn = x.numpy()
            axes = tuple(range(2, 2 + nd))
            coeffs = pywt.dwtn(xn, "haar", mode="periodization", axes=axes)
            impls["pywavelets"] = (
                lambda: pywt.dwtn(xn, "haar", mode="periodization", axes=axes),
                lambda: pywt.idwtn(coeffs, "haar", mode="periodization", axes=axes),
            )
        except ImportError:
            SKIPPED["pywavelets"] = "not installed"
    try:
        import ptwt
    except ImportError:
        SKIPPED["ptwt"] = "not installed"
    else:
        # Haar has 2 taps: on even sizes ptwt's 'zero' mode pads nothing and equals periodization
        # (ptwt 1.0 has no 'periodization').
        dec, rec = (ptwt.wavedec2, ptwt.waverec2) if nd == 2 else (ptwt.wavedec3, ptwt.waverec3)
        pw = dec(x, "haar", level=1, mode="zero")
        impls["ptwt"] = (
            lambda: dec(x, "haar", level=1, mode="zero"),
            lambda: rec(pw, "haar"),
        )
    return impls


def ddim_impls(x: torch.Tensor, m: torch.Tensor, device: str):
    t, prev = 500, 480
    impls = {}
    try:
        import diffusers

        ds = diffusers.DDIMScheduler(num_train_timesteps=1000, clip_sample=False)
        ds.set_timesteps(50)
        ds.alphas_cumprod = ds.alphas_cumprod.to(device)
        a_t, a_p = float(ds.alphas_cumprod[t]), float(ds.alphas_cumprod[prev])
        impls["diffusers"] = lambda: ds.step(m, t, x, return_dict=False)
    except ImportError:
        SKIPPED["diffusers"] = "not installed"
        a_t, a_p = 0.0778, 0.0938
    if mc.extension_available():
        impls["medgen"] = lambda: mc.ddim_step(x, m, a_t, a_p)
    impls["medgen-reference"] = lambda: reference.ddim_step(x, m, a_t, a_p)
    try:
        from monai.networks.schedulers import DDIMScheduler

        ms = DDIMScheduler(num_train_timesteps=1000, clip_sample=False)
        ms.set_timesteps(50)
        ms.alphas_cumprod = ms.alphas_cumprod.to(device)
        impls["monai"] = lambda: ms.step(m, t, x)
    except ImportError:
        SKIPPED["monai"] = "not installed"
    sa, sb, sp, sq = a_t**0.5, (1 - a_t) ** 0.5, a_p**0.5, (1 - a_p) ** 0.5

    def direct():
        x0 = (x - sb * m) / sa
        return sp * x0 + sq * m, x0

    impls["torch-formula"] = direct
    return impls


# ----------------------------------------------------------------------------- main


def dtype_ratios(rows: list[dict]) -> list[dict]:
    """Per op and shape: medgen's float16 time over its bfloat16 and float32 times, and over the
    pure-PyTorch reference in float16 (all from this run)."""

    def t(op, shape, impl, dtype):
        return next((r["seconds"] for r in rows if (r["op"], r["shape"], r["impl"], r["dtype"])
                     == (op, shape, impl, dtype)), None)  # fmt: skip

    out = []
    for r in rows:
        if r["impl"] != "medgen" or r["dtype"] != "float16":
            continue
        op, shape, f16 = r["op"], r["shape"], r["seconds"]
        b16, f32 = t(op, shape, "medgen", "bfloat16"), t(op, shape, "medgen", "float32")
        ref = t(op, shape, "medgen-reference", "float16")
        out.append(
            dict(op=op, shape=shape, fp16_over_bf16=None if b16 is None else f16 / b16,
                 fp16_over_fp32=None if f32 is None else f16 / f32,
                 fp16_over_reference_fp16=None if ref is None else f16 / ref)
        )  # fmt: skip
    return out


def run(device: str, budget: float, groups=GROUPS) -> dict:
    rows: list[dict] = []
    bw_cache: dict[int, dict[str, float]] = {}

    def bw_at(nbytes: int) -> dict[str, float]:
        if nbytes not in bw_cache:
            bw_cache[nbytes] = bandwidth(nbytes, device, budget)
        return bw_cache[nbytes]

    def add(op, shape, impl, seconds, moved, working_set, dtype):
        bw = bw_at(working_set)
        gbps = moved / seconds / 1e9
        rows.append(
            dict(op=op, shape=list(shape), dtype=dtype, impl=impl, seconds=seconds, GBps=gbps,
                 frac_of_copy=gbps / bw["copy_GBps"], copy_GBps=bw["copy_GBps"],
                 working_set_MiB=working_set / MiB)
        )  # fmt: skip

    g = torch.Generator().manual_seed(0)
    # the shapes (2 MiB and 8 MiB: partly cache-resident), then DRAM-sized ones (64 MiB)
    haar_cases = []
    if "haar" in groups:
        haar_cases = [(s, "float32") for s in HAAR_SHAPES]
        haar_cases += [(s, d) for s in HAAR_HALF_SHAPES for d in ("bfloat16", "float16")]
    for shape, dtype in haar_cases:
        x = torch.randn(shape, generator=g).to(device, DTYPES[dtype])
        nbytes = x.numel() * x.element_size()
        name = f"haar{x.dim() - 2}d"
        for impl, (fwd, inv) in haar_impls(x, device).items():
            for op, fn in ((f"{name}_dwt", fwd), (f"{name}_idwt", inv)):
                add(op, shape, impl, time_fn(fn, device, budget), 2 * nbytes, nbytes, dtype)
    for shape in STEP_SHAPES if "steps" in groups else ():
        base = [torch.randn(shape, generator=g) for _ in range(2)]
        for dtype, dt in DTYPES.items():
            x, m = (b.to(device, dt) for b in base)
            nbytes = x.numel() * x.element_size()
            for impl, fn in ddim_impls(x, m, device).items():
                # read x_t and eps, write x_prev and x0
                seconds = time_fn(fn, device, budget)
                add("ddim_step", shape, impl, seconds, 4 * nbytes, 2 * nbytes, dtype)

    # ratios: medgen time vs every other impl of the same op, shape and dtype (>1: medgen faster)
    def case(row):
        return row["op"], row["shape"], row["dtype"]

    for r in rows:
        same = [o for o in rows if case(o) == case(r)]
        ours = next((o for o in same if o["impl"] == "medgen"), None)
        r["medgen_speedup"] = None if ours is None else r["seconds"] / ours["seconds"]
    dram = bandwidth(256 * MiB, device, budget)
    return {"rows": rows, "dtype_ratios": dtype_ratios(rows), "skipped_peers": dict(SKIPPED),
            "bandwidth_by_size": {f"{k / MiB:g}MiB": v for k, v in bw_cache.items()},
            "dram_256MiB": dram}  # fmt: skip


def to_markdown(result: dict) -> str:
    meta = result["meta"]
    lines = [
        f"medgen-cuda benchmark, {meta['timestamp']} on {meta['device_name']} "
        f"({meta['threads']} threads, torch {meta['torch']}, extension: "
        f"{meta['extension_available']}, float16 conversion: {meta.get('cpu_float16', '?')})",
        "",
        f"DRAM bandwidth (256 MiB): copy {result['dram_256MiB']['copy_GBps']:.1f} GB/s, triad "
        f"{result['dram_256MiB']['triad_GBps']:.1f} GB/s; at the op sizes: "
        + ", ".join(
            f"{k}: copy {v['copy_GBps']:.1f}" for k, v in result["bandwidth_by_size"].items()
        ),
        "",
        "| op | shape | dtype | impl | time (ms) | GB/s | of copy | medgen speedup |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        sp = "" if r["medgen_speedup"] is None else f"{r['medgen_speedup']:.2f}x"
        lines.append(
            f"| {r['op']} | {'x'.join(map(str, r['shape']))} | {r.get('dtype', 'float32')} | "
            f"{r['impl']} | {r['seconds'] * 1e3:.3f} | {r['GBps']:.1f} | "
            f"{r['frac_of_copy']:.2f} | {sp} |"
        )
    lines.append("")
    if result.get("dtype_ratios"):

        def fmt(v):
            return "" if v is None else f"{v:.2f}x"

        lines += [
            "medgen float16 time over its bfloat16 and float32 times and over the pure-PyTorch "
            "reference in float16 (same run; < 1: float16 faster):",
            "",
            "| op | shape | fp16 / bf16 | fp16 / fp32 | fp16 / reference fp16 |",
            "|---|---|---:|---:|---:|",
        ]
        for d in result["dtype_ratios"]:
            lines.append(
                f"| {d['op']} | {'x'.join(map(str, d['shape']))} | {fmt(d['fp16_over_bf16'])} | "
                f"{fmt(d['fp16_over_fp32'])} | {fmt(d['fp16_over_reference_fp16'])} |"
            )
        lines.append("")
    if result.get("skipped_peers"):
        lines.append(
            "Peers absent from this run: "
            + ", ".join(f"{k} ({v})" for k, v in result["skipped_peers"].items())
        )
        lines.append("")
    lines.append(
        "GB/s = bytes that must be read and written / time (Haar: input + output; DDIM: x_t, eps "
        "in, x_prev, x0 out; in the row's dtype). 'of copy' = fraction of the float32 copy "
        "bandwidth measured at the same working-set size. 'medgen speedup' = row time / medgen "
        "time for the same op, shape and dtype."
    )
    return "\n".join(lines) + "\n"


def _cpu_float16() -> str:
    """How the compiled CPU kernels convert float16 (F16C, or scalar on CPUs without it)."""
    if not mc.extension_available():
        return "no extension"
    from medgen.cuda import _C

    f16c = getattr(_C, "cpu_f16c", None)
    return "scalar (old build)" if f16c is None else ("F16C" if f16c() else "scalar")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--budget", type=float, default=0.25, help="seconds of repeats per timing")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--only", choices=GROUPS, help="time only this group of rows (a short run)")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device")
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    t0 = time.perf_counter()
    with torch.inference_mode():
        result = run(args.device, args.budget, (args.only,) if args.only else GROUPS)
    result["meta"] = {
        **base_meta(),
        "threads": torch.get_num_threads(),
        "device": args.device,
        "device_name": torch.cuda.get_device_name() if args.device == "cuda" else cpu_name(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "extension_available": mc.extension_available(),
        "cpu_float16": _cpu_float16(),
        "groups": [args.only] if args.only else list(GROUPS),
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    write_results(args.out, "cuda", result, to_markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
