"""Overhead of the medgen-train engine per training step vs a bare hand-written loop.

    python benchmarks/bench_engine.py --out DIR [--quick] [--threads N] [--steps 10]
        [--rounds 3] [--warmup 3] [--device cpu|cuda] [--cases ...]

Every side trains the same ``medgen.models.ConditionedUNet`` (2 channels in and out, the
quickstart's 10 z-bin tokens; seeded alike, so the same initial weights) on the same batch
size, with AdamW, warm-up + cosine LR, grad-norm clipping at 1.0, EMA 0.999 with warm-up and
the quickstart's Min-SNR-5 epsilon loss, on in-memory batches (``ShardedBatches``: a seeded
permutation per epoch, indexed in memory). Three implementations:

  * ``bare``: the textbook ``zero_grad / loss / backward / clip / step / ema / sched`` loop,
    the loss written out with ``medgen.models.diffusion_loss`` + ``min_snr_weight``;
  * ``engine``: ``medgen.train.engine.fit`` over ``TrainingSetup.single(model, loss)`` with
    exactly the bare loop's loss function; the difference is the engine: per-step
    bookkeeping, the NaN guard (loss/grad-norm host sync, a finiteness pass over the weights
    after every step), log windows, the stop-signal check;
  * ``engine+task``: ``fit`` over the diffusion task itself (``DiffusionModel.build`` from the
    quickstart config, its network loaded with the same weights, ``DiffusionTask.loss``), fed
    dict batches (image, mask, token) as the cache would give them; it adds the task's work:
    channel layout, per-channel losses, per-timestep-bucket logs.

No checkpoints, no TensorBoard and one log row per round, as in a long run between log steps.
A step's time is the interval between consecutive loss computations (the whole update), so
the engine's bookkeeping is inside it. Rounds alternate the implementations (and the order
they go in) so that drift in a shared machine's load hits all of them; after ``--warmup``
steps per round, the median of all steps is reported, as wall time and as this process's CPU
time (``time.process_time``: on a machine shared with other jobs the CPU time is the steadier
measure of the work done, though not immune: OpenMP threads spin-waiting for a descheduled
peer burn CPU too, so run it alone; on CUDA only wall time means anything). Overheads are
ratios to the bare loop measured in the same run. Writes DIR/<timestamp>_engine.json and .md.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import time
from pathlib import Path

import torch
from harness import DEFAULT_OUT, base_meta, cpu_name, load_at_start, write_results

from medgen.models import DDPM, ConditionedUNet, diffusion_loss, min_snr_weight, schedules
from medgen.train.config.fit import load_fit_config
from medgen.train.engine import EMA, EngineSettings, Objective, ShardedBatches, TrainingSetup, fit
from medgen.train.engine.optim import build_optimizer, build_scheduler
from medgen.train.tasks.data import DataDescription
from medgen.train.tasks.diffusion.task import NETWORK, DiffusionModel, DiffusionTask

N_TOKENS = 10  # the quickstart's 10 z-bins x 1 class
N_ITEMS = 512  # in-memory samples per case
MIN_SNR_GAMMA = 5.0
CASES = {  # name: (size, batch, channels, attention)
    "quickstart-unet": (32, 32, (32, 64, 64), (False, False, True)),
    "small-unet": (16, 8, (16, 32), (False, True)),
    "tiny-unet": (8, 2, (32, 32), (False, False)),  # compute ~0: the engine's fixed cost shows
}
QUICK_CASES = ("small-unet", "tiny-unet")
IMPLS = ("bare", "engine", "engine+task")


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def now() -> tuple[float, float]:
    """(wall, this process's CPU) seconds."""
    return time.perf_counter(), time.process_time()


def intervals(stamps: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(wall, CPU) durations between consecutive stamps."""
    return [(b[0] - a[0], b[1] - a[1]) for a, b in itertools.pairwise(stamps)]


def network(channels, attention, device: torch.device) -> ConditionedUNet:
    """The case's ConditionedUNet, seeded: every implementation starts from these weights."""
    torch.manual_seed(0)
    net = ConditionedUNet(
        2,
        2,
        2,
        num_tokens=N_TOKENS,
        channels=channels,
        attention_levels=attention,
        num_res_blocks=1,
    )
    return net.to(device)


def strategy() -> DDPM:
    """The quickstart's strategy: DDPM, cosine schedule, T = 1000, epsilon prediction."""
    return DDPM(schedules.make("cosine", 1000), "epsilon")


def eps_loss(strat: DDPM, net, x0: torch.Tensor, tokens: torch.Tensor, gen) -> torch.Tensor:
    """The Min-SNR-5 epsilon loss of one batch, written out (the bare loop's loss)."""
    t = strat.sample_timesteps(x0.shape[0], gen).to(x0.device)
    noise = torch.randn(x0.shape, generator=gen).to(x0)
    x_t = strat.add_noise(x0, noise, t)
    out = net(x_t, strat.model_time(t).to(x0.device), tokens)
    w = min_snr_weight(strat.snr(t, x0).reshape(-1), strat.prediction, MIN_SNR_GAMMA)
    return diffusion_loss(out, strat.training_target(x0, noise, t), weight=w)["loss"]


class DictBatches:
    """:class:`ShardedBatches` over named tensors, yielding dict batches as a cache's
    DataLoader does (the in-memory batch source of the task-fed benchmarks)."""

    def __init__(self, tensors: dict[str, torch.Tensor], batch_size: int, seed: int = 0):
        self.keys = tuple(tensors)
        self.inner = ShardedBatches([tensors[k] for k in self.keys], batch_size, seed)
        self.batch_size = batch_size

    def next_batch(self) -> dict[str, torch.Tensor]:
        """The next batch as a dict."""
        return dict(zip(self.keys, self.inner.next_batch(), strict=True))

    def position(self) -> dict:
        """The wrapped source's position."""
        return self.inner.position()

    def state_dict(self) -> dict:
        """The wrapped source's state."""
        return self.inner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Restore the wrapped source's state."""
        self.inner.load_state_dict(state)


def make_data(size: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Image in [-1, 1], a uint8 mask, tokens, and x0 = (image, mask as -1/1) as the task
    builds it."""
    g = torch.Generator().manual_seed(0)
    image = torch.rand(N_ITEMS, 1, size, size, generator=g) * 2 - 1
    mask = (torch.rand(N_ITEMS, 1, size, size, generator=g) > 0.7).to(torch.uint8)
    token = torch.randint(0, N_TOKENS, (N_ITEMS,), generator=g)
    x0 = torch.cat([image, (mask > 0).float() * 2 - 1], dim=1)
    out = {"image": image, "mask": mask, "token": token, "x0": x0}
    return {k: v.to(device) for k, v in out.items()}


def settings_for(batch: int, steps: int) -> EngineSettings:
    """The training settings every implementation follows."""
    return EngineSettings(
        steps=steps,
        batch_size=batch,
        lr=1e-3,
        warmup_steps=min(5, steps - 1),
        grad_clip=1.0,
        ema_decay=0.999,
        log_every=steps,
        tensorboard=False,
    )


def bare_loop(case: str, device: torch.device, steps: int) -> list[tuple[float, float]]:
    """Per-step (wall, CPU) seconds of the hand-written loop."""
    size, batch, channels, attention = CASES[case]
    data = make_data(size, device)
    model, strat = network(channels, attention, device), strategy()
    s = settings_for(batch, steps)
    opt = build_optimizer(model.parameters(), s.optimizer_settings())
    sched = build_scheduler(opt, s.optimizer_settings(), steps)
    ema = EMA({"model": model}, s.ema_decay, s.ema_warmup)
    batches = ShardedBatches([data["x0"], data["token"]], batch, seed=0)
    gen = torch.Generator().manual_seed(0)
    model.train()
    stamps = []
    for _ in range(steps):
        sync(device)
        stamps.append(now())
        x0, tokens = batches.next_batch()
        loss = eps_loss(strat, model, x0, tokens, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
        opt.step()
        ema.update({"model": model})
        sched.step()
    sync(device)
    stamps.append(now())
    return intervals(stamps)


def stamped(loss, device: torch.device, stamps: list):
    """``loss`` that first stamps the time: the start of every update the engine makes."""

    def run(*args):
        sync(device)
        stamps.append(now())
        return loss(*args)

    return run


def diffusion_model(case: str, device: torch.device) -> DiffusionModel:
    """The quickstart's diffusion task for this case's sizes, its network holding exactly the
    weights of :func:`network` (a strict ``load_state_dict``: the same architecture)."""
    size, _, channels, attention = CASES[case]
    cfg = load_fit_config(
        "quickstart",
        [
            "task.strategy.kind=ddpm",  # eps, cosine, Min-SNR-5: the bare loop's loss
            f"model.channels=[{','.join(map(str, channels))}]",
            f"model.attention_levels=[{','.join(str(a).lower() for a in attention)}]",
        ],
    )
    description = DataDescription(
        kind="slices",
        spatial_dims=2,
        channels=["image"],
        modalities=["image"],
        has_mask=True,
        labels=[0, 1],
        n_bins=N_TOKENS,
        n_classes=1,
        n_modes=0,
        shape=[size, size],
        spacing=[1.0, 1.0, 1.0],
    )
    model = DiffusionModel.build(cfg.task, cfg.model, description, device)
    model.network.load_state_dict(network(channels, attention, device).state_dict())
    return model


def engine_loop(case: str, device: torch.device, steps: int, task: bool) -> list:
    """Per-step (wall, CPU) seconds of ``fit`` (the bare loss, or the diffusion task's)."""
    size, batch, channels, attention = CASES[case]
    data = make_data(size, device)
    stamps: list = []
    if task:
        model = diffusion_model(case, device)
        diffusion = DiffusionTask(model, device, seed=0)
        setup = TrainingSetup(
            modules={NETWORK: model.network},
            objectives=[
                Objective("diffusion", (NETWORK,), stamped(diffusion.loss, device, stamps))
            ],
            state=diffusion,
        )
        source = DictBatches({k: data[k] for k in ("image", "mask", "token")}, batch)
    else:
        model, strat = network(channels, attention, device), strategy()
        gen = torch.Generator().manual_seed(0)

        def loss(net, b, step):
            return eps_loss(strat, net, b[0], b[1], gen), {}

        setup = TrainingSetup.single(model, stamped(loss, device, stamps))
        source = ShardedBatches([data["x0"], data["token"]], batch, seed=0)
    fit(setup, source, settings_for(batch, steps), quiet=True)
    # the loss hook stamps the start of each update; the last update ends when fit returns
    sync(device)
    return intervals([*stamps, now()])


def run(device: torch.device, cases, steps: int, rounds: int, warmup: int) -> list[dict]:
    """Rows: one per case and implementation."""
    rows = []
    order = [
        ("bare", lambda c, n: bare_loop(c, device, n)),
        ("engine", lambda c, n: engine_loop(c, device, n, task=False)),
        ("engine+task", lambda c, n: engine_loop(c, device, n, task=True)),
    ]
    for case in cases:
        times: dict[str, list[tuple[float, float]]] = {impl: [] for impl in IMPLS}
        for r in range(rounds):  # alternate which goes first: no order effect favours one
            for impl, fn in order if r % 2 == 0 else order[::-1]:
                times[impl] += fn(case, warmup + steps)[warmup:]
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
    """The result as a Markdown table with its reading notes."""
    m = result["meta"]
    quick = " **(--quick: tiny sizes, few steps; not a measurement)**" if m["quick"] else ""
    lines = [
        f"# medgen-train engine vs bare loop{quick}",
        "",
        f"{m['timestamp']} on {m['device_name']} ({m['threads']} threads, torch {m['torch']}); "
        f"{m['steps']} steps x {m['rounds']} rounds after {m['warmup']} warm-up steps per "
        f"round and implementation; 1-min load average at start {m['load_avg_1m_at_start']}.",
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
        "Overhead = median / bare median - 1 (target for `engine`: at most +5%), in wall time "
        "and in this process's CPU time; delta = median - bare median wall time per step. "
        "`engine` runs the bare loop's own loss, so its overhead is the engine's; "
        "`engine+task` runs the diffusion task's loss (channel layout, per-channel and "
        "per-timestep-bucket logs) on dict batches. The tiny-unet case has almost no compute, "
        "so its delta is the fixed cost per step. All: same ConditionedUNet weights, batch, "
        "AdamW, clip 1.0, EMA, warm-up + cosine LR, Min-SNR-5 eps loss, in-memory batches.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run, write the results."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    ap.add_argument("--quick", action="store_true", help="tiny cases, few steps: a smoke run")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--steps", type=int, help="timed steps per round and impl (10; quick 2)")
    ap.add_argument("--rounds", type=int, help="rounds (3; quick 2)")
    ap.add_argument("--warmup", type=int, help="untimed steps per round and impl (3; quick 1)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--cases", nargs="+", default=None, choices=list(CASES))
    args = ap.parse_args(argv)
    for key, full, quick in (("steps", 10, 2), ("rounds", 3, 2), ("warmup", 3, 1)):
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)
    cases = args.cases or (list(QUICK_CASES) if args.quick else list(CASES))
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device")
    torch.set_num_threads(args.threads)
    os.environ.setdefault("MEDGEN_QUIET", "1")
    device = torch.device(args.device)
    load = load_at_start()
    t0 = time.perf_counter()
    result = {"rows": run(device, cases, args.steps, args.rounds, args.warmup)}
    result["meta"] = {
        **base_meta(),
        "quick": args.quick,
        "threads": torch.get_num_threads(),
        "device": args.device,
        "device_name": torch.cuda.get_device_name() if device.type == "cuda" else cpu_name(),
        "torch": torch.__version__,
        "steps": args.steps,
        "rounds": args.rounds,
        "warmup": args.warmup,
        "load_avg_1m_at_start": load,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    write_results(args.out, "engine", result, to_markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
