import os
import pickle

import pytest
import torch

from medgen.train import EMA, CheckpointError, load_checkpoint, save_checkpoint


def make():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    return model, opt, EMA(model, 0.99)


def test_roundtrip(tmp_path):
    model, opt, ema = make()
    ema.update(model)
    path = save_checkpoint(
        tmp_path, 12, model, {"lr": 0.01}, ema=ema, optimizer=opt, metrics={"ssim": 0.5}
    )
    assert path.name == "step_00000012"
    assert (tmp_path / "checkpoints" / "latest").resolve() == path
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]
    model2, opt2, ema2 = make()
    with torch.no_grad():
        for p in model2.parameters():
            p.zero_()
    state = load_checkpoint(tmp_path, model2, ema=ema2, optimizer=opt2)
    assert state["step"] == 12 and state["metrics"] == {"ssim": 0.5}
    for a, b in zip(model.parameters(), model2.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert ema2.num_updates == 1
    assert opt2.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]


class Payload:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = ""


def test_malicious_pickle_is_refused_without_running(tmp_path):
    global MARKER
    model, opt, ema = make()
    path = save_checkpoint(tmp_path, 1, model, {}, ema=ema, optimizer=opt)
    marker = tmp_path / "pwned"
    MARKER = str(marker)
    with open(path / "training_state.pt", "wb") as fh:
        pickle.dump({"optimizer": Payload()}, fh, protocol=2)
    with pytest.raises(CheckpointError, match="training_state.pt: refused to load"):
        load_checkpoint(path, optimizer=opt)
    assert not marker.exists(), "the pickle payload ran"


def test_missing_and_corrupt(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint here"):
        load_checkpoint(tmp_path)
    model, _, _ = make()
    path = save_checkpoint(tmp_path, 2, model, {})
    (path / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_checkpoint(path, model)
    (path / "state.json").write_text("{")
    with pytest.raises(CheckpointError, match="state.json"):
        load_checkpoint(path, model)
