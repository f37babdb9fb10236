"""Checkpoint directories: written under a temporary name, verified by hash, loaded safely."""

import os
import pickle

import pytest
import torch

from medgen.train.checkpoint import (
    find_checkpoint,
    load_training_state,
    load_weights,
    read_state,
    save_checkpoint,
    verify_checkpoint,
)
from medgen.train.engine import EMA
from medgen.train.errors import CheckpointError


def make(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))


def test_roundtrip_of_named_modules_ema_and_state(tmp_path):
    net, critic = make(0), make(1)
    ema = EMA({"net": net}, 0.99)
    path = save_checkpoint(
        tmp_path, 12, {"net": net, "critic": critic}, {"lr": 0.01}, ema=ema.modules,
        training_state={"counter": torch.tensor([3])}, info={"metrics": {"ssim": 0.5}},
        files={"data.json": b"{}"},
    )  # fmt: skip
    assert path.name == "step_00000012"
    assert (tmp_path / "checkpoints" / "latest").resolve() == path
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]
    other, other_critic = make(5), make(6)
    load_weights(path, {"net": other, "critic": other_critic})
    for a, b in zip(net.parameters(), other.parameters(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(critic.parameters(), other_critic.parameters(), strict=True):
        assert torch.equal(a, b)
    assert read_state(path)["metrics"] == {"ssim": 0.5}
    assert load_training_state(path)["counter"].item() == 3
    assert (path / "data.json").read_bytes() == b"{}"
    assert verify_checkpoint(path) is None


class Payload:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = ""


def test_malicious_pickle_is_refused_without_running(tmp_path):
    global MARKER
    path = save_checkpoint(tmp_path, 1, {"net": make()}, {})
    marker = tmp_path / "pwned"
    MARKER = str(marker)
    with open(path / "training_state.pt", "wb") as fh:
        pickle.dump({"optimizer": Payload()}, fh, protocol=2)
    with pytest.raises(CheckpointError, match="training_state.pt: refused to load"):
        load_training_state(path)
    assert not marker.exists(), "the pickle payload ran"


def test_damage_is_found_and_older_checkpoints_are_used(tmp_path):
    for step in (2, 4, 6):
        save_checkpoint(tmp_path, step, {"net": make(step)}, {})
    root = tmp_path / "checkpoints"
    (root / "step_00000006" / "model.safetensors").write_bytes(b"\x00" * 10)
    (root / "step_00000004" / "config.yaml").write_text("lr: 1\n")
    assert "damaged" in verify_checkpoint(root / "step_00000006")
    ckpt, notes = find_checkpoint(tmp_path, "latest")
    assert ckpt.name == "step_00000002" and len(notes) == 2
    assert "step_00000006" in notes[0] and "step_00000004" in notes[1]
    with pytest.raises(CheckpointError, match="damaged"):
        find_checkpoint(tmp_path, "step_6")
    with pytest.raises(CheckpointError, match="no such checkpoint .have: step_00000002"):
        find_checkpoint(tmp_path, "step_00000099")
    with pytest.raises(CheckpointError, match="no 'best' checkpoint"):
        find_checkpoint(tmp_path, "best")
    (root / "step_00000002" / "state.json").write_text("{")
    assert find_checkpoint(tmp_path, "latest")[0] is None


def test_another_architecture_is_one_clear_error(tmp_path):
    path = save_checkpoint(tmp_path, 1, {"net": make()}, {})
    wider = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    with pytest.raises(
        CheckpointError,
        match=r"'net' does not match.*of another shape \(e.g. 0.weight: \(8, 4\) in the file, \(16, 4\) here\)",
    ):
        load_weights(path, {"net": wider})
    with pytest.raises(CheckpointError, match="holds no weights for module 'critic'"):
        load_weights(path, {"critic": make()})
    (path / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_weights(path, {"net": make()})


def test_a_step_directory_in_the_way_is_moved_aside_not_overwritten(tmp_path):
    first = save_checkpoint(tmp_path, 3, {"net": make(0)}, {})
    (first / "model.safetensors").write_bytes(b"damaged")
    save_checkpoint(tmp_path, 3, {"net": make(1)}, {})
    (kept,) = (tmp_path / "checkpoints" / "rejected").iterdir()
    assert (kept / "model.safetensors").read_bytes() == b"damaged"
    assert verify_checkpoint(tmp_path / "checkpoints" / "step_00000003") is None


def test_a_run_copied_without_links_gets_its_latest_link_back(tmp_path):
    """``scp -r`` / ``cp -rL`` turn ``latest`` into a real directory: the next checkpoint
    moves that copy to rejected/ (nothing deleted) and links ``latest`` again."""
    import shutil

    first = save_checkpoint(tmp_path / "a", 1, {"net": make(0)}, {})
    shutil.copytree(tmp_path / "a", tmp_path / "b", symlinks=False)
    latest = tmp_path / "b" / "checkpoints" / "latest"
    assert latest.is_dir() and not latest.is_symlink()
    path = save_checkpoint(tmp_path / "b", 2, {"net": make(1)}, {})
    assert latest.is_symlink() and latest.resolve() == path
    (copy,) = (tmp_path / "b" / "checkpoints" / "rejected").iterdir()
    assert (copy / "model.safetensors").read_bytes() == (first / "model.safetensors").read_bytes()


def test_a_full_disk_at_a_checkpoint_loses_nothing_already_written(small_disk):
    """The second checkpoint does not fit: the error names the disk's problem, the first
    checkpoint stays complete and verified, no temporary directory is left."""
    from medgen.train.engine import EngineSettings, ShardedBatches, TrainingSetup, fit

    torch.manual_seed(0)
    net = torch.nn.Linear(300, 300)  # ~1.4 MB a checkpoint (weights, EMA, Adam moments)
    x = torch.randn(16, 300)

    def loss(model, batch, step):
        return (model(batch[0]) ** 2).mean(), {}

    s = EngineSettings(steps=4, batch_size=4, checkpoint_every=1, keep_last=0, log_every=1,
                       tensorboard=False)  # fmt: skip
    with pytest.raises(
        CheckpointError, match=r"step_00000002: cannot write the checkpoint .*MiB free"
    ):
        fit(TrainingSetup.single(net, loss), ShardedBatches((x,), 4), s, small_disk, quiet=True)
    root = small_disk / "checkpoints"
    assert [p.name for p in root.iterdir() if p.name.startswith(".")] == []
    ckpt, notes = find_checkpoint(small_disk, "latest")
    assert ckpt.name == "step_00000001" and notes == [] and verify_checkpoint(ckpt) is None
