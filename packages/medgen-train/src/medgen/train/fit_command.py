"""``medgen-train fit CONFIG [section.key=value ...]``: a diffusion run through the engine.

The config schema is :class:`FitConfig` (sections ``run``, ``data``, ``model``, ``diffusion``,
``training``); see ``configs/jsddpm_quickstart.yaml``. The data are the quickstart's MNI152
slices (z-binned, cached). The run directory receives the resolved ``config.yaml``,
``metrics.csv``, ``eval.csv``, TensorBoard events and checkpoints, and a second ``fit`` into
the same directory resumes from ``checkpoints/latest``. Under ``torchrun`` every rank trains
on its own shard of each batch and rank 0 writes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from medgen.models import DDPM, TokenConditionedUNet, schedules
from medgen.train import distributed
from medgen.train.batches import ShardedBatches
from medgen.train.config import load_config, save_yaml, to_dict
from medgen.train.engine import FitResult, fit
from medgen.train.errors import ConfigError
from medgen.train.joint_diffusion import JointDiffusionTask
from medgen.train.quickstart import CHANNELS, QuickstartConfig, load_slices, pick_device
from medgen.train.settings import EngineSettings

DATASETS = ("mni152",)


@dataclass(frozen=True)
class RunSection:
    dir: str = "runs/fit"  # run directory (``--out`` overrides)
    device: str = "auto"  # auto | cpu | cuda (under torchrun: cuda:LOCAL_RANK)
    threads: int = 0  # torch threads per process; 0 keeps torch's default


@dataclass(frozen=True)
class DataSection:
    dataset: str = "mni152"  # the quickstart's MNI152 T1 + white-matter slices
    size: int = 32
    z_range: tuple[int, int] = (40, 139)
    n_bins: int = 10
    percentiles: tuple[float, float] = (0.5, 99.5)
    cache_dir: str = ""  # "": ~/.cache/medgen/quickstart (or $MEDGEN_CACHE_DIR)


@dataclass(frozen=True)
class ModelSection:
    channels: tuple[int, ...] = (32, 64, 64)
    attention_levels: tuple[bool, ...] = (False, False, True)
    num_res_blocks: int = 1


@dataclass(frozen=True)
class DiffusionSection:
    schedule: str = "cosine"
    num_train_timesteps: int = 1000
    prediction: str = "epsilon"
    min_snr_gamma: float | None = 5.0
    eval_samples: int = 64  # slices scored for x0-PSNR per timestep bucket at each eval


@dataclass(frozen=True)
class FitConfig:
    run: RunSection = field(default_factory=RunSection)
    data: DataSection = field(default_factory=DataSection)
    model: ModelSection = field(default_factory=ModelSection)
    diffusion: DiffusionSection = field(default_factory=DiffusionSection)
    training: EngineSettings = field(default_factory=EngineSettings)


def read_fit_config(path: str | Path, overrides: list[str] = ()) -> FitConfig:
    cfg = load_config(FitConfig, path, overrides)
    if cfg.data.dataset not in DATASETS:
        raise ConfigError(f"data.dataset: expected one of {DATASETS}, got {cfg.data.dataset!r}")
    cfg.training.validate()
    return cfg


def _slices(cfg: FitConfig, ctx: distributed.DistContext):
    q = QuickstartConfig(
        size=cfg.data.size,
        z_range=cfg.data.z_range,
        n_bins=cfg.data.n_bins,
        percentiles=cfg.data.percentiles,
        cache_dir=cfg.data.cache_dir,
    )
    if ctx.enabled and not ctx.is_main:
        dist.barrier()  # rank 0 builds the cache first
    slices, _, _ = load_slices(q)
    if ctx.enabled and ctx.is_main:
        dist.barrier()
    return slices


def run_fit(cfg: FitConfig, out: str | Path | None = None, quiet: bool = False) -> FitResult:
    """Train as configured; raises ``Preempted`` (requeue) or ``NonFiniteError``."""
    run_dir = Path(out or cfg.run.dir)
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, dir=str(run_dir)))
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    device = pick_device(cfg.run.device)
    ctx = distributed.setup(device)
    try:
        if ctx.enabled and device.type == "cuda":
            device = torch.device("cuda", ctx.local_rank)
        s = cfg.training
        torch.manual_seed(s.seed)
        if ctx.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            save_yaml(cfg, run_dir / "config.yaml")
        slices = _slices(cfg, ctx)
        images = torch.from_numpy(slices.images)
        masks = torch.from_numpy(slices.masks).float() * 2 - 1
        data = torch.cat([images, masks], dim=1).to(device)
        tokens = torch.from_numpy(slices.token).to(device)
        num_tokens = cfg.data.n_bins * (int(slices.class_id.max()) + 1)
        m = cfg.model
        try:
            model = TokenConditionedUNet(
                2, 2, 2, num_tokens, m.channels, m.attention_levels, m.num_res_blocks
            ).to(device)
        except ValueError as exc:  # MONAI's checks of channels / groups / heads
            raise ConfigError(f"model: {exc} (channels {list(m.channels)})") from None
        d = cfg.diffusion
        strategy = DDPM(schedules.make(d.schedule, d.num_train_timesteps), d.prediction)
        n_eval = min(d.eval_samples, len(slices))
        eval_idx = torch.linspace(0, len(slices) - 1, n_eval).long().to(device)
        noise = torch.Generator().manual_seed(s.seed + 1 + 1000 * ctx.rank)  # own noise per rank
        task = JointDiffusionTask(
            strategy, noise, d.min_snr_gamma, CHANNELS, (data[eval_idx], tokens[eval_idx]), s.seed
        )
        batches = ShardedBatches((data, tokens), s.batch_size, s.seed, ctx.rank, ctx.world_size)
        return fit(task, model, batches, s, run_dir, config=to_dict(cfg), dist_ctx=ctx, quiet=quiet)
    finally:
        distributed.teardown()
