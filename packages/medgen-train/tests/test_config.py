"""Typed configs: bundled files load and round-trip; every value of every section is checked,
each error naming the dotted key, the value and what is allowed."""

import dataclasses

import pytest
import yaml

from medgen.train.config.fit import FitConfig, bundled_names, load_fit_config
from medgen.train.config.schema import (
    apply_overrides,
    differences,
    from_mapping,
    to_dict,
    to_yaml,
    validate,
)
from medgen.train.config.yaml_io import read_yaml
from medgen.train.errors import ConfigError
from medgen.train.tasks.diffusion.config import DDPMConfig, FlowConfig


@pytest.mark.parametrize(
    "name", ["quickstart", "jsddpm", "volumes", "lesions_demo", "sbldm", "sbldm_vae"]
)
def test_bundled_configs_load_and_round_trip(tmp_path, name):
    overrides = [] if name == "quickstart" else ["data.cache=somewhere"]
    cfg = load_fit_config(name, overrides)
    path = tmp_path / "resolved.yaml"
    path.write_text(to_yaml(cfg))
    assert validate(from_mapping(FitConfig, read_yaml(path))) == cfg
    assert name in bundled_names()


def test_dotted_overrides_are_typed_and_kinds_switch_first():
    cfg = load_fit_config(
        "quickstart",
        [
            "training.lr=1e-4",
            "training.amp=bf16",
            "training.betas=0.8,0.99",
            "model.channels=16,32",
            "model.attention_levels=false,true",
            "task.strategy.shift=3",  # given before the kind that has it
            "task.strategy.kind=rflow",
            "data.recipe.size=16",
            "sample.guidance=none",
        ],
    )
    assert cfg.training.lr == 1e-4 and cfg.training.betas == (0.8, 0.99)
    assert cfg.model.channels == (16, 32) and cfg.data.recipe.size == 16
    assert isinstance(cfg.task.strategy, FlowConfig) and cfg.task.strategy.shift == 3.0
    back = load_fit_config("quickstart", ["task.strategy.kind=ddpm",
                                          "task.strategy.schedule.kind=gamma_rebalanced",
                                          "task.strategy.schedule.gamma=0.5"])  # fmt: skip
    assert isinstance(back.task.strategy, DDPMConfig)
    assert back.task.strategy.schedule.gamma == 0.5 and back.task.strategy.schedule.kind == (
        "gamma_rebalanced"
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("training.lrr=1", "unknown config key 'training.lrr'; known keys under 'training'"),
        ("trainin.lr=1", "unknown config key 'trainin'"),
        ("training.lr=fast", "training.lr: expected float, got 'fast'"),
        ("training.steps=1.5", "training.steps: expected int"),
        ("training.compile=maybe", "training.compile: expected a boolean"),
        ("training.lr.x=1", "training.lr is not a section"),
        ("training=1", "training: is a section"),
        ("training.amp=fp8", "training.amp: expected one of none, bf16, fp16, got 'fp8'"),
        ("training.lr=-1", "training.lr: expected a number > 0, got -1.0"),
        ("training.lr=inf", "training.lr: expected a finite number, got inf"),
        ("training.keep_last=-2", "training.keep_last: expected a number >= 0"),
        ("training.checkpoint_every=-1", "training.checkpoint_every: expected a number >= 0"),
        ("training.ema_decay=1", "training.ema_decay: expected a number >= 0 and < 1, got 1.0"),
        ("training.warmup_steps=2000", "training.warmup_steps: 2000 leaves no cosine decay"),
        ("model.kind=transformer", "model.kind: expected one of dit, hdit, unet, uvit, got"),
        ("model.channels=24,48,48", "model.channels: [24] not divisible by norm_num_groups=16"),
        ("model.attention_levels=true", "model.attention_levels: 1 values for 3 levels"),
        ("task.strategy.prediction=noise", "task.strategy.prediction: expected one of epsilon"),
        ("task.strategy.schedule.kind=quadratic", "task.strategy.schedule.kind: expected one of"),
        (
            "task.strategy.schedule.num_train_timesteps=1",
            "num_train_timesteps: expected a number >= 2",
        ),
        ("task.space.kind=wavelet", "task.clip_x0: clipping x0 applies to pixel space"),
        ("task.generate=", "task.generate: name at least one channel"),
        ("sample.sampler=euler", "sample.sampler: 'euler' does not sample a 'ddpm' model"),
        ("sample.steps=1001", "sample.steps: 1001 sampling steps exceed the schedule's 1000"),
        ("task.strategy.schedule.max_beta=1", "task.strategy.schedule: a zero-terminal-SNR"),
        ("task.strategy.min_snr_gamma=nan", "task.strategy.min_snr_gamma: expected a finite"),
        ("data.recipe.foreground_threshold=inf", "foreground_threshold: expected a finite"),
        ("sample.guidance=2", "sample.guidance: classifier-free guidance needs a null token"),
        ("data.recipe=mni999", "data.recipe: 'mni999' is neither a bundled recipe"),
        ("data.recipe.n_bins=0", "data.recipe.n_bins"),
        ("data.modality_as=stack", "data.modality_as: expected one of channels, mode"),
        ("run.device=tpu", "run.device: expected auto, cpu, cuda or cuda:N"),
        ("training", "must look like key=value"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError) as info:  # the quickstart, as a DDPM (its default is rflow)
        load_fit_config("quickstart", ["task.strategy.kind=ddpm", override])
    assert message in str(info.value)


def test_cuda_that_is_not_there_is_a_config_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(ConfigError, match="run.device: 'cuda' requested, but no CUDA device"):
        load_fit_config("quickstart", ["run.device=cuda"])


def test_yaml_errors_name_the_file_and_key(tmp_path):
    dup = tmp_path / "dup.yaml"
    dup.write_text("training:\n  lr: 1.0e-3\n  lr: 1.0\n")
    with pytest.raises(ConfigError, match=r"dup.yaml: duplicate key 'lr' \(line 3\)"):
        load_fit_config(dup)
    typed = tmp_path / "typed.yaml"
    typed.write_text(yaml.safe_dump({"data": {"recipe": "mni152"}, "training": {"steps": "x"}}))
    with pytest.raises(ConfigError, match=r"typed.yaml: training.steps: expected int, got 'x'"):
        load_fit_config(typed)
    with pytest.raises(ConfigError, match="nope: no such config file, nor a bundled config"):
        load_fit_config("nope")
    (tmp_path / "bad.yaml").write_text("training: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_fit_config(tmp_path / "bad.yaml")


def test_a_recipe_gets_a_content_addressed_cache_directory(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDGEN_CACHE_DIR", str(tmp_path))
    a = load_fit_config("quickstart")
    b = load_fit_config("quickstart", ["data.recipe.size=16"])
    assert a.data.recipe.out.startswith(str(tmp_path / "recipes"))
    assert a.data.recipe.out != b.data.recipe.out
    assert load_fit_config("quickstart").data.recipe.out == a.data.recipe.out


@dataclasses.dataclass(frozen=True)
class Cfg:
    lr: float = 1e-3
    channels: tuple[int, ...] = (32, 64)
    flags: tuple[bool, ...] = (False, True)
    gamma: float | None = 5.0


def test_overrides_of_plain_schemas_and_differences():
    cfg = apply_overrides(Cfg(), ["lr=2e-4", "channels=16,32,64", "flags=true,false", "gamma=none"])
    assert cfg == Cfg(2e-4, (16, 32, 64), (True, False), None)
    diff = differences({"a": {"b": 1, "c": [1]}}, {"a": {"b": 2, "c": [1], "d": 0}})
    assert diff == [("a.b", 1, 2), ("a.d", None, 0)]
    assert to_dict(cfg)["channels"] == [16, 32, 64]


def test_conditioning_dropout_needs_tokens():
    with pytest.raises(
        ConfigError, match="task.cond_dropout: 0.1 drops tokens, but tokens is false"
    ):
        load_fit_config("quickstart", ["task.tokens=false", "task.cond_dropout=0.1"])


def test_config_list_names_every_bundled_file(capsys):
    from pathlib import Path

    from medgen.train.cli import main

    assert main(["config", "--list"]) == 0
    out = capsys.readouterr().out
    root = Path(load_fit_config.__code__.co_filename).resolve().parents[1] / "configs"
    for folder, label in ((root, "run configs"), (root / "recipes", "cache recipes"),
                          (root / "downstream", "downstream configs"), (root / "sweeps", "sweeps")):  # fmt: skip
        line = next(row for row in out.splitlines() if row.startswith(label + ":"))
        assert sorted(line.split(":", 1)[1].replace(",", " ").split()) == sorted(
            p.stem for p in folder.glob("*.yaml")
        )
