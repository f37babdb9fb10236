"""DDP step overhead on CPU (gloo): PyTorch's DistributedDataParallel, as the engine wraps it,
vs the hand-written flat all-reduce it replaced, in the same torchrun job.

    python benchmarks/bench_ddp.py --out DIR [--quick] [--nproc 2] [--threads T] [--steps 20]
        [--rounds 3] [--warmup 2] [--cases ...]

The driver starts ``python -m torch.distributed.run --standalone --nproc_per_node=N`` of this
script in worker mode (``--worker JSON``; gloo, ``OMP_NUM_THREADS=T`` per rank), then the same
worker as one plain process for the references. Every rank trains bench_engine's
``ConditionedUNet`` cases on its slice of each global batch (``ShardedBatches``: the case's
batch is the global one, each of N ranks takes batch / N) with bench_engine's Min-SNR-5
epsilon loss. One step: next batch, loss, ``zero_grad``, ``backward``, [gradient exchange],
clip at 1.0, AdamW step, ``float(loss)``, and for the exchanging arms the loss averaged over
ranks (``distributed.all_mean``, as the engine logs it). The arms, each with its own copy of
the same initial weights, its own batch stream and noise generator (the same for ddp and
flat):

  * ``ddp``: ``medgen.train.engine.distributed.wrap(model, ctx)``, i.e.
    ``DistributedDataParallel`` exactly as the engine builds it (CPU, no device ids,
    ``find_unused_parameters=False``, default 25 MB buckets all-reduced during backward);
  * ``flat``: the plain module and, after backward, ``average_gradients``: the engine's own
    averaging before DDP (copied below from git ``8f05bea~2``), one gloo all-reduce of every
    gradient and a used-flag per parameter concatenated into one flat tensor, copied back;
  * ``none``: no gradient exchange at all: each rank steps its own model while the others do
    the same (the compute floor under the same load on the machine).

Rounds alternate the arms (and the order they go in) so that drift in a shared machine's load
hits all of them; every round begins with a barrier and ``--warmup`` untimed steps. A step's
time is taken on every rank (wall and the rank's CPU time); the ranks' steps are pooled (the
exchanging arms wait for each other every step, so their ranks' times agree). After the last
round the ddp and flat models are compared: same batches, same noise, same averaged
gradients, so their weights must agree (``max |w_ddp - w_flat|``).

References, run afterwards as one plain process (not alternated with the job; same machine):
``1 process, batch / N``: one rank's work with no communication and no other rank running,
on T threads; ``1 process, batch``: the whole global batch on N x T threads (what the same
cores do without DDP). Figures are medians and ratios: ddp / flat (target ~1.0 or below),
each arm / none (the cost of exchanging gradients). Writes DIR/<timestamp>_ddp.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
from bench_engine import CASES, QUICK_CASES, eps_loss, network, strategy
from harness import DEFAULT_OUT, base_meta, cpu_name, load_at_start, write_results
from torch import nn

from medgen.train.engine import ShardedBatches, distributed

ARMS = ("ddp", "flat", "none")
DATA_ITEMS = 256
DIST_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


# -- the peer: the hand-written averaging DDP replaced (medgen-train before 8f05bea) -------------
def broadcast_parameters(model: nn.Module) -> None:
    """Start every rank from rank 0's weights and buffers."""
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(t.data, src=0)


def average_gradients(model: nn.Module, world_size: int) -> None:
    """Average gradients over ranks in one flat all-reduce of the same layout on every rank:
    a parameter that has no gradient on some ranks (unused by their batch) counts as zero
    there, and one that has none on any rank keeps none."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    has = torch.tensor([p.grad is not None for p in params], dtype=grads[0].dtype)
    flat = torch.cat([g.reshape(-1) for g in grads] + [has.to(grads[0].device)])
    dist.all_reduce(flat)
    flat /= world_size
    used = (flat[-len(params) :] > 0).tolist()
    offset = 0
    for p, g, on_some_rank in zip(params, grads, used, strict=True):
        n = g.numel()
        if on_some_rank:
            g.copy_(flat[offset : offset + n].view_as(g))
            p.grad = g
        offset += n


# -- worker (one rank) -------------------------------------------------------------------------
class Arm:
    """One way of training: a model copy, its optimizer, batches and noise generator."""

    def __init__(self, name: str, case: str, ctx, per_rank_batch: int) -> None:
        size, _, channels, attention = CASES[case]
        cpu = torch.device("cpu")
        self.name, self.ctx = name, ctx
        self.plain = network(channels, attention, cpu)  # the same seeded weights in every arm
        self.net = self.plain
        if name == "ddp":
            self.net = distributed.wrap(self.plain, ctx)  # broadcasts rank 0's weights
        elif name == "flat" and ctx.enabled:
            broadcast_parameters(self.plain)
        self.plain.train()
        self.opt = torch.optim.AdamW(self.plain.parameters(), lr=1e-3)
        g = torch.Generator().manual_seed(0)
        x0 = torch.rand(DATA_ITEMS, 2, size, size, generator=g) * 2 - 1
        tokens = torch.randint(0, 10, (DATA_ITEMS,), generator=g)
        self.batches = ShardedBatches(
            [x0, tokens], per_rank_batch, seed=0, rank=ctx.rank, world_size=ctx.world_size
        )
        self.gen = torch.Generator().manual_seed(1 + 1000 * ctx.rank)
        self.strategy = strategy()

    def step(self) -> None:
        """One update."""
        x0, tokens = self.batches.next_batch()
        loss = eps_loss(self.strategy, self.net, x0, tokens, self.gen)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.name == "flat" and self.ctx.enabled:
            average_gradients(self.plain, self.ctx.world_size)
        torch.nn.utils.clip_grad_norm_(self.plain.parameters(), 1.0)
        self.opt.step()
        value = float(loss.detach())
        if self.name != "none":
            distributed.all_mean(value, self.ctx)


def run_arm(arm: Arm, steps: int, warmup: int) -> list[tuple[float, float]]:
    """(wall, CPU) seconds of ``steps`` updates after ``warmup`` untimed ones."""
    distributed.barrier(arm.ctx)
    for _ in range(warmup):
        arm.step()
    out = []
    for _ in range(steps):
        t0, c0 = time.perf_counter(), time.process_time()
        arm.step()
        out.append((time.perf_counter() - t0, time.process_time() - c0))
    return out


def worker(args: argparse.Namespace) -> int:
    """One rank of the job (or the single reference process): measure, rank 0 writes JSON."""
    torch.set_num_threads(args.threads)
    ctx = distributed.setup()
    arms = ARMS if ctx.enabled else ("none",)
    result = {"world_size": ctx.world_size, "threads": torch.get_num_threads(), "cases": {}}
    try:
        for case in args.cases:
            per_rank = max(1, CASES[case][1] // args.batch_div)
            built = {name: Arm(name, case, ctx, per_rank) for name in arms}
            times: dict[str, list] = {name: [] for name in arms}
            for r in range(args.rounds):
                for name in arms if r % 2 == 0 else arms[::-1]:
                    times[name] += run_arm(built[name], args.steps, args.warmup)
            diff = None
            if "ddp" in built and "flat" in built:
                ddp, flat = built["ddp"].plain, built["flat"].plain
                pairs = zip(ddp.parameters(), flat.parameters(), strict=True)
                diff = max(float((a.detach() - b.detach()).abs().max()) for a, b in pairs)
            everyone = distributed.gather(times, ctx)
            params = [p for p in built[arms[0]].plain.parameters() if p.requires_grad]
            result["cases"][case] = {
                "per_rank_batch": per_rank,
                "params": sum(p.numel() for p in params),
                "grad_mb": sum(p.numel() * p.element_size() for p in params) / 2**20,
                "max_weight_diff_ddp_flat": diff,
                "arms": {
                    name: {
                        "wall": [t[0] for rank in everyone for t in rank[name]],
                        "cpu": [t[1] for rank in everyone for t in rank[name]],
                        "rank_median_wall": [
                            statistics.median(t[0] for t in rank[name]) for rank in everyone
                        ],
                    }
                    for name in arms
                },
            }
    finally:
        distributed.teardown()
    if ctx.is_main:
        Path(args.worker).write_text(json.dumps(result))
    return 0


# -- driver ------------------------------------------------------------------------------------
def child_env(threads: int) -> dict:
    """The environment of a child: no inherited rank variables, T OpenMP threads, quiet."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MEDGEN_QUIET": "1"}
    for key in DIST_ENV:
        env.pop(key, None)
    return env


def launch(cmd: list[str], threads: int, timeout: float) -> None:
    """Run a child; on failure show the end of its output."""
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=child_env(threads), timeout=timeout
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-6000:])
        raise SystemExit(f"bench_ddp: {' '.join(cmd[:6])} ... exited with {proc.returncode}")


def worker_args(args: argparse.Namespace, out: Path, batch_div: int, threads: int) -> list:
    """Command-line arguments of a worker."""
    return [
        str(Path(__file__).resolve()),
        "--worker", str(out), "--cases", *args.cases, "--steps", str(args.steps),
        "--rounds", str(args.rounds), "--warmup", str(args.warmup),
        "--threads", str(threads), "--batch-div", str(batch_div),
    ]  # fmt: skip


def summarize(job: dict, refs: dict[str, dict]) -> list[dict]:
    """One row per case and arm (job arms, then the references)."""
    rows = []
    for case, c in job["cases"].items():
        med = {name: statistics.median(a["wall"]) for name, a in c["arms"].items()}
        size, batch, channels, _ = CASES[case]
        common = dict(case=case, size=size, global_batch=batch, channels=list(channels),
                      params=c["params"], grad_mb=round(c["grad_mb"], 2))  # fmt: skip
        for name, a in c["arms"].items():
            rows.append(
                dict(**common, arm=name, processes=job["world_size"],
                     threads_per_process=job["threads"], per_process_batch=c["per_rank_batch"],
                     median_s=med[name], min_s=min(a["wall"]), n=len(a["wall"]),
                     cpu_median_s=statistics.median(a["cpu"]),
                     rank_median_s=a["rank_median_wall"],
                     vs_flat=med[name] / med["flat"], vs_none=med[name] / med["none"],
                     images_per_s=batch / med[name],
                     max_weight_diff_ddp_flat=c["max_weight_diff_ddp_flat"])
            )  # fmt: skip
        for label, ref in refs.items():
            a = ref["cases"][case]["arms"]["none"]
            m = statistics.median(a["wall"])
            per_process = ref["cases"][case]["per_rank_batch"]
            rows.append(
                dict(**common, arm=label, processes=1, threads_per_process=ref["threads"],
                     per_process_batch=per_process, median_s=m, min_s=min(a["wall"]),
                     n=len(a["wall"]), cpu_median_s=statistics.median(a["cpu"]),
                     rank_median_s=[m], vs_flat=m / med["flat"], vs_none=m / med["none"],
                     images_per_s=per_process / m, max_weight_diff_ddp_flat=None)
            )  # fmt: skip
    return rows


def to_markdown(result: dict) -> str:
    """The result as a Markdown table with its reading notes."""
    m = result["meta"]
    quick = " **(--quick: tiny sizes, few steps; not a measurement)**" if m["quick"] else ""
    n, t = m["nproc"], m["threads_per_rank"]
    lines = [
        f"# DDP step overhead on CPU gloo: DistributedDataParallel vs flat all-reduce{quick}",
        "",
        f"{m['timestamp']} on {m['cpu']}; torch {m['torch']}; {n} ranks under torchrun "
        f"(gloo) x {t} thread(s) each; {m['steps']} steps x {m['rounds']} rounds per arm after "
        f"{m['warmup']} warm-up steps per round, steps of all ranks pooled; 1-min load average "
        f"at start {m['load_avg_1m_at_start']}.",
        "",
        "| case | arm | processes x threads | batch per process | median step (ms) | min (ms) "
        "| CPU (ms) | images/s | vs flat | vs none |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['case']} ({r['params'] / 1e6:.2f} M params, {r['grad_mb']:.1f} MB grads) | "
            f"{r['arm']} | {r['processes']} x {r['threads_per_process']} | "
            f"{r['per_process_batch']} | {r['median_s'] * 1e3:.1f} | {r['min_s'] * 1e3:.1f} | "
            f"{r['cpu_median_s'] * 1e3:.1f} | {r['images_per_s']:.1f} | {r['vs_flat']:.3f} | "
            f"{r['vs_none']:.3f} |"
        )
    checks = {r["case"]: r["max_weight_diff_ddp_flat"] for r in result["rows"] if r["arm"] == "ddp"}
    lines += [
        "",
        "ddp: `DistributedDataParallel` as `medgen.train.engine.distributed.wrap` builds it; "
        "flat: the pre-DDP engine's `average_gradients` (one flat all-reduce after backward); "
        "none: no gradient exchange (each rank alone, all ranks busy). Every arm: the same "
        "weights, batches and Min-SNR-5 eps loss; AdamW, clip 1.0; ddp and flat also average "
        "the loss over ranks as the engine does. `vs flat` = median / flat median (ddp: the "
        "figure of merit, <= 1 means DDP costs no more than the code it replaced); `vs none` "
        "= median / none median (the price of exchanging gradients). images/s counts the "
        "global batch for the job's arms and the process's own batch for the references.",
        f"References (separate process after the job, not alternated): `1 process, batch/{n}` "
        f"is one rank's work alone on {t} thread(s); `1 process, batch` is the whole global "
        f"batch on {n * t} threads, the no-DDP alternative on the same cores.",
        "Same updates check, max |w_ddp - w_flat| after the run: "
        + ", ".join(f"{c}: {v:.2e}" for c, v in checks.items())
        + ".",
    ]
    return "\n".join(lines) + "\n"


def driver(args: argparse.Namespace) -> int:
    """Run the torchrun job and the references; write the results."""
    n = args.nproc
    threads = args.threads or max(1, (os.cpu_count() or n) // n)
    load = load_at_start()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_ddp.") as tmp:
        job, one, whole = (Path(tmp) / f"{k}.json" for k in ("job", "one", "whole"))
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc_per_node={n}"]  # fmt: skip
        launch(torchrun + worker_args(args, job, n, threads), threads, args.timeout)
        launch([sys.executable, *worker_args(args, one, n, threads)], threads, args.timeout)
        launch(
            [sys.executable, *worker_args(args, whole, 1, n * threads)], n * threads, args.timeout
        )
        refs = {
            f"1 process, batch/{n}": json.loads(one.read_text()),
            "1 process, batch": json.loads(whole.read_text()),
        }
        job_result = json.loads(job.read_text())
    result = {"rows": summarize(job_result, refs)}
    result["meta"] = {
        **base_meta(),
        "quick": args.quick,
        "device_name": cpu_name(),
        "torch": torch.__version__,
        "backend": "gloo",
        "nproc": n,
        "threads_per_rank": threads,
        "cases": list(args.cases),
        "steps": args.steps,
        "rounds": args.rounds,
        "warmup": args.warmup,
        "load_avg_1m_at_start": load,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    write_results(args.out, "ddp", result, to_markdown(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments; run as the driver or as a worker."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    ap.add_argument("--quick", action="store_true", help="tiny cases, few steps: a smoke run")
    ap.add_argument("--nproc", type=int, default=2, help="ranks of the torchrun job")
    ap.add_argument("--threads", type=int, default=0, help="threads per rank (0: cpus / nproc)")
    ap.add_argument("--steps", type=int, help="timed steps per round and arm (20; quick 2)")
    ap.add_argument("--rounds", type=int, help="rounds (3; quick 2)")
    ap.add_argument("--warmup", type=int, help="untimed steps per round and arm (2; quick 1)")
    ap.add_argument("--cases", nargs="+", default=None, choices=list(CASES))
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per child process")
    ap.add_argument("--worker", help=argparse.SUPPRESS)  # JSON path: run as a worker
    ap.add_argument("--batch-div", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    for key, full, quick in (("steps", 20, 2), ("rounds", 3, 2), ("warmup", 2, 1)):
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)
    args.cases = args.cases or list(QUICK_CASES if args.quick else CASES)
    if args.worker:
        return worker(args)
    if args.nproc < 2:
        ap.error("--nproc: DDP needs at least 2 ranks")
    return driver(args)


if __name__ == "__main__":
    raise SystemExit(main())
