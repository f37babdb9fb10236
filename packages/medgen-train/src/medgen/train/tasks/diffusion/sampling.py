"""Sampling a trained diffusion run: what to generate (a plan of tokens, modes and priors), and
the sampler loop with every step checked for finiteness.

Sample i starts from noise drawn from its own seed (``SeedSequence([seed, i])``), so with a
deterministic sampler (DDIM eta 0, Euler, Heun) a sample does not depend on the batch size or
on which other samples are drawn with it; the step noise of stochastic samplers (DDPM, DDIM
eta > 0) is drawn per batch. A NaN or inf in any step stops sampling with an error naming the
samples, the step and the timestep.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from medgen.models import Conditioning, samplers
from medgen.train.errors import ConfigError, SamplingError
from medgen.train.latents.space import provenance as latent_provenance
from medgen.train.tasks.diffusion.task import DiffusionModel

DDPM_SAMPLERS, FLOW_SAMPLERS = ("ddim", "ddpm"), ("euler", "heun")


@dataclass
class Plan:
    """Per-sample conditioning: z-bin, class and token (slices: token = z_bin + n_bins *
    class; volumes: token = class), mode, and prior channels (from reference items)."""

    z_bin: np.ndarray
    class_id: np.ndarray
    token: np.ndarray
    mode: np.ndarray | None = None
    priors: list[torch.Tensor] | None = None  # per sample, (P, *spatial)
    control: list[torch.Tensor] | None = None  # per sample, (K, *spatial): ControlNet maps
    control_mask: np.ndarray | None = None  # (N, *spatial) bool: the mask the maps came from

    def __len__(self) -> int:
        return int(self.token.shape[0])


def resolve_sampler(strategy_kind: str, name: str, key: str = "sample.sampler") -> str:
    """The sampler ``name`` stands for (``auto``: ddim for DDPM, euler for rectified flow);
    a ConfigError naming ``key`` when it cannot sample that strategy."""
    if name == "auto":
        return "ddim" if strategy_kind == "ddpm" else "euler"
    allowed = DDPM_SAMPLERS if strategy_kind == "ddpm" else FLOW_SAMPLERS
    if name not in allowed:
        raise ConfigError(
            f"{key}: {name!r} does not sample a {strategy_kind!r} model; use auto or one of "
            f"{', '.join(allowed)}"
        )
    return name


def check_run(config, key: str = "sample") -> None:
    """What a run's ``sample`` section (or ``sample``'s flags, ``key`` "--...") must satisfy for
    its diffusion task: a sampler of the strategy, guidance only with a null token, DDPM steps
    within the schedule."""
    task, s = config.task, config.sample
    strategy = task.strategy
    resolve_sampler(strategy.kind, s.sampler, f"{key}.sampler" if key == "sample" else "--sampler")
    if s.guidance is not None and not task.cond_dropout:
        raise ConfigError(
            f"{key}.guidance: classifier-free guidance needs a null token; train with "
            "task.cond_dropout > 0 (e.g. 0.1)"
        )
    if strategy.kind == "ddpm" and s.steps > strategy.schedule.num_train_timesteps:
        raise ConfigError(
            f"{key}.steps: {s.steps} sampling steps exceed the schedule's "
            f"{strategy.schedule.num_train_timesteps} timesteps"
        )


def _values(given: list[int] | None, n: int, what: str, key: str) -> list[int]:
    if not given:
        return list(range(n))
    bad = [v for v in given if not 0 <= v < n]
    if bad:
        raise ConfigError(f"{key}: {what} {bad} outside what the model was trained on [0, {n})")
    return list(given)


class DiffusionGenerator:
    """A diffusion run's model, ready to sample (weights loaded by the caller into
    :meth:`modules`)."""

    def __init__(self, model: DiffusionModel, device: torch.device) -> None:
        self.model, self.device = model, device

    @classmethod
    def load(cls, config, description, device: torch.device) -> DiffusionGenerator:
        """Rebuild the run's strategy, space and network from its config and data.json."""
        model = DiffusionModel.build(config.task, config.model, description, device)
        return cls(model, device)

    def provenance(self) -> dict:
        """What the samples depend on besides the run's checkpoint (a latent run: its
        autoencoder's weights and decoding; else nothing)."""
        return latent_provenance(self.model.space)

    def sampler_name(self, s) -> str:
        """The sampler the ``sample`` section ``s`` asks for (``auto`` resolved)."""
        return resolve_sampler(self.model.strategy.kind, s.sampler, "--sampler")

    def modules(self) -> dict[str, torch.nn.Module]:
        """The modules whose (EMA) weights a checkpoint provides."""
        return self.model.checkpointed()

    def plan(
        self,
        n: int | None,
        per_token: int,
        bins: list[int] | None = None,
        classes: list[int] | None = None,
        modes: list[int] | None = None,
    ) -> Plan:
        """Every combination of the requested bins x classes (x modes) that occurred in the
        training split, ``per_token`` times each, or ``n`` samples cycling through them."""
        d = self.model.description
        bins = _values(bins, d.n_bins, "z-bins", "--bins")
        classes = _values(classes, d.n_classes, "classes", "--classes")
        mode_values = _values(modes, d.n_modes, "modes", "--modes") if d.n_modes else [None]
        if modes and not d.n_modes:
            raise ConfigError("--modes: this run was not trained with a mode embedding")
        combos = list(itertools.product(classes, bins, mode_values))
        if d.tokens:  # only what the training split held: other tokens were never learned
            seen = set(d.tokens)
            combos = [(c, b, m) for c, b, m in combos if b + d.n_bins * c in seen]
            if not combos:
                raise ConfigError(
                    f"--bins/--classes: no z-bin x class asked for occurred in the training "
                    f"split (trained tokens: {d.tokens})"
                )
        if n is None:
            rows = [c for c in combos for _ in range(per_token)]
        else:
            rows = list(itertools.islice(itertools.cycle(combos), n))
        cls_, zb, md = (np.array(v) for v in zip(*rows, strict=True))
        return Plan(
            z_bin=zb.astype(np.int64),
            class_id=cls_.astype(np.int64),
            token=(zb + d.n_bins * cls_).astype(np.int64),
            mode=md.astype(np.int64) if d.n_modes else None,
        )

    def _model(self, net, batch_cond: dict) -> Callable:
        """``model(x, t, token)`` for the samplers: the token tensor stays the sampler's (so
        classifier-free guidance can swap in the null token), the rest comes from the batch."""
        m = self.model

        def call(x, t, token):
            cond = Conditioning(
                token=token if m.num_tokens else None,
                mode=batch_cond.get("mode"),
                priors=batch_cond.get("priors"),
                control=batch_cond.get("control"),
            )
            return net(x, t, cond)

        return call

    @torch.no_grad()
    def generate(
        self,
        plan: Plan,
        s,
        clip_x0: float | None = None,
        on_batch: Callable | None = None,
        on_step: Callable | None = None,
    ) -> np.ndarray:
        """Samples (N, C, *spatial) float32 in data space, images clamped to [-1, 1]; ``s`` is
        a run's ``sample`` section (sampler, steps, eta, spacing, guidance, batch size, seed),
        ``clip_x0`` the pixel-space x0 bound of DDPM samplers. ``on_step(info, indices)``, if
        given, sees every sampler step (``info``: ``i``, ``t``, ``x``, ``x0``, in the model's
        space) with the plan indices of the batch's samples."""
        m = self.model
        sampler = resolve_sampler(m.strategy.kind, s.sampler, "--sampler")
        if s.guidance is not None and m.null_token is None:
            raise ConfigError(
                "--guidance: this run was trained without conditioning dropout "
                "(task.cond_dropout=0), so it has no null token to guide with"
            )
        net = m.network.eval()
        out = []
        self.steps_taken: list[int] = []  # per batch: fewer than s.steps where early_stop ended it
        for start in range(0, len(plan), s.batch_size):
            idx = list(range(start, min(start + s.batch_size, len(plan))))
            x_T = torch.cat(
                [
                    torch.randn(
                        (1, *m.latent_shape),
                        generator=torch.Generator().manual_seed(
                            int(np.random.SeedSequence([s.seed, i]).generate_state(1)[0])
                        ),
                    )
                    for i in idx
                ]
            ).to(self.device)
            cond: dict = {}
            if plan.mode is not None:
                cond["mode"] = torch.from_numpy(plan.mode[idx]).to(self.device)
            priors = None
            if plan.priors is not None:
                stacked = torch.stack([plan.priors[i] for i in idx]).to(self.device)
                priors = [stacked[:, j : j + 1] for j in range(stacked.shape[1])]
            z_bin = torch.from_numpy(plan.z_bin[idx]).to(self.device)
            priors = m.network_priors(priors, z_bin)  # + the anatomical map of each z-bin
            if priors is not None:
                cond["priors"] = priors
            if plan.control is not None:
                cond["control"] = torch.stack([plan.control[i] for i in idx]).to(self.device)
            token = torch.from_numpy(plan.token[idx]).to(self.device)
            generator = torch.Generator().manual_seed(s.seed * 7919 + start)

            def check(info, first=idx[0], last=idx[-1], batch=idx):
                if not torch.isfinite(info["x"]).all():
                    bad = int((~torch.isfinite(info["x"])).flatten(1).any(1).sum())
                    raise SamplingError(
                        f"non-finite values at step {info['i'] + 1} (t={info['t']}) in {bad} of "
                        f"the samples {first}..{last}; nothing was written"
                    )
                if on_step is not None:
                    on_step(info, batch)

            kwargs = dict(
                cond=token,
                generator=generator,
                callback=check,
                guidance=s.guidance,
                null_token=m.null_token if s.guidance is not None else None,
            )
            if sampler in DDPM_SAMPLERS:
                kwargs.update(spacing=s.spacing, clip_x0=clip_x0)
            if sampler == "ddim":
                kwargs["eta"] = s.eta
            stop = samplers.EarlyStop(s.early_stop) if s.early_stop else None
            z = samplers.SAMPLERS[sampler](
                self._model(net, cond), m.strategy, x_T, s.steps, early_stop=stop, **kwargs
            )
            done = stop.stopped_at if stop is not None else None
            self.steps_taken.append(s.steps if done is None else done + 1)
            x = m.space.decode(z).float()
            if not torch.isfinite(x).all():
                raise SamplingError(f"decoding samples {idx[0]}..{idx[-1]} gave non-finite values")
            out.append(x.clamp(-1, 1).cpu().numpy())
            if on_batch is not None:
                on_batch(len(idx))
        return np.concatenate(out).astype(np.float32)
