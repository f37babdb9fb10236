"""DDP through torchrun on CPU (gloo), with the DataLoader: 2 ranks x batch B reach the
weights of 1 rank x batch 2B; and SIGKILL of the whole job after a checkpoint, then resume on
2 ranks, gives bitwise the weights of an uninterrupted 2-rank run."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow
WORKER = Path(__file__).with_name("ddp_worker.py")


def env():
    e = {**os.environ, "OMP_NUM_THREADS": "1", "MEDGEN_QUIET": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        e.pop(key, None)
    return e


def torchrun(nproc, *args):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", str(WORKER), *map(str, args)]  # fmt: skip
    return cmd


def run(cmd, cwd):
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=300, cwd=cwd)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def weights(run_dir, name="latest"):
    ckpt = Path(run_dir) / "checkpoints" / name
    out = {f"m.{k}": v for k, v in load_file(ckpt / "model.safetensors").items()}
    out.update({f"e.{k}": v for k, v in load_file(ckpt / "ema.safetensors").items()})
    return out


def test_two_ranks_match_one_rank_with_twice_the_batch(tmp_path):
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    proc = run(torchrun(2, ddp, 4, "--plain", 1), tmp_path)
    assert "rank 0: step 12" in proc.stdout and "rank 1: step 12" in proc.stdout
    run([sys.executable, str(WORKER), str(single), "8", "--plain", "1"], tmp_path)
    a, b = weights(ddp), weights(single)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
    torch.manual_seed(0)
    start = torch.nn.Linear(6, 32)  # training moved the weights: not a comparison of inits
    assert (a["m.model.0.weight"] - start.weight.detach()).abs().max() > 1e-2
    # only rank 0 wrote: one metrics file, its task logs averaged over both ranks' samples
    rows = list(csv.DictReader((ddp / "metrics.csv").open()))
    ref = list(csv.DictReader((single / "metrics.csv").open()))
    assert [r["step"] for r in rows] == [r["step"] for r in ref] == ["4", "8", "12"]
    for r, q in zip(rows, ref, strict=True):
        assert float(r["loss"]) == pytest.approx(float(q["loss"]), rel=1e-4)
    assert sorted(p.name for p in (ddp / "checkpoints").iterdir()) == ["latest", "step_00000012"]


def test_sigkill_of_a_two_rank_job_then_resume_is_bitwise_identical(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run(torchrun(2, straight, 4, "--steps", 16, "--checkpoint-every", 8), tmp_path)
    job = subprocess.Popen(
        torchrun(2, killed, 4, "--steps", 16, "--checkpoint-every", 8, "--stall-at", 8),
        env=env(), cwd=tmp_path, start_new_session=True, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not (killed / "checkpoints" / "latest").exists():
            assert job.poll() is None, job.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.1)
        time.sleep(0.5)  # both ranks are past the barrier, sleeping in step 8
        os.killpg(job.pid, signal.SIGKILL)  # the launcher and both ranks at once
    finally:
        job.wait(60)
        job.stderr.close()
    assert (killed / "checkpoints" / "latest").resolve().name == "step_00000008"
    run(torchrun(2, killed, 4, "--steps", 16, "--checkpoint-every", 8), tmp_path)
    a, b = weights(straight, "step_00000016"), weights(killed, "step_00000016")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after SIGKILL + resume under DDP"
