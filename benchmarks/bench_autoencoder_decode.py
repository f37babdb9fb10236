"""Decoding a 3D latent to a large volume: unsplit vs chunked (MedGen) vs MONAI's sliding window.

    python benchmarks/bench_autoencoder_decode.py --out DIR [--size 128] [--quick]
        [--widths 16,32,64] [--norm group|none] [--chunks 4:1,8:2] [--roi-depth 8] [--repeats 2]

The decoder is MAISI's (MONAI ``AutoencoderKlMaisi`` through ``MaisiAutoencoder``: 4 latent
channels, 4x per axis, no attention) at reduced widths (``--widths``, MAISI's are 64,128,256)
and one residual block per level, random weights (seeded), MONAI's internal convolution
splitting off (``num_splits=1``), float32, ``torch.inference_mode``; ``--norm none`` replaces
every GroupNorm by the identity (a purely convolutional decoder). The latent is
``(1, 4, size/4, size/4, size/4)``; the output ``(1, 1, size, size, size)``.

Methods, each in a fresh child process (so every peak starts from the same state):

- ``unsplit``: ``ae.decode(z)``;
- ``chunked:S:O``: :func:`medgen.models.autoencoders.chunked_decode` along depth with ``S``
  chunks and ``O`` latent voxels of context per side (``--chunks``, several allowed; ``S:auto``
  takes ``O`` from :func:`required_overlap`, with ``--norm none``: then chunks are exact);
- ``sliding``: :func:`medgen.models.autoencoders.sliding_window_decode` (MONAI
  ``SlidingWindowInferer``) with latent windows of ``(roi_depth, size/4, size/4)``, overlap
  0.25, Gaussian blending: windows along depth only, like the chunks.

Memory: the resident set's high-water mark above the resident set before the decode
(``/proc/self/clear_refs`` resets ``VmHWM``), in a child running with glibc's
``MALLOC_MMAP_THRESHOLD_`` at 128 KiB so freed tensors leave RSS at once. Time: the median
wall and process CPU time of ``--repeats`` decodes after a small warm-up decode (CPU time is
the steadier figure on a loaded machine). The maximum absolute difference of each
method's output from the unsplit output is reported (the decoder has GroupNorm, so chunks are
not exact; see the README). Ratios are to ``unsplit`` in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from harness import DEFAULT_OUT, base_meta, load_at_start, write_results

from medgen.models.autoencoders import (
    MaisiAutoencoder,
    chunked_decode,
    required_overlap,
    sliding_window_decode,
)

MMAP_THRESHOLD = "131072"


def _status_kib(key: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{key}:\s+(\d+) kB", text, re.M).group(1))


def build(widths: tuple[int, ...], norm: str = "group") -> MaisiAutoencoder:
    """The benchmark's decoder (seeded); ``norm="none"`` swaps every GroupNorm for identity."""
    torch.manual_seed(0)
    groups = min(8, *widths)
    ae = MaisiAutoencoder(
        num_channels=widths, num_res_blocks=(1,) * len(widths), norm_num_groups=groups,
        num_splits=1,
    )  # fmt: skip
    if norm == "none":  # purely convolutional: chunking with overlap >= r is exact
        for name, mod in list(ae.net.decoder.named_modules()):
            if isinstance(mod, torch.nn.GroupNorm):
                parent = ae.net.decoder.get_submodule(name.rpartition(".")[0])
                setattr(parent, name.rpartition(".")[2], torch.nn.Identity())
    return ae.eval()


def decoder_fn(args, ae: MaisiAutoencoder, method: str):
    """The decode callable of ``method`` (``unsplit``, ``chunked:S:O`` or ``sliding``)."""
    if method == "unsplit":
        return ae.decode
    if method.startswith("chunked"):
        splits, overlap = (int(v) for v in method.split(":")[1:])
        return lambda z: chunked_decode(ae.decode, z, 0, splits, overlap, ae.downsample)
    lat = args.size // 4
    roi = (args.roi_depth, lat, lat)
    return lambda z: sliding_window_decode(ae.decode, z, roi, overlap=0.25, mode="gaussian")


def child(args) -> dict:
    """One method: warm up small, then ``repeats`` timed decodes; peak RSS of the first."""
    widths = tuple(int(w) for w in args.widths.split(","))
    ae = build(widths, args.norm)
    lat = args.size // 4
    z = torch.randn(1, 4, lat, lat, lat, generator=torch.Generator().manual_seed(1))
    fn = decoder_fn(args, ae, args.child)
    times, cpu, peak = [], [], None
    with torch.inference_mode():
        small = torch.randn(1, 4, 8, 8, 8)
        decoder_fn(args, ae, "unsplit")(small)  # thread pools, kernel caches
        for i in range(args.repeats):
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
            start = _status_kib("VmRSS")
            t0, c0 = time.perf_counter(), time.process_time()
            y = fn(z)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            hwm = max(0, _status_kib("VmHWM") - start) * 1024
            peak = hwm if peak is None else max(peak, hwm)
            if i == 0:
                torch.save(y.clone(), args.save)
            del y
    return {
        "time_s": statistics.median(times),
        "cpu_s": statistics.median(cpu),
        "times_s": times,
        "peak_bytes": peak,
    }


def chunk_methods(args) -> list[str]:
    """``chunked:<splits>:<overlap>`` per ``--chunks`` entry (``auto`` overlap: measured)."""
    out = []
    for item in args.chunks.split(","):
        splits, overlap = item.split(":")
        if overlap == "auto":
            ae = build(tuple(int(w) for w in args.widths.split(",")), args.norm)
            r = required_overlap(ae.decode, torch.randn(1, 4, 40, 2, 2), 0, ae.downsample)
            if r is None:
                raise SystemExit("--chunks S:auto needs --norm none (GroupNorm: no exact overlap)")
            overlap = str(r)
        out.append(f"chunked:{int(splits)}:{int(overlap)}")
    return out


def run_child(args, method: str, save: str) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": MMAP_THRESHOLD}
    cmd = [sys.executable, __file__, "--child", method, "--save", save, "--size", str(args.size),
           "--widths", args.widths, "--norm", args.norm,
           "--roi-depth", str(args.roi_depth), "--repeats", str(args.repeats),
           "--threads", str(args.threads)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{method} child failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def to_markdown(result: dict) -> str:
    m = result["meta"]
    lines = [
        f"# Autoencoder decode: {m['latent']} latent -> {m['output']} (CPU, {m['threads']} "
        f"thread(s))",
        "",
        f"Decoder: MAISI layout at widths {m['widths']}, 1 residual block per level, "
        f"{'GroupNorm' if m['norm'] == 'group' else 'no normalisation (conv only)'}, "
        f"{m['decoder_params_m']}M parameters, float32. chunked:S:O = S chunks along depth, "
        f"O latent voxels of overlap per side; sliding: MONAI SlidingWindowInferer, "
        f"latent roi {m['roi']}, overlap 0.25, gaussian. Peak = RSS high-water mark above the "
        f"start, child process, MALLOC_MMAP_THRESHOLD_={MMAP_THRESHOLD}. Load at start: "
        f"{m['load_avg_1m_at_start']}. Output std (unsplit): {m['output_std']:.3g}.",
        "",
        "| method | wall (s) | CPU (s) | peak RSS (MB) | wall vs unsplit | CPU vs unsplit "
        "| peak vs unsplit | max / mean abs diff vs unsplit |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['method']} | {r['time_s']:.2f} | {r['cpu_s']:.2f} | "
            f"{r['peak_bytes'] / 2**20:.0f} | {r['time_ratio']:.2f} | {r['cpu_ratio']:.2f} | "
            f"{r['peak_ratio']:.3f} | {r['max_abs_diff']:.3g} / {r['mean_abs_diff']:.2g} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    ap.add_argument("--size", type=int, default=128, help="output side (a multiple of 16)")
    ap.add_argument("--widths", default="16,32,64", help="decoder widths, MAISI's order")
    ap.add_argument("--chunks", default="4:1,8:2", help="splits:overlap[,...]; overlap 'auto'")
    ap.add_argument("--norm", default="group", choices=("group", "none"))
    ap.add_argument("--no-sliding", action="store_true", help="skip MONAI's sliding window")
    ap.add_argument("--roi-depth", type=int, default=8, help="sliding window latent depth")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="64^3 output, 1 repeat: a smoke run")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--save", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.size, args.repeats = 64, 1
    if args.size % 16:
        ap.error("--size must be a multiple of 16")
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(child(args)))
        return 0
    load = load_at_start()
    t0 = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        methods = ["unsplit", *chunk_methods(args), *([] if args.no_sliding else ["sliding"])]
        for method in methods:
            save = str(Path(tmp) / f"{method}.pt")
            rows.append({"method": method, **run_child(args, method, save), "save": save})
        ref = torch.load(rows[0]["save"], weights_only=True)
        for r in rows:
            diff = (torch.load(r.pop("save"), weights_only=True) - ref).abs()
            r["max_abs_diff"], r["mean_abs_diff"] = float(diff.max()), float(diff.mean())
        ref_std = float(ref.std())
    base = rows[0]
    for r in rows:
        r["time_ratio"] = r["time_s"] / base["time_s"]
        r["cpu_ratio"] = r["cpu_s"] / base["cpu_s"]
        r["peak_ratio"] = r["peak_bytes"] / base["peak_bytes"]
    widths = tuple(int(w) for w in args.widths.split(","))
    lat = args.size // 4
    import monai

    result = {
        "rows": rows,
        "meta": {
            **base_meta(),
            "size": args.size,
            "latent": f"1x4x{lat}^3",
            "output": f"1x1x{args.size}^3",
            "widths": list(widths),
            "decoder_params_m": round(
                sum(p.numel() for p in build(widths, args.norm).net.decoder.parameters()) / 1e6,
                3,
            ),
            "norm": args.norm,
            "output_std": ref_std,
            "roi": [args.roi_depth, lat, lat],
            "repeats": args.repeats,
            "threads": args.threads,
            "torch": torch.__version__,
            "monai": monai.__version__,
            "memory_method": f"rss vmhwm in a child with MALLOC_MMAP_THRESHOLD_={MMAP_THRESHOLD}",
            "load_avg_1m_at_start": load,
            "wall_s": round(time.perf_counter() - t0, 1),
        },
    }
    write_results(args.out, f"autoencoder_decode_{args.norm}", result, to_markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
