"""``medgen-train sample RUN_DIR``: generate samples from a trained run.

The model is rebuilt from the checkpoint's own config and ``data.json`` (no cache needed),
with its EMA weights unless ``--no-ema``. By default every z-bin x class (x mode) that
occurred in the training split gets ``sample.per_token`` samples (a token never trained on is
never sampled); ``--n``, ``--bins``, ``--classes`` and
``--modes`` narrow or change that, and a model conditioned on priors takes them from
``--priors-from CACHE[:split]`` (an item with the sample's token). ``--paired`` instead makes
one sample per item of that split, in item order, each conditioned on its own item's priors,
control maps and token; the manifest's ``paired`` names the items and their subjects, and
``evaluate`` scores each sample against its own item. Every sampler step is checked for
finiteness: a NaN or inf stops with the step and timestep named, and nothing is written.
Output (default ``RUN_DIR/samples/<checkpoint>-<sampler><steps>-seed<seed>``): ``samples.npz``
(all arrays), one NIfTI per sample and channel with the cache's spacing, ``grid.png``, and
``manifest.json`` (settings, checkpoint, file hashes) written last. Sampling again with the
same settings into a complete directory reuses it; other settings there need ``--fresh``.
``--trajectory K`` (default 4, 0: none) also keeps the denoising trajectories of the first K
samples: their x0 predictions at 6 evenly spaced sampler steps, decoded to data space, in
``trajectory.npz`` (``x0`` (K, F, C, *spatial), ``steps``, ``t``, ``index``) and
``trajectory.png``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from medgen.data import Volume, canonical_direction, read_nifti, write_nifti
from medgen.train import checkpoint
from medgen.train.checkpoint.store import EMA_FILE, MODEL_FILE, load_weights
from medgen.train.commands.paired_plan import (
    item_conditioning,
    open_reference,
    paired_plan,
)
from medgen.train.commands.verb import add_fresh, add_quiet, add_verb, printer
from medgen.train.config.schema import apply_overrides, validate
from medgen.train.errors import ConfigError, RunDirError
from medgen.train.evaluation.figures import sample_grid, trajectory_figure
from medgen.train.latents.space import pixel_cache
from medgen.train.progress import bars_disabled
from medgen.train.rundir import RunDir, Staging, check_target
from medgen.train.runs import TrainedRun
from medgen.train.tasks import TASKS
from medgen.train.tasks.diffusion.trajectory import TrajectoryRecorder

KIND = "samples"
MANIFEST = "manifest.json"


def _ints(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"expected comma-separated integers, got {text!r}") from None


def _priors(generator, reference: str | None, plan, description) -> None:
    """The prior channels (and a ControlNet's control maps) of each planned sample, from a
    reference item with the sample's token (cycling through the items of that token)."""
    layout = generator.model.layout
    wanted = [*layout.priors, *layout.control]
    if not wanted:
        if reference:
            raise ConfigError(
                "--priors-from: this run is not conditioned on priors or control maps"
            )
        return
    if not reference:
        raise ConfigError(
            f"--priors-from: the model is conditioned on {wanted}; name a cache "
            "(CACHE[:split]) to take them from"
        )
    ds, cache, split = open_reference(reference, description)
    tokens = {}
    for i, token in enumerate(ds.tokens()):
        tokens.setdefault(int(token), []).append(i)
    priors, control, control_mask = [], [], []
    for k, token in enumerate(plan.token):
        members = tokens.get(int(token))
        if not members:
            raise ConfigError(
                f"--priors-from: {cache}:{split} has no item with token {int(token)} "
                f"(z-bin {int(plan.z_bin[k])}, class {int(plan.class_id[k])})"
            )
        p, c, m = item_conditioning(layout, ds[members[k % len(members)]])
        priors.append(p)
        control.append(c)
        control_mask.append(m)
    plan.priors = priors if layout.priors else None
    plan.control = control if layout.control else None
    plan.control_mask = np.stack(control_mask) if control_mask[0] is not None else None


def _check_paired(paired: bool, priors_from: str | None, flags: dict) -> None:
    """``--paired`` needs ``--priors-from`` and takes no ``--n`` / ``--bins`` / ... ."""
    if not paired:
        return
    if not priors_from:
        raise ConfigError("--paired: needs --priors-from CACHE[:split], the items to pair with")
    for flag, value in flags.items():
        if value is not None:
            raise ConfigError(
                f"--paired: one sample per item of the --priors-from split; {flag} cannot be "
                "combined with it"
            )


def _write_nifti(stage: Staging, name: str, array: np.ndarray, spacing, orientation) -> None:
    volume = Volume(
        np.ascontiguousarray(array[None] if array.ndim == 2 else array, dtype=np.float32),
        tuple(float(s) for s in spacing),
        (0.0, 0.0, 0.0),
        canonical_direction(orientation or "LPS"),
    )
    path = write_nifti(volume, stage.path(name))
    back = read_nifti(path)  # verified before it is moved into place
    if back.shape != volume.shape or not np.array_equal(back.array, volume.array):
        raise RunDirError(f"{path}: read back differently from what was written")


def _outputs(stage: Staging, samples: np.ndarray, plan, generator, nifti: bool) -> dict:
    """Write samples.npz, NIfTI files and grid.png into the staging directory."""
    m = generator.model
    d = m.description
    names = list(m.layout.generate)
    image_idx = [i for i, n in enumerate(names) if n != "mask"]
    arrays = {
        "images": samples[:, image_idx] if image_idx else np.zeros((len(samples), 0)),
        "z_bin": plan.z_bin,
        "class_id": plan.class_id,
        "token": plan.token,
    }
    if "mask" in names:
        arrays["masks"] = (samples[:, names.index("mask")] > 0).astype(np.uint8)
    if plan.mode is not None:
        arrays["mode"] = plan.mode
    if plan.control_mask is not None:  # what a ControlNet's samples should follow
        arrays["control_mask"] = plan.control_mask.astype(np.uint8)
    np.savez(stage.path("samples.npz"), **arrays)
    with np.load(stage.path("samples.npz")) as back:  # verified: every array reads back
        for key, value in arrays.items():
            if not np.array_equal(back[key], value):
                raise RunDirError(f"{stage.path('samples.npz')}: {key} read back differently")
    if nifti:
        for i in range(len(samples)):
            stem = f"nifti/sample_{i:05d}_bin{int(plan.z_bin[i])}_class{int(plan.class_id[i])}"
            for c, name in enumerate(names):
                value = samples[i, c] if name != "mask" else arrays["masks"][i].astype(np.float32)
                _write_nifti(stage, f"{stem}_{name}.nii.gz", value, d.spacing, d.orientation)
    rows = []
    for token in dict.fromkeys(plan.token.tolist()):
        sel = np.flatnonzero(plan.token == token)[:6]
        b, c = int(plan.z_bin[sel[0]]), int(plan.class_id[sel[0]])
        rows.append(
            {
                "label": f"bin {b} class {c}" if d.kind == "slices" else f"class {c}",
                "images": arrays["images"][sel, 0] if image_idx else samples[sel, 0],
                "masks": arrays["masks"][sel] if "masks" in arrays else None,
            }
        )
    sample_grid(stage.path("grid.png"), rows[:24])
    return arrays


def _trajectory(stage: Staging, recorder: TrajectoryRecorder, plan) -> None:
    """``trajectory.npz`` and ``trajectory.png`` of the recorded samples."""
    arrays = recorder.arrays()
    if not arrays:
        return
    np.savez(stage.path("trajectory.npz"), **arrays)
    labels = [f"#{i} bin {int(plan.z_bin[i])} class {int(plan.class_id[i])}"
              for i in arrays["index"]]  # fmt: skip
    trajectory_figure(stage.path("trajectory.png"), arrays["x0"][:, :, 0], arrays["steps"],
                      arrays["t"], labels)  # fmt: skip


def run_sample(
    run_dir: str | Path,
    *,
    which: str = "latest",
    out: str | Path | None = None,
    n: int | None = None,
    bins: list[int] | None = None,
    classes: list[int] | None = None,
    modes: list[int] | None = None,
    priors_from: str | None = None,
    paired: bool = False,
    overrides: list[str] = (),
    nifti: bool = True,
    trajectory: int = 4,
    fresh: bool = False,
    quiet: bool = False,
    say=print,
) -> Path:
    """Sample ``run_dir``'s checkpoint ``which`` with its ``sample`` section, changed by
    ``overrides`` (``sample.steps=100``, ``run.device=cpu``); returns the samples directory.
    ``paired``: one sample per item of ``priors_from``'s split, each conditioned on its own
    item (:mod:`.paired_plan`). Everything is checked before anything is written."""
    _check_paired(paired, priors_from, {"--n": n, "--bins": bins, "--classes": classes,
                                        "--modes": modes})  # fmt: skip
    run = TrainedRun.open(run_dir, which)
    cfg = validate(apply_overrides(run.config, list(overrides)))
    d, s = run.description, cfg.sample
    if n is not None and n < 1:
        raise ConfigError(f"--n: expected at least 1 sample, got {n}")
    if trajectory < 0:
        raise ConfigError(f"--trajectory: expected 0 or more samples, got {trajectory}")
    has_ema = (run.checkpoint / EMA_FILE).is_file()
    if s.ema and not has_ema:
        raise ConfigError(f"{run.checkpoint}: no EMA weights (ema_decay=0); use --no-ema")
    spec = TASKS[cfg.task.kind]
    if spec.generator is None:
        instead = getattr(cfg.task, "instead_of_sample", "")  # what such a run is for
        raise ConfigError(f"{run_dir}: a task.kind {cfg.task.kind!r} run does not generate "
                          f"samples{'; ' + instead if instead else ''}")  # fmt: skip
    device = cfg.run.torch_device()
    generator = spec.generator(cfg, d, device)
    weights = EMA_FILE if s.ema else MODEL_FILE
    load_weights(run.checkpoint, generator.modules(), weights)
    pairing = None
    if paired:
        plan, pairing = paired_plan(generator, priors_from, d)
    else:
        plan = generator.plan(n, s.per_token, bins, classes, modes)
        _priors(generator, priors_from, plan, d)
    sampler = generator.sampler_name(s)
    name = f"{run.checkpoint.name}-{sampler}{s.steps}-seed{s.seed}"
    out = Path(out) if out is not None else Path(run_dir) / "samples" / name
    request = {
        "checkpoint": run.checkpoint.name,
        "weights": "ema" if s.ema else "model",
        "weights_sha256": checkpoint.read_state(run.checkpoint)["files"][weights],
        "settings": asdict(s) | {"sampler": sampler},
        "plan": hashlib.sha256(
            np.concatenate([plan.token, plan.mode if plan.mode is not None else []]).tobytes()
        ).hexdigest(),
        "priors_from": priors_from,
        **({"paired": pairing} if pairing else {}),  # which item each sample belongs to
        "nifti": nifti,
        "trajectory": trajectory,
        **generator.provenance(),
    }
    request_hash = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()
    check_target(out, KIND)
    if (out / MANIFEST).is_file() and not fresh:
        old = json.loads((out / MANIFEST).read_text())
        if old.get("request_hash") == request_hash:
            say(f"sample: {out} already holds these samples (same weights and settings)")
            return out
        raise RunDirError(
            f"{out}: holds samples of other settings or another checkpoint; use --fresh to "
            "move them aside, or another --out"
        )
    clip_x0 = generator.model.cfg.clip_x0
    with RunDir(out, KIND).claim(fresh) as claimed:
        claimed.mark()
        stage = Staging(out)
        try:
            t0 = time.perf_counter()
            bar = tqdm(total=len(plan), desc="sample", unit="sample",
                       disable=bars_disabled(quiet))  # fmt: skip
            decode = generator.model.space.decode
            recorder = TrajectoryRecorder(trajectory, s.steps, decode) if trajectory else None
            samples = generator.generate(plan, s, clip_x0, on_batch=bar.update, on_step=recorder)
            bar.close()
            seconds = time.perf_counter() - t0
            _outputs(stage, samples, plan, generator, nifti)
            if recorder is not None:
                _trajectory(stage, recorder, plan)
            stage.commit(
                MANIFEST,
                {
                    "kind": KIND,
                    "run": str(Path(run_dir)),
                    "step": run.step,
                    **request,
                    "request_hash": request_hash,
                    "n": len(plan),
                    "channels": list(generator.model.layout.generate),
                    "data": {
                        "kind": d.kind,
                        "shape": d.shape,
                        "spacing": d.spacing,
                        "orientation": d.orientation,
                        "cache": pixel_cache(d),
                        "train_split": cfg.data.train_split,
                        "n_bins": d.n_bins,
                        "n_classes": d.n_classes,
                        "n_modes": d.n_modes,
                        "description": json.loads(d.to_json()),  # how evaluate opens items
                    },
                    "seconds": seconds,
                    "seconds_per_sample": seconds / max(1, len(plan)),
                    "steps_taken": generator.steps_taken,  # per batch (sample.early_stop)
                    "device": str(device),
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                },
            )
        except BaseException:
            stage.abandon()
            raise
    say(f"sample: {len(plan)} samples in {seconds:.1f} s ({sampler}, {s.steps} steps) -> {out}")
    return out


def _command(args: argparse.Namespace) -> int:
    flags = {
        "sample.sampler": args.sampler,
        "sample.steps": args.steps,
        "sample.eta": args.eta,
        "sample.guidance": args.guidance,
        "sample.batch_size": args.batch_size,
        "sample.seed": args.seed,
        "sample.spacing": args.spacing,
        "sample.per_token": args.per_token,
        "sample.ema": "false" if args.no_ema else None,
        "sample.early_stop": args.early_stop,
        "run.device": args.device,
        "task.space.chunks": args.chunks,
    }
    run_sample(
        args.run_dir,
        which=args.checkpoint,
        out=args.out,
        n=args.n,
        bins=_ints(args.bins),
        classes=_ints(args.classes),
        modes=_ints(args.modes),
        priors_from=args.priors_from,
        paired=args.paired,
        overrides=[f"{k}={v}" for k, v in flags.items() if v is not None],
        nifti=not args.no_nifti,
        trajectory=args.trajectory,
        fresh=args.fresh,
        quiet=args.quiet,
        say=printer(args.quiet),
    )
    return 0


def register(subparsers) -> None:
    """Add ``sample`` to the CLI."""
    help_ = "generate samples (NIfTI + PNG + npz) from a trained run"
    p = add_verb(subparsers, "sample", _command, help_, __doc__)
    p.add_argument("run_dir", help="a fit run directory")
    p.add_argument("--checkpoint", default="latest", help="latest (default), best or step_N")
    p.add_argument("--out", help="samples directory (default: RUN_DIR/samples/<name>)")
    p.add_argument("--n", type=int, help="number of samples (cycling through the conditions)")
    p.add_argument("--early-stop", type=float, dest="early_stop",
                   help="stop a batch once its relative update is below this (seed 004)")  # fmt: skip
    p.add_argument("--per-token", type=int, dest="per_token",
                   help="samples per z-bin x class (default: sample.per_token)")  # fmt: skip
    p.add_argument("--bins", help="z-bins to sample, e.g. 0,4,9 (default: all)")
    p.add_argument("--classes", help="classes to sample, e.g. 1 (default: all)")
    p.add_argument("--modes", help="modes (modalities) to sample (mode-embedding runs)")
    p.add_argument("--priors-from", dest="priors_from",
                   help="CACHE[:split] (:split: the run's own cache) to take prior channels "
                        "and ControlNet control maps from")  # fmt: skip
    p.add_argument("--paired", action="store_true",
                   help="one sample per item of the --priors-from split, in item order, each "
                   "conditioned on its own item (evaluate then scores it against that item)")  # fmt: skip
    p.add_argument("--sampler", choices=("auto", "ddim", "ddpm", "euler", "heun"))
    p.add_argument("--steps", type=int)
    p.add_argument("--eta", type=float, help="DDIM eta (0: deterministic)")
    p.add_argument("--spacing", choices=("trailing", "leading", "linspace"))
    p.add_argument("--guidance", type=float, help="classifier-free guidance weight")
    p.add_argument("--batch-size", type=int, dest="batch_size")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: the run's)")
    p.add_argument("--chunks", type=int,
                   help="latent runs: decode in N pieces along depth (task.space.chunks)")  # fmt: skip
    p.add_argument("--no-ema", action="store_true", help="use the raw training weights")
    p.add_argument("--no-nifti", action="store_true", help="skip the per-sample NIfTI files")
    p.add_argument("--trajectory", type=int, default=4, metavar="K",
                   help="keep the x0 predictions of the first K samples at 6 sampler steps "
                   "(trajectory.npz / .png; default 4, 0: none)")  # fmt: skip
    add_fresh(p, "samples directory")
    add_quiet(p)
