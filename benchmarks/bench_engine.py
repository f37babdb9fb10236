"""Overhead of the medgen-train engine per training step vs a bare hand-written loop.

    python benchmarks/bench_engine.py --out DIR [--threads N] [--steps 10] [--rounds 3]
        [--device cpu|cuda]

Both sides train the same token-conditioned MONAI UNet on the same batch size, with AdamW,
warm-up + cosine LR, grad-norm clipping at 1.0, EMA with warm-up and the quickstart's
Min-SNR-5 epsilon loss; the bare loop is the textbook ``zero_grad / loss / backward / clip /
step / ema / sched`` over random index draws. The engine adds its hooks: per-step
bookkeeping, the NaN guard's host sync, log windows, the signal check. No checkpoints, no
TensorBoard and one log row per round, as in a long run between log steps.

A step's time is the interval between consecutive loss computations (the whole update), so
the engine's bookkeeping is inside it. Rounds alternate bare and engine (and which of them
goes first) so that drift in a shared machine's load hits both; after ``--warmup`` steps per round, the median of all
steps is reported, as wall time and as this process's CPU time (``time.process_time``: on a
machine shared with other jobs the CPU time is the steadier measure of the work done; on
CUDA only wall time means anything). Writes DIR/bench_engine.json and DIR/bench_engine.md.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import time
from pathlib import Path

import torch
from harness import DEFAULT_OUT, base_meta, cpu_name, write_results

from medgen.models import DDPM, TokenConditionedUNet, schedules
from medgen.train.batches import RandomDraws
from medgen.train.ema import EMA
from medgen.train.engine import fit
from medgen.train.joint_diffusion import JointDiffusionTask, per_sample_channel_loss
from medgen.train.optim import build_optimizer, build_scheduler
from medgen.train.settings import EngineSettings

CASES = {  # name: (size, batch, channels, attention)
    "quickstart-unet": (32, 32, (32, 64, 64), (False, False, True)),
    "small-unet": (16, 8, (16, 32), (False, True)),
    "tiny-unet": (8, 2, (32, 32), (False, False)),  # compute ~0: the engine's fixed cost shows
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _now() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _intervals(stamps: list[tuple[float, float]]) -> list[tuple[float, float]]:
    return [(b[0] - a[0], b[1] - a[1]) for a, b in itertools.pairwise(stamps)]


def setup(case: str, device: torch.device):
    size, batch, channels, attention = CASES[case]
    g = torch.Generator().manual_seed(0)
    data = (torch.rand(512, 2, size, size, generator=g) * 2 - 1).to(device)
    tokens = torch.randint(0, 20, (512,), generator=g).to(device)
    torch.manual_seed(0)
    model = TokenConditionedUNet(2, 2, 2, 20, channels, attention, 1).to(device)
    strategy = DDPM(schedules.make("cosine", 1000), "epsilon")
    return model, strategy, data, tokens, batch


def settings_for(batch: int, steps: int) -> EngineSettings:
    return EngineSettings(
        steps=steps,
        batch_size=batch,
        lr=1e-3,
        warmup_steps=5,
        grad_clip=1.0,
        ema_decay=0.999,
        log_every=steps,
        tensorboard=False,
    )


def bare_loop(case: str, device: torch.device, steps: int) -> list[float]:
    model, strategy, data, tokens, batch = setup(case, device)
    s = settings_for(batch, steps)
    opt = build_optimizer(model, s)
    sched = build_scheduler(opt, s)
    ema = EMA(model, s.ema_decay)
    gen = torch.Generator().manual_seed(0)
    model.train()
    stamps = []
    for _ in range(steps):
        _sync(device)
        stamps.append(_now())
        idx = torch.randint(0, data.shape[0], (batch,), generator=gen).to(device)
        per, _ = per_sample_channel_loss(strategy, model, data[idx], tokens[idx], gen, 5.0)
        loss = per.mean(0).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
        opt.step()
        ema.update(model)
        sched.step()
    _sync(device)
    stamps.append(_now())
    return _intervals(stamps)


class _Stamped(JointDiffusionTask):
    def __init__(self, *args, device: torch.device, **kw) -> None:
        super().__init__(*args, **kw)
        self.device, self.stamps = device, []

    def loss(self, model, batch, step):
        _sync(self.device)
        self.stamps.append(_now())
        return super().loss(model, batch, step)


def engine_loop(case: str, device: torch.device, steps: int) -> list[float]:
    model, strategy, data, tokens, batch = setup(case, device)
    gen = torch.Generator().manual_seed(0)
    task = _Stamped(strategy, gen, 5.0, device=device)
    fit(
        task, model, RandomDraws((data, tokens), batch, gen), settings_for(batch, steps), quiet=True
    )
    # the loss hook stamps the start of each update; the last update ends when fit returns
    _sync(device)
    return _intervals([*task.stamps, _now()])


def run(device: torch.device, cases, steps: int, rounds: int, warmup: int) -> list[dict]:
    rows = []
    for case in cases:
        times: dict[str, list[tuple[float, float]]] = {"bare": [], "engine": []}
        order = [("bare", bare_loop), ("engine", engine_loop)]
        for r in range(rounds):  # alternate which goes first: no order effect favours one
            for impl, fn in order if r % 2 == 0 else order[::-1]:
                times[impl] += fn(case, device, warmup + steps)[warmup:]
        size, batch, channels, _ = CASES[case]
        wall = {k: statistics.median(t[0] for t in v) for k, v in times.items()}
        cpu = {k: statistics.median(t[1] for t in v) for k, v in times.items()}
        for impl, values in times.items():
            rows.append(
                dict(case=case, size=size, batch=batch, channels=list(channels), impl=impl,
                     median_s=wall[impl], min_s=min(t[0] for t in values), n=len(values),
                     cpu_median_s=cpu[impl], images_per_s=batch / wall[impl],
                     overhead_pct=100 * (wall[impl] / wall["bare"] - 1),
                     delta_ms=1e3 * (wall[impl] - wall["bare"]),
                     cpu_overhead_pct=100 * (cpu[impl] / cpu["bare"] - 1))
            )  # fmt: skip
    return rows


def to_markdown(result: dict) -> str:
    m = result["meta"]
    lines = [
        f"medgen-train engine vs bare loop, {m['timestamp']} on {m['device_name']} "
        f"({m['threads']} threads, torch {m['torch']}); {m['steps']} steps x {m['rounds']} "
        f"rounds after {m['warmup']} warm-up steps per round",
        "",
        "| case | batch x size | impl | median step (ms) | min (ms) | images/s | overhead | "
        "delta (ms) | CPU time (ms) | CPU overhead |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['case']} | {r['batch']} x {r['size']}^2 | {r['impl']} | "
            f"{r['median_s'] * 1e3:.1f} | {r['min_s'] * 1e3:.1f} | {r['images_per_s']:.1f} | "
            f"{r['overhead_pct']:+.1f}% | {r['delta_ms']:+.2f} | {r['cpu_median_s'] * 1e3:.1f} | "
            f"{r['cpu_overhead_pct']:+.1f}% |"
        )
    lines += [
        "",
        "Overhead = engine median / bare median - 1 (target: at most +5%), in wall time and in "
        "this process's CPU time; delta = engine - bare median wall time per step. The "
        "tiny-unet case has almost no compute, so its delta is the engine's fixed cost per "
        "step. Both sides: same UNet, batch, AdamW, clip 1.0, EMA, warm-up + cosine LR, "
        "Min-SNR-5 eps loss.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--steps", type=int, default=10, help="timed steps per round and impl")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device")
    torch.set_num_threads(args.threads)
    os.environ.setdefault("MEDGEN_QUIET", "1")
    device = torch.device(args.device)
    t0 = time.perf_counter()
    result = {"rows": run(device, args.cases, args.steps, args.rounds, args.warmup)}
    result["meta"] = {
        **base_meta(),
        "threads": torch.get_num_threads(),
        "device": args.device,
        "device_name": torch.cuda.get_device_name() if device.type == "cuda" else cpu_name(),
        "torch": torch.__version__,
        "steps": args.steps,
        "rounds": args.rounds,
        "warmup": args.warmup,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    write_results(args.out, "engine", result, to_markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
