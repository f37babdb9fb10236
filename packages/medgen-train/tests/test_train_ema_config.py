import dataclasses

import pytest
import torch

from medgen.train import EMA, ConfigError
from medgen.train.config import apply_overrides


def test_ema_warmup_decay_and_update_math():
    model = torch.nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, decay=0.999)
    assert ema.current_decay() == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)
    torch.testing.assert_close(ema.model.weight, torch.full((1, 3), 0.9))
    ema.num_updates = 10_000
    assert ema.current_decay() == 0.999


def test_ema_without_warmup_keeps_initial_weights():
    """DESIGN.md section 8: after ~1,900 updates at 0.999 without warm-up, ~15% of the
    initial weights remain; with warm-up almost none."""

    def remaining(warmup):
        model = torch.nn.Linear(1, 1, bias=False)
        with torch.no_grad():
            model.weight.fill_(1.0)
        ema = EMA(model, 0.999, warmup=warmup)
        with torch.no_grad():
            model.weight.fill_(0.0)
        for _ in range(1900):
            ema.update(model)
        return float(ema.model.weight)

    assert remaining(False) == pytest.approx(0.999**1900, rel=1e-3)
    assert 0.14 < remaining(False) < 0.16
    assert remaining(True) < 0.01


@dataclasses.dataclass(frozen=True)
class Cfg:
    lr: float = 1e-3
    steps: int = 10
    channels: tuple[int, ...] = (32, 64)
    flags: tuple[bool, ...] = (False, True)
    gamma: float | None = 5.0
    name: str = "x"


def test_overrides_are_typed():
    cfg = apply_overrides(
        Cfg(),
        ["lr=2e-4", "steps=7", "channels=16,32,64", "flags=true,false", "gamma=none", "name=abc"],
    )
    assert cfg == Cfg(2e-4, 7, (16, 32, 64), (True, False), None, "abc")


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("lrr=1", "unknown config key 'lrr'"),
        ("steps=1.5", "steps: expected int"),
        ("flags=maybe", "flags: expected a boolean"),
        ("steps", "key=value"),
    ],
)
def test_override_errors_name_the_key(item, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(Cfg(), [item])
