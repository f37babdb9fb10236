"""Exact resume after SIGKILL, and pre-emption by SIGTERM / SIGUSR1, with real processes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from medgen.train.engine.preemption import REQUEUE_EXIT_CODE

WORKER = Path(__file__).with_name("engine_worker.py")


def worker(run_dir, *args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(WORKER), str(run_dir), *map(str, args)]
    return subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)


def finish(proc, timeout=120):
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def wait_for(path: Path, proc, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def tensors(ckpt: Path) -> dict[str, torch.Tensor]:
    out = {f"model.{k}": v for k, v in load_file(ckpt / "model.safetensors").items()}
    out.update({f"ema.{k}": v for k, v in load_file(ckpt / "ema.safetensors").items()})
    state = torch.load(ckpt / "training_state.pt", weights_only=True)
    for i, s in state["objectives"]["main"]["optimizer"]["state"].items():
        out.update({f"opt.{i}.{k}": v for k, v in s.items()})
    return out


@pytest.mark.parametrize("loader", [None, 0, 2], ids=["in-memory", "loader", "loader-2-workers"])
def test_sigkill_then_resume_is_bitwise_identical(tmp_path, loader):
    """With the in-memory source, and with a DataLoader (0 and 2 workers) whose items carry
    a random augmentation drawn from the sampler's per-item seeds."""
    n = 8  # 2N = 16 updates of 2 micro-batches of 4 over 40 samples: crosses 3 epochs
    extra = () if loader is None else ("--loader", loader)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    code, err = finish(worker(straight, "--steps", 2 * n, "--checkpoint-every", n, *extra))
    assert code == 0, err

    proc = worker(killed, "--steps", 2 * n, "--checkpoint-every", n, "--stall-at", n, *extra)
    try:
        wait_for(killed / "checkpoints" / "latest", proc)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    latest = (killed / "checkpoints" / "latest").resolve()
    assert latest.name == f"step_{n:08d}"
    state = json.loads((latest / "state.json").read_text())
    position = state["data_position"]
    if loader is None:
        assert state["step"] == n and position == {"epoch": 1, "offset": 24, "samples": 40}
    else:  # 10 batches of 4 per epoch; 16 delivered
        assert position == {"epoch": 1, "batch": 6, "batches_per_epoch": 10}
    assert not (killed / "checkpoints" / f"step_{2 * n:08d}").exists()

    code, err = finish(worker(killed, "--steps", 2 * n, "--checkpoint-every", n, *extra))
    assert code == 0, err
    a = tensors(straight / "checkpoints" / f"step_{2 * n:08d}")
    b = tensors(killed / "checkpoints" / f"step_{2 * n:08d}")
    assert a.keys() == b.keys() and len(a) > 8
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after kill + resume"
    # the resumed run's metrics.csv continues the killed one's: one row per log step
    rows = (killed / "metrics.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == list(range(2, 2 * n + 1, 2))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_signal_finishes_the_step_writes_a_checkpoint_and_asks_for_requeue(tmp_path, sig):
    run, started = tmp_path / "run", tmp_path / "started"
    proc = worker(run, "--steps", 10_000, "--slow", 0.02, "--started", started)
    wait_for(started, proc)
    proc.send_signal(sig)
    code, err = finish(proc, timeout=60)
    assert code == REQUEUE_EXIT_CODE == 75, err
    assert sig.name in err and "requeue" in err
    latest = (run / "checkpoints" / "latest").resolve()
    state = json.loads((latest / "state.json").read_text())
    assert 2 <= state["step"] < 10_000
    assert latest.name == f"step_{state['step']:08d}"
    # the requeued job resumes from there
    code, err = finish(worker(run, "--steps", state["step"] + 2))
    assert code == 0, err
    assert (run / "checkpoints" / "latest").resolve().name == f"step_{state['step'] + 2:08d}"


def test_resume_takes_the_newest_checkpoint_that_verifies(tmp_path):
    """A dangling `latest` (its step directory deleted) and a damaged newer checkpoint: the
    run resumes from the newest intact one and says so, instead of starting from 0."""
    run = tmp_path / "run"
    code, err = finish(worker(run, "--steps", 6, "--checkpoint-every", 2))
    assert code == 0, err
    root = run / "checkpoints"
    import shutil

    shutil.rmtree(root / "step_00000006")  # latest now dangles
    weights = root / "step_00000004" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)  # damaged
    code, err = finish(worker(run, "--steps", 8, "--checkpoint-every", 2))
    assert code == 0, err
    state = json.loads((root / "latest" / "state.json").read_text())
    assert state["step"] == 8
    rejected = sorted(p.name for p in (root / "rejected").iterdir())
    assert len(rejected) == 1 and rejected[0].startswith("step_00000004-")  # kept, not deleted
    rows = (run / "metrics.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == [2, 4, 6, 8]  # continued from step 2
