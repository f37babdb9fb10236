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

from medgen.train.preemption import REQUEUE_EXIT_CODE

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
    for i, s in state["optimizer"]["state"].items():
        out.update({f"opt.{i}.{k}": v for k, v in s.items()})
    return out


def test_sigkill_then_resume_is_bitwise_identical(tmp_path):
    n = 8  # 2N = 16 updates of 2 micro-batches of 4 over 40 samples: crosses 3 epochs
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    code, err = finish(worker(straight, "--steps", 2 * n, "--checkpoint-every", n))
    assert code == 0, err

    proc = worker(killed, "--steps", 2 * n, "--checkpoint-every", n, "--stall-at", n)
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
    assert state["step"] == n and state["data_position"]["epoch"] == 1
    assert state["data_position"]["offset"] == 24  # (8 x 2 x 4) mod 40
    assert not (killed / "checkpoints" / f"step_{2 * n:08d}").exists()

    code, err = finish(worker(killed, "--steps", 2 * n, "--checkpoint-every", n))
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
