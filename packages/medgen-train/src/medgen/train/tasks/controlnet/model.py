"""A ControlNet run: the base diffusion run's model, rebuilt from its run directory and frozen,
with a :class:`medgen.models.networks.controlnet.ControlBranch` as the only trained module.

:class:`ControlledModel` is a :class:`DiffusionModel` (same strategy, space, channels, loss and
evaluation as the base) whose network is the base's ``ConditionedUNet`` steered by the branch;
it adds the control maps to the conditioning, MAISI's ROI voxel weights and MAISI-v2's region
contrastive term. Checkpoints hold the branch only; the base is loaded again from its run
(EMA weights when it has them), and its weights' sha256 is kept in the task state so a resume
over a changed base is refused.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from medgen.models import ConditionedUNet, masked_mean_per_sample
from medgen.models.networks.controlnet import ControlBranch, ControlledUNet, bits_for
from medgen.train.errors import CheckpointError, ConfigError
from medgen.train.tasks.controlnet.config import ControlNetConfig
from medgen.train.tasks.diffusion.task import NETWORK, DiffusionModel, DiffusionTask

BASE, BRANCH = "base", "controlnet"
MATCHING = ("kind", "spatial_dims", "channels", "shape", "n_bins", "n_classes", "n_modes")


@dataclass(frozen=True)
class BaseRun:
    """The diffusion run a ControlNet steers: its checkpoint, configs and data."""

    run_dir: str
    checkpoint: Path
    config: object  # its FitConfig
    description: object  # its DataDescription
    weights: str  # ema.safetensors or model.safetensors
    sha256: str

    @classmethod
    def open(cls, cfg: ControlNetConfig) -> BaseRun:
        """``task.base``'s checkpoint ``task.checkpoint``, verified; a ConfigError if it is
        not a diffusion run on MONAI's UNet."""
        from medgen.train.checkpoint import read_state
        from medgen.train.checkpoint.store import EMA_FILE, MODEL_FILE
        from medgen.train.runs import TrainedRun

        try:
            run = TrainedRun.open(cfg.base, cfg.checkpoint)
        except CheckpointError as exc:
            raise ConfigError(f"task.base: {exc}") from None
        task, model = run.config.task, run.config.model
        if task.kind != "diffusion":
            raise ConfigError(
                f"task.base: {cfg.base} is a {task.kind!r} run; a ControlNet steers a "
                "'diffusion' run"
            )
        if task.space.kind == "latent":  # its scale factor and autoencoder are not carried over
            raise ConfigError(
                f"task.base: {cfg.base} diffuses in a latent space; a ControlNet over a latent "
                "run is not supported yet"
            )
        if model.kind != "unet":
            raise ConfigError(
                f"task.base: {cfg.base} trains a {model.kind!r} network; ControlNet is built "
                "for model.kind unet"
            )
        weights = EMA_FILE if (run.checkpoint / EMA_FILE).is_file() else MODEL_FILE
        sha = read_state(run.checkpoint)["files"][weights]
        return cls(str(cfg.base), run.checkpoint, run.config, run.description, weights, sha)

    def check_model(self, model_cfg) -> None:
        """This run's ``model:`` section: its defaults, or exactly the base's."""
        from medgen.train.tasks.networks import NETWORKS

        base = self.config.model
        if model_cfg == base or model_cfg == NETWORKS[model_cfg.kind]():
            return
        a, b = _plain(dataclasses.asdict(model_cfg)), _plain(dataclasses.asdict(base))
        diff = [f"model.{k}: {a[k]} here, {b.get(k)} in the base" for k in a if a[k] != b.get(k)]
        raise ConfigError(
            f"model: a ControlNet copies its base's network; {'; '.join(diff)} (leave model: "
            "out or give the base's values)"
        )

    def check_data(self, description) -> None:
        """The data must look like the base's training data (shape, channels, tokens)."""
        diff = [
            f"{k} {getattr(description, k)} here, {getattr(self.description, k)} in the base"
            for k in MATCHING
            if getattr(description, k) != getattr(self.description, k)
        ]
        if diff:
            raise ConfigError(
                f"data: the ControlNet's data differ from its base's ({'; '.join(diff)})"
            )

    def provenance(self) -> dict:
        """Which base weights were used (recorded with samples and in the task state)."""
        return {
            "run": self.run_dir,
            "checkpoint": self.checkpoint.name,
            "weights": self.weights,
            "sha256": self.sha256,
        }


def _plain(values: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def _embedding_widths(width: int, data_shape, grid_shape) -> tuple[int, ...]:
    factor = int(data_shape[-1]) // int(grid_shape[-1])
    halvings = round(math.log2(factor)) if factor > 1 else 0
    return tuple(width * 2**i for i in range(halvings + 1))


def _pool_max(weights: torch.Tensor, factor: int) -> torch.Tensor:
    if factor == 1:
        return weights
    pool = F.max_pool3d if weights.ndim == 5 else F.max_pool2d
    return pool(weights, factor)


@dataclass
class ControlledModel(DiffusionModel):
    """A :class:`DiffusionModel` whose network is a frozen base with a trained ControlNet."""

    control_cfg: ControlNetConfig | None = None
    base_run: BaseRun | None = None

    @classmethod
    def from_base(cls, cfg: ControlNetConfig, model_cfg, description, device) -> ControlledModel:
        """The base rebuilt from its run directory and frozen, plus a new branch."""
        from medgen.train.checkpoint import load_weights

        base = BaseRun.open(cfg)
        base.check_model(model_cfg)
        base.check_data(description)
        core = DiffusionModel.build(base.config.task, base.config.model, description, device)
        net = core.network
        if not isinstance(net, ConditionedUNet):
            raise ConfigError(f"task.base: {cfg.base} did not build a ConditionedUNet")
        try:
            load_weights(base.checkpoint, {NETWORK: net}, base.weights)
        except CheckpointError as exc:
            raise ConfigError(f"task.base: {exc}") from None
        net.requires_grad_(False).eval()
        layout = core.layout.with_control(
            cfg.control, description.has_mask, bits_for(description.labels)
        )
        widths = _embedding_widths(cfg.embedding_width, description.shape, core.latent_shape[1:])
        branch = ControlBranch(
            net,
            layout.control_channels(),
            embedding_channels=widths,
            scale=cfg.scale,
            copy_base=cfg.copy_base,
        ).to(device)
        fields = {f.name: getattr(core, f.name) for f in dataclasses.fields(DiffusionModel)}
        # The branch is trained on the plain diffusion loss: the base's learned loss weights
        # (task.uncertainty_weighting) are not part of a ControlNet run.
        fields.update(layout=layout, network=ControlledUNet(net, branch), loss_weighting=None)
        return cls(**fields, control_cfg=cfg, base_run=base)

    def checkpointed(self) -> dict[str, nn.Module]:
        """The branch: the only trained module."""
        return {BRANCH: self.network.branch}

    def modules(self) -> dict[str, nn.Module]:
        """The frozen base and the branch."""
        return {BASE: self.network.base, BRANCH: self.network.branch}

    def trained_network(self, nets):
        """The pair, calling the branch through the engine's (DDP) wrapper."""
        pair = self.network

        def call(x, t, cond):
            return pair.forward_with(nets[BRANCH], x, t, cond)

        return call

    def evaluated_network(self, modules, ema) -> nn.Module:
        """The base steered by the EMA branch (the raw branch without EMA)."""
        return ControlledUNet(modules[BASE], ema.get(BRANCH, modules[BRANCH]))

    def _roi(self, batch: dict, like: torch.Tensor) -> torch.Tensor:
        """(B, 1, *grid) float: 1 where the label is a ROI label, pooled to the grid."""
        labels = torch.tensor(self.control_cfg.roi_labels, device=batch["mask"].device)
        roi = torch.isin(batch["mask"].long(), labels).float()
        return _pool_max(roi, batch["mask"].shape[-1] // like.shape[-1])

    def voxel_weights(self, batch: dict, valid, x0: torch.Tensor) -> torch.Tensor | None:
        """MAISI's ROI weighting: ROI voxels ``roi_weight`` times the rest (within ``valid``)."""
        c = self.control_cfg
        if c is None or c.roi_weight == 1.0:
            return valid
        roi = self._roi(batch, x0)
        weights = 1.0 + (c.roi_weight - 1.0) * roi
        return weights if valid is None else weights * valid.float()

    def extra_losses(self, net, batch: dict, x_t, out, t, cond) -> dict[str, torch.Tensor]:
        """MAISI-v2's region contrastive term (``contrastive_weight`` > 0): the prediction
        with the ROI labels replaced by background in the control map must differ from
        ``out`` by at least ``contrastive_margin`` (mean square) inside the ROI and equal it
        outside; samples without ROI voxels add only the outside part."""
        c = self.control_cfg
        if c is None or not c.contrastive_weight:
            return {}
        roi = self._roi(batch, out)
        labels = torch.tensor(c.roi_labels, device=batch["mask"].device)
        erased = batch["mask"].masked_fill(torch.isin(batch["mask"].long(), labels), 0)
        control = self.layout.control_tensor({**batch, "mask": erased})
        other = net(x_t, self.strategy.model_time(t).to(x_t.device), dataclasses.replace(
            cond, control=control))  # fmt: skip
        diff = (out.float() - other.float()).square()
        outside = masked_mean_per_sample(diff, 1.0 - roi)
        inside = masked_mean_per_sample(diff, roi)
        has_roi = (roi.flatten(1).sum(1) > 0).float()
        term = outside + has_roi * F.relu(c.contrastive_margin - inside)
        return {"contrastive": c.contrastive_weight * term.mean()}


class ControlNetTask(DiffusionTask):
    """The diffusion objective over the controlled model; its state records the base."""

    def state_dict(self) -> dict:
        """The noise generator and the base's weights' identity."""
        return {**super().state_dict(), "base": self.model.base_run.provenance()}

    def load_state_dict(self, state: dict) -> None:
        """Restore; a resume over other base weights is refused."""
        stored, now = state.get("base"), self.model.base_run.provenance()
        if stored is not None and stored["sha256"] != now["sha256"]:
            raise ConfigError(
                f"task.base: this run was trained over {stored['run']} "
                f"{stored['checkpoint']} (sha256 {stored['sha256'][:12]}), but "
                f"{now['run']} {now['checkpoint']} now holds other weights "
                f"({now['sha256'][:12]}); train a new ControlNet run (--fresh) for it"
            )
        super().load_state_dict(state)
