"""The config of ``medgen-train downstream``: which data train a segmentation network, which
held-out real split scores it, the network and its training, validated like a run config.

A config is a YAML file or the name of a bundled one (``configs/downstream/<name>.yaml``);
``key=value`` overrides change any key (``mode=real,mixed``, ``steps=50``). Every value is
checked, and the cross-key rules (a mode that needs data nobody named, widths a network
cannot take) raise one line naming the key, before any data are read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medgen.train.config.bundled import find_bundled
from medgen.train.config.fit import RunSection
from medgen.train.config.schema import apply_overrides, from_mapping, setting, validate
from medgen.train.config.yaml_io import read_yaml
from medgen.train.errors import ConfigError

BUNDLED = Path(__file__).resolve().parents[1] / "configs" / "downstream"
MODES = ("real", "synthetic", "mixed")
NETWORKS = ("segresnet", "unet")
SEGRESNET_GROUPS = 8  # MONAI SegResNet's GroupNorm groups: every width a multiple of it


@dataclass(frozen=True)
class DownstreamConfig:
    """A downstream-utility experiment: segment on real / synthetic / both, score on real."""

    real: str = ""  # CACHE[:split] of real training data (split default train)
    synthetic: str = ""  # a `medgen-train sample` directory with image + mask channels
    mode: tuple[str, ...] = setting(("real",), choices=MODES)  # one run per mode, same seed
    test: str = ""  # CACHE[:split] of held-out real subjects (split default test)
    network: str = setting("segresnet", choices=NETWORKS)  # MONAI SegResNet | UNet
    widths: tuple[int, ...] = setting((8, 16, 32), min=1)  # channels per resolution level
    num_res_blocks: int = setting(1, min=0)  # per level (UNet: residual units, 0 = plain)
    steps: int = setting(200, min=1)  # optimizer steps per mode
    batch_size: int = setting(16, min=1)
    lr: float = setting(1e-3, gt=0)  # AdamW, constant
    weight_decay: float = setting(1e-5, min=0)
    seed: int = setting(0, min=0)  # weights, batch order and bootstrap
    bootstrap: int = setting(1000, min=2)  # replicates of the Dice intervals
    resample: str = setting("items", choices=("items", "subjects"))  # the bootstrap's unit
    threshold: float = setting(0.5, gt=0, lt=1)  # sigmoid probability -> foreground
    out: str = "runs/downstream"  # output directory (--out wins)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = setting(0, min=0)  # torch threads; 0 keeps torch's default

    def validate(self) -> None:
        """Rules across keys."""
        if not self.mode:
            raise ConfigError(f"mode: expected one or more of {', '.join(MODES)}, got none")
        if len(set(self.mode)) != len(self.mode):
            raise ConfigError(f"mode: {list(self.mode)} names a mode twice")
        if not self.test:
            raise ConfigError("test: name the held-out real data, CACHE[:split] (split: test)")
        if {"real", "mixed"} & set(self.mode) and not self.real:
            raise ConfigError(
                f"real: mode {[m for m in self.mode if m != 'synthetic']} trains on real data; "
                "name it, CACHE[:split] (split: train)"
            )
        if {"synthetic", "mixed"} & set(self.mode) and not self.synthetic:
            raise ConfigError(
                f"synthetic: mode {[m for m in self.mode if m != 'real']} trains on synthetic "
                "data; name a samples directory (medgen-train sample)"
            )
        if len(self.widths) < 2:
            raise ConfigError(f"widths: expected at least 2 levels, got {list(self.widths)}")
        if self.network == "segresnet":
            doubling = all(b == 2 * a for a, b in zip(self.widths, self.widths[1:], strict=False))
            if not doubling or self.widths[0] % SEGRESNET_GROUPS:
                raise ConfigError(
                    f"widths: SegResNet doubles its width at every level from a multiple of "
                    f"{SEGRESNET_GROUPS} (e.g. 8,16,32), got {list(self.widths)}"
                )
        RunSection(device=self.device).validate()

    @property
    def levels(self) -> int:
        """Resolution levels: every spatial size must divide by ``2 ** (levels - 1)``."""
        return len(self.widths)


def resolve(config: str | Path) -> Path:
    """A config path, or the bundled downstream config of that name."""
    return find_bundled(config, BUNDLED, "downstream config")


def load_downstream_config(config: str | Path, overrides: list[str] = ()) -> DownstreamConfig:
    """Read (a mode given as one word is a list of one), override and validate a config."""
    path = resolve(config)
    data = read_yaml(path)
    if isinstance(data.get("mode"), str):
        data = {**data, "mode": [data["mode"]]}
    try:
        cfg = from_mapping(DownstreamConfig, data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return validate(apply_overrides(cfg, list(overrides)))
