"""EMA of named modules: the warm-up decay and the update rule against closed forms."""

import pytest
import torch

from medgen.train.engine import EMA


def test_ema_warmup_decay_and_update_math():
    model = torch.nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA({"m": model}, decay=0.999)
    assert ema.current_decay() == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update({"m": model})
    torch.testing.assert_close(ema.modules["m"].weight, torch.full((1, 3), 0.9))
    assert ema.current_decay() == pytest.approx(2 / 11)
    ema.num_updates = 10_000
    assert ema.current_decay() == 0.999


def test_ema_without_warmup_keeps_initial_weights():
    """DESIGN.md section 8: after ~1,900 updates at 0.999 without warm-up, ~15% of the
    initial weights remain; with warm-up almost none."""

    def remaining(warmup):
        model = torch.nn.Linear(1, 1, bias=False)
        with torch.no_grad():
            model.weight.fill_(1.0)
        ema = EMA({"m": model}, 0.999, warmup=warmup)
        with torch.no_grad():
            model.weight.fill_(0.0)
        for _ in range(1900):
            ema.update({"m": model})
        return float(ema.modules["m"].weight)

    assert remaining(False) == pytest.approx(0.999**1900, rel=1e-3)
    assert 0.14 < remaining(False) < 0.16
    assert remaining(True) < 0.01


def test_ema_copies_buffers_and_never_shares_storage():
    bn = torch.nn.BatchNorm1d(2)
    ema = EMA({"bn": bn}, 0.5, warmup=False)
    bn.train()
    bn(torch.randn(8, 2) * 3 + 1)
    ema.update({"bn": bn})
    assert torch.equal(ema.modules["bn"].running_mean, bn.running_mean)
    assert ema.modules["bn"].weight.data_ptr() != bn.weight.data_ptr()
    assert not any(p.requires_grad for p in ema.modules["bn"].parameters())
