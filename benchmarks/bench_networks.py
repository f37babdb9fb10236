"""Denoising networks at a matched parameter count: training-step time and peak memory of
MedGen's ConditionedUNet, DiT, HDiT and U-ViT against MONAI's ``DiffusionModelUNet``, in 2D
and 3D, and how DiT's and HDiT's step time grows with the token count.

    python benchmarks/bench_networks.py --out DIR [--quick] [--threads N] [--device cpu|cuda]
        [--steps 2] [--rounds 2] [--warmup 1]

Part 1 (matched size). Per spatial dimensionality, five networks of about 10-12M parameters
(the exact count is in each row): MONAI's ``DiffusionModelUNet`` (the peer every ratio is
against), ``ConditionedUNet`` with the same widths (MONAI's blocks under MedGen's forward), and
DiT, HDiT and U-ViT sized to the same count, all with patch size 2 and no conditioning. 2D
input: a batch of 32x32 latents with 4 channels; 3D: 4x16x32x32 latents. A training step is
forward + MSE loss + backward + AdamW step + ``zero_grad(set_to_none=True)``. After
``--warmup`` untimed steps per network, ``--rounds`` rounds alternate the order of the
networks (so drift in a shared machine's load hits all of them), ``--steps`` timed steps each
per round; the median is reported as wall time and as this process's CPU time.

Peak memory of a step (one step after a warm-up step, so AdamW's moments already exist),
measured in a child process of its own (so that its allocator setting does not slow the
timed steps): on CPU the resident set's high-water mark above the resident set at the step's
start (``/proc/self/clear_refs`` resets ``VmHWM`` before the step; the child runs with glibc's
``MALLOC_MMAP_THRESHOLD_`` fixed at 128 KiB, so every tensor buffer is its own mapping,
returned when freed, and RSS follows the live tensors); on CUDA
``torch.cuda.max_memory_allocated`` above the allocation at the step's start. That is the
activations, gradients and temporaries of one step; "train memory" adds the weights and
AdamW's two moments (12 bytes per float32 parameter), i.e. what training the network needs.

Part 2 (token scaling). A small DiT (hidden 128, depth 4) and an HDiT of the same width and
block count (level_depths 1, 2, 1: the middle two blocks on 2x2-merged tokens), batch 1, 2D
inputs of growing size with patch 2: step time per token count and the fitted exponent of
time ~ tokens^k (least squares in log-log, over all sizes and over the largest three).

Ratios are to the peer measured in the same run. Writes DIR/<timestamp>_networks.json / .md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from harness import DEFAULT_OUT, base_meta, cpu_name, load_at_start, write_results
from monai.networks.nets import DiffusionModelUNet

from medgen.models import DiT, HDiT, UViT
from medgen.models.networks.unet import ConditionedUNet

MMAP_THRESHOLD = "131072"
CHANNELS = 4
PEER = "monai-unet"
UNET_WIDTHS = {2: (64, 128, 256), 3: (48, 96, 160)}  # ~11M / ~12M parameters
UNET_KW = dict(attention_levels=(False, True, True), num_res_blocks=1, num_head_channels=32,
               norm_num_groups=16)  # fmt: skip
SHAPES = {2: (32, 32), 3: (16, 32, 32)}
BATCH = {2: 4, 3: 1}
QUICK_SHAPES = {2: (16, 16), 3: (8, 16, 16)}
SCALING_SIZES = (16, 32, 64, 96, 128)  # 2D side, patch 2: 64 ... 4096 tokens
QUICK_SCALING_SIZES = (8, 16, 24, 32)


def build(kind: str, spatial_dims: int, quick: bool) -> torch.nn.Module:
    """The benchmark's network of ``kind`` (seeded)."""
    torch.manual_seed(0)
    if quick:  # tiny stand-ins: a smoke run of the script, not a measurement
        t = dict(patch_size=2, hidden_size=32, num_heads=2)
        nets = {
            "dit": lambda: DiT(spatial_dims, CHANNELS, depth=2, **t),
            "hdit": lambda: HDiT(spatial_dims, CHANNELS, level_depths=(1, 1, 1), **t),
            "uvit": lambda: UViT(spatial_dims, CHANNELS, depth=3, **t),
        }
        widths, kw = (16, 32), dict(attention_levels=(False, True), num_res_blocks=1, num_head_channels=16,
                                    norm_num_groups=8)  # fmt: skip
    else:
        t = dict(patch_size=2, num_heads=4)
        nets = {
            "dit": lambda: DiT(spatial_dims, CHANNELS, hidden_size=320, depth=6, **t),
            "hdit": lambda: HDiT(
                spatial_dims,
                CHANNELS,
                hidden_size=256,
                level_depths=(2, 2, 2),
                level_widths=(256, 384),
                **t,
            ),
            "uvit": lambda: UViT(spatial_dims, CHANNELS, hidden_size=320, depth=9, **t),
        }
        widths, kw = UNET_WIDTHS[spatial_dims], UNET_KW
    if kind == PEER:
        return DiffusionModelUNet(spatial_dims, CHANNELS, CHANNELS, channels=widths, **kw)
    if kind == "unet":
        return ConditionedUNet(spatial_dims, CHANNELS, CHANNELS, channels=widths, **kw)
    return nets[kind]()


KINDS = (PEER, "unet", "dit", "hdit", "uvit")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class Trainer:
    """One network with its AdamW and a fixed batch; :meth:`step` is one training step."""

    def __init__(self, net: torch.nn.Module, shape, batch: int, device: torch.device):
        self.net = net.to(device)
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=1e-4)
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn((batch, CHANNELS, *shape), generator=g).to(device)
        self.target = torch.randn((batch, CHANNELS, *shape), generator=g).to(device)
        self.t = (torch.rand(batch, generator=g) * 1000).to(device)
        self.device = device

    def step(self) -> None:
        loss = F.mse_loss(self.net(self.x, self.t), self.target)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def timed_step(self) -> tuple[float, float]:
        """(wall, CPU) seconds of one step."""
        sync(self.device)
        w, c = time.perf_counter(), time.process_time()
        self.step()
        sync(self.device)
        return time.perf_counter() - w, time.process_time() - c

    def step_peak_bytes(self) -> int:
        """Peak memory of one step above the memory at its start (see the module docstring)."""
        if self.device.type == "cuda":
            sync(self.device)
            start = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.step()
            sync(self.device)
            return torch.cuda.max_memory_allocated(self.device) - start
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        start = _status_kib("VmRSS")
        self.step()
        return max(0, _status_kib("VmHWM") - start) * 1024  # KiB noise can go below 0


def _status_kib(key: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{key}:\s+(\d+) kB", text, re.M).group(1))


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def peaks_of(device, quick: bool) -> dict:
    """{spatial_dims: {network: step peak bytes}} (run in the memory child)."""
    out = {}
    for sd in (2, 3):
        shape = (QUICK_SHAPES if quick else SHAPES)[sd]
        out[sd] = {}
        warm = Trainer(build(PEER, sd, quick), shape, BATCH[sd], device)
        warm.step()  # one-time allocations (thread pools, kernel caches) land here, not on
        warm.step_peak_bytes()  # the first network measured
        del warm
        for k in KINDS:
            tr = Trainer(build(k, sd, quick), shape, BATCH[sd], device)
            tr.step()
            out[sd][k] = tr.step_peak_bytes()
            del tr
    return out


def peaks_in_child(args) -> dict:
    """:func:`peaks_of` in a fresh process with glibc's mmap threshold fixed."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": MMAP_THRESHOLD}
    cmd = [sys.executable, __file__, "--memory-child", "--device", args.device,
           "--threads", str(args.threads), *(["--quick"] if args.quick else [])]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    return {int(sd): v for sd, v in got.items()}


def matched(device, quick: bool, steps: int, rounds: int, warmup: int, peaks_all) -> list[dict]:
    """Part 1's rows: one per dimensionality and network."""
    rows = []
    for sd in (2, 3):
        shape = (QUICK_SHAPES if quick else SHAPES)[sd]
        batch = BATCH[sd]
        trainers = {k: Trainer(build(k, sd, quick), shape, batch, device) for k in KINDS}
        for tr in trainers.values():
            for _ in range(warmup):
                tr.step()
        times = {k: [] for k in KINDS}
        for r in range(rounds):
            for k in KINDS if r % 2 == 0 else KINDS[::-1]:
                times[k] += [trainers[k].timed_step() for _ in range(steps)]
        peaks = peaks_all[sd]
        wall = {k: statistics.median(t[0] for t in v) for k, v in times.items()}
        cpu = {k: statistics.median(t[1] for t in v) for k, v in times.items()}
        params = {k: n_params(tr.net) for k, tr in trainers.items()}
        train = {k: peaks[k] + 12 * params[k] for k in KINDS}
        for k in KINDS:
            rows.append(
                dict(spatial_dims=sd, shape=[batch, CHANNELS, *shape], network=k,
                     params_m=params[k] / 1e6, median_s=wall[k],
                     min_s=min(t[0] for t in times[k]), cpu_median_s=cpu[k], n=len(times[k]),
                     samples_per_s=batch / wall[k], time_vs_peer=wall[k] / wall[PEER],
                     cpu_vs_peer=cpu[k] / cpu[PEER], step_peak_mb=peaks[k] / 2**20,
                     train_mb=train[k] / 2**20, step_peak_vs_peer=peaks[k] / peaks[PEER],
                     train_mem_vs_peer=train[k] / train[PEER])
            )  # fmt: skip
        del trainers
    return rows


def scaling(device, quick: bool, steps: int) -> dict:
    """Part 2: step time vs token count for DiT and HDiT, and the fitted exponents."""
    sizes = QUICK_SCALING_SIZES if quick else SCALING_SIZES
    hidden, heads = (32, 2) if quick else (128, 2)
    nets = {
        "dit": lambda: DiT(2, CHANNELS, patch_size=2, hidden_size=hidden, depth=4, num_heads=heads),
        "hdit": lambda: HDiT(
            2, CHANNELS, patch_size=2, hidden_size=hidden, num_heads=heads, level_depths=(1, 2, 1)
        ),
    }
    rows, fits = [], {}
    for kind, make in nets.items():
        torch.manual_seed(0)
        net = make()
        for size in sizes:
            tr = Trainer(net, (size, size), 1, device)
            tr.step()  # warm-up (and AdamW's state)
            t = statistics.median(tr.timed_step()[0] for _ in range(max(steps, 3)))
            rows.append(dict(network=kind, size=size, tokens=(size // 2) ** 2,
                             params_m=n_params(net) / 1e6, median_s=t))  # fmt: skip
        mine = [r for r in rows if r["network"] == kind]
        logn = np.log([r["tokens"] for r in mine])
        logt = np.log([r["median_s"] for r in mine])
        fits[kind] = dict(exponent_all=float(np.polyfit(logn, logt, 1)[0]),
                          exponent_largest3=float(np.polyfit(logn[-3:], logt[-3:], 1)[0]))  # fmt: skip
    by = {(r["network"], r["tokens"]): r["median_s"] for r in rows}
    for r in rows:
        r["time_vs_dit"] = r["median_s"] / by[("dit", r["tokens"])]
    return dict(rows=rows, fits=fits)


def to_markdown(result: dict) -> str:
    m = result["meta"]
    quick = " **(--quick: tiny sizes; not a measurement)**" if m["quick"] else ""
    mem = ("RSS high-water mark above the step's start, in a child process with glibc's mmap "
           "threshold fixed at 128 KiB (timing in the parent, default allocator)"
           if m["device"] == "cpu" else "torch.cuda.max_memory_allocated above the step's start")  # fmt: skip
    lines = [
        f"# Denoising networks at matched size vs MONAI DiffusionModelUNet{quick}",
        "",
        f"{m['timestamp']} on {m['device_name']} ({m['threads']} threads, torch {m['torch']}, "
        f"MONAI {m['monai']}); {m['steps']} timed steps x {m['rounds']} rounds after "
        f"{m['warmup']} warm-up step(s) per network; 1-min load average at start "
        f"{m['load_avg_1m_at_start']}. Training step = forward + MSE + backward + AdamW. "
        f"Step peak memory: {mem}; train memory = step peak + 12 B/parameter (weights, AdamW "
        "moments). Ratios are to MONAI's DiffusionModelUNet in the same run (time: < 1 is "
        "faster; memory: < 1 is smaller).",
        "",
        "| dims | batch x C x spatial | network | params (M) | step (ms) | samples/s | "
        "time vs MONAI | CPU time vs MONAI | step peak (MB) | train memory (MB) | "
        "step peak vs MONAI | train memory vs MONAI |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['spatial_dims']}D | {' x '.join(map(str, r['shape']))} | {r['network']} | "
            f"{r['params_m']:.2f} | {r['median_s'] * 1e3:.0f} | {r['samples_per_s']:.2f} | "
            f"{r['time_vs_peer']:.2f} | {r['cpu_vs_peer']:.2f} | {r['step_peak_mb']:.0f} | "
            f"{r['train_mb']:.0f} | {r['step_peak_vs_peer']:.2f} | {r['train_mem_vs_peer']:.2f} |"
        )
    s = result["scaling"]
    lines += [
        "",
        "## Step time vs token count (2D, patch 2, batch 1)",
        "",
        "| network | size | tokens | params (M) | step (ms) | time vs DiT |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in s["rows"]:
        lines.append(
            f"| {r['network']} | {r['size']}^2 | {r['tokens']} | {r['params_m']:.2f} | "
            f"{r['median_s'] * 1e3:.1f} | {r['time_vs_dit']:.2f} |"
        )
    lines += [""]
    for kind, f in s["fits"].items():
        lines.append(
            f"- {kind}: time ~ tokens^{f['exponent_all']:.2f} over all sizes, "
            f"^{f['exponent_largest3']:.2f} over the largest three"
        )
    lines += [
        "",
        "DiT: hidden 128, depth 4; HDiT: hidden 128, level_depths 1, 2, 1 (2 of its 4 blocks "
        "on 2x2-merged tokens). Exponent 1: cost linear in tokens (MLPs); 2: attention-bound.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    ap.add_argument("--quick", action="store_true", help="tiny networks: a smoke run")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--steps", type=int, default=2, help="timed steps per round and network")
    ap.add_argument("--rounds", type=int, default=2, help="rounds, alternating the order")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per network")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.memory_child:
        print(json.dumps(peaks_of(device, args.quick)))
        return 0
    load = load_at_start()
    t0 = time.perf_counter()
    peaks = peaks_in_child(args)
    rows = matched(device, args.quick, args.steps, args.rounds, args.warmup, peaks)
    result = {"rows": rows}
    result["scaling"] = scaling(device, args.quick, args.steps)
    import monai

    result["meta"] = {
        **base_meta(),
        "quick": args.quick,
        "threads": torch.get_num_threads(),
        "device": args.device,
        "device_name": torch.cuda.get_device_name() if device.type == "cuda" else cpu_name(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "steps": args.steps,
        "rounds": args.rounds,
        "warmup": args.warmup,
        "memory_method": "cuda max_memory_allocated"
        if device.type == "cuda"
        else f"rss vmhwm in a child with MALLOC_MMAP_THRESHOLD_={MMAP_THRESHOLD}",
        "load_avg_1m_at_start": load,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    write_results(args.out, "networks", result, to_markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
