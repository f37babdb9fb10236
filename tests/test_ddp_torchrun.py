"""DDP through torchrun on CPU (gloo): 2 ranks x batch B reach the weights of 1 rank x batch 2B.

The engine shards each global batch per rank (rank r takes its contiguous slice of the same
seeded permutation), averages gradients over ranks, and only rank 0 writes files.
"""

import csv
import os
import runpy
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

WORKER = textwrap.dedent(
    """
    import sys
    import torch
    from medgen.train import distributed
    from medgen.train.batches import ShardedBatches
    from medgen.train.engine import fit
    from medgen.train.settings import EngineSettings

    run_dir, batch = sys.argv[1], int(sys.argv[2])
    torch.set_num_threads(1)
    ctx = distributed.setup()

    class Regression:
        def loss(self, model, batch, step):
            x, y = batch
            loss = ((model(x) - y) ** 2).mean()
            return loss, {"mse": float(loss.detach())}

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 32), torch.nn.Tanh(), torch.nn.Linear(32, 2))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 6, generator=g)
    y = torch.stack([x[:, :3].sum(1), x[:, 3:].prod(1)], 1)
    data = ShardedBatches((x, y), batch, seed=5, rank=ctx.rank, world_size=ctx.world_size)
    settings = EngineSettings(
        steps=12, batch_size=batch, lr=1e-2, warmup_steps=2, log_every=4, ema_decay=0.9,
        tensorboard=False,
    )
    result = fit(Regression(), model, data, settings, run_dir, dist_ctx=ctx, quiet=True)
    print(f"rank {ctx.rank}: step {result.step}", flush=True)
    distributed.teardown()
    """
)


def run(cmd, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MEDGEN_QUIET": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):  # nested runs
        env.pop(key, None)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def test_two_ranks_match_one_rank_with_twice_the_batch(tmp_path):
    script = tmp_path / "ddp_worker.py"
    script.write_text(WORKER)
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    proc = run([*torchrun, "--nproc_per_node=2", str(script), str(ddp), "4"], tmp_path)
    assert "rank 0: step 12" in proc.stdout and "rank 1: step 12" in proc.stdout
    threads, argv = torch.get_num_threads(), sys.argv
    try:  # the single-process reference runs in this process (no WORLD_SIZE here)
        sys.argv = [str(script), str(single), "8"]
        runpy.run_path(str(script), run_name="__main__")
    finally:
        sys.argv = argv
        torch.set_num_threads(threads)

    a = load_file(ddp / "checkpoints" / "latest" / "model.safetensors")
    b = load_file(single / "checkpoints" / "latest" / "model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
    torch.manual_seed(0)
    start = torch.nn.Linear(6, 32)  # training moved the weights: not a comparison of inits
    assert (a["0.weight"] - start.weight.detach()).abs().max() > 1e-2
    ea = load_file(ddp / "checkpoints" / "latest" / "ema.safetensors")
    eb = load_file(single / "checkpoints" / "latest" / "ema.safetensors")
    for key in ea:
        torch.testing.assert_close(ea[key], eb[key], rtol=1e-4, atol=1e-5)
    # only rank 0 wrote: one metrics file with one row per log step, one checkpoint tree;
    # its task logs are averaged over both ranks' samples, like the single run's over 2B
    rows = list(csv.DictReader((ddp / "metrics.csv").open()))
    ref = list(csv.DictReader((single / "metrics.csv").open()))
    assert [r["step"] for r in rows] == [r["step"] for r in ref] == ["4", "8", "12"]
    for r, q in zip(rows, ref, strict=True):
        assert float(r["mse"]) == pytest.approx(float(q["mse"]), rel=1e-4)
        assert float(r["loss"]) == pytest.approx(float(q["loss"]), rel=1e-4)
        assert float(r["images_per_s"]) > 0
    assert sorted(p.name for p in (ddp / "checkpoints").iterdir()) == ["latest", "step_00000012"]
