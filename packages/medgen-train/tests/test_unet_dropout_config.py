"""``model.dropout``: the UNet's residual dropout from the config (built into the network,
bad values one line naming the key, other network kinds refusing it) and runs written before
the key existed resuming unchanged."""

import pytest
import yaml

from medgen.models.networks.residual_dropout import dropout_hooks
from medgen.train import checkpoint
from medgen.train.commands.fit import check_resume
from medgen.train.config.fit import load_fit_config
from medgen.train.config.schema import to_dict
from medgen.train.errors import ConfigError
from medgen.train.tasks.networks import NetworkSpec, UNetConfig

BASE = ["data.cache=somewhere"]


def test_the_config_builds_the_dropout_into_every_residual_block():
    spec = NetworkSpec(spatial_dims=2, in_channels=1, out_channels=1, shape=(8, 8))
    cfg = UNetConfig(channels=(16, 32), attention_levels=(False, False), dropout=0.1)
    net = cfg.build(spec)
    assert net.dropout == 0.1 and net.dropout_blocks == 2 + 2 + 4 == len(dropout_hooks(net))
    assert dropout_hooks(UNetConfig(channels=(16, 32), attention_levels=(False, False))
                         .build(spec)) == []  # fmt: skip


def test_sbldm_sets_dropout_and_the_default_is_off():
    assert load_fit_config("sbldm", BASE).model.dropout == 0.1
    assert load_fit_config("quickstart").model.dropout == 0.0


@pytest.mark.parametrize("value", ["1", "-0.1", "1.5", "x"])
def test_an_invalid_dropout_is_one_line_naming_the_key(value):
    with pytest.raises(ConfigError) as err:
        load_fit_config("sbldm", [*BASE, f"model.dropout={value}"])
    assert str(err.value).startswith("model.dropout:") and "\n" not in str(err.value)


@pytest.mark.parametrize("kind", ["dit", "hdit", "uvit"])
def test_other_network_kinds_refuse_dropout_in_one_line(kind):
    with pytest.raises(ConfigError) as err:
        load_fit_config("quickstart", [f"model.kind={kind}", "model.dropout=0.1"])
    assert "'model.dropout'" in str(err.value) and "\n" not in str(err.value)


@pytest.fixture
def written_before_dropout(tmp_path, monkeypatch):
    """A run whose checkpoint config was written before model.dropout existed."""
    cfg = load_fit_config("sbldm", [*BASE, "model.dropout=0"])
    old = to_dict(cfg)
    del old["model"]["dropout"]
    ckpt = tmp_path / "run" / "checkpoints" / "step_00000010"
    ckpt.mkdir(parents=True)
    (ckpt / "config.yaml").write_text(yaml.safe_dump(old))
    monkeypatch.setattr(checkpoint, "find_checkpoint", lambda run_dir, which: (ckpt, []))
    return tmp_path / "run", ckpt


def test_a_run_written_before_dropout_resumes_with_dropout_0(written_before_dropout):
    run, ckpt = written_before_dropout
    cfg = load_fit_config("sbldm", [*BASE, "model.dropout=0"])
    assert check_resume(run, cfg, print) == ckpt


def test_a_run_written_before_dropout_refuses_another_dropout(written_before_dropout):
    run, _ = written_before_dropout
    with pytest.raises(ConfigError, match=r"model\.dropout: 0\.0 -> 0\.1"):
        check_resume(run, load_fit_config("sbldm", BASE), print)
