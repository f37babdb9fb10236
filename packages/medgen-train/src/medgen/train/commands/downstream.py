"""``medgen-train downstream CONFIG [key=value ...]``: the downstream utility of generated data.

Trains a MONAI SegResNet or UNet (2D on slices, 3D on volumes) from the same seed once per
``mode``: ``real`` (a real training split, ``real: CACHE[:split]``), ``synthetic`` (the image
and mask channels of a ``medgen-train sample`` directory, ``synthetic: DIR``) or ``mixed``
(both), and scores each on held-out REAL subjects (``test: CACHE[:split]``): Dice per test
item with 95% percentile and BCa bootstrap intervals over the items, on all items and on
those with foreground, and each mode's paired difference from ``real``.

Refused before anything is written, one line each: a missing cache, split or samples
directory; samples without a mask channel or of another shape; a test split that shares a
subject (or a scan file) with the real training split or with the split the generator was
trained on. Writes ``downstream.json`` (every number, per item too, and the protocol: network,
steps, seed, data with their manifest hashes), ``downstream.md`` (the table), ``config.yaml``
and the trained weights ``model_<mode>.safetensors`` to a locked ``downstream`` directory
(``out``, or ``--out``), manifest last.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import monai
import numpy as np
import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from medgen.train.commands.downstream_data import Split, Synthetic, check_like, refuse_overlap
from medgen.train.commands.verb import add_fresh, add_overrides, add_quiet, add_verb, printer
from medgen.train.config.fit import RunSection
from medgen.train.config.schema import to_dict, to_yaml
from medgen.train.errors import ConfigError, RunDirError
from medgen.train.evaluation.downstream import (
    CacheItems,
    build_network,
    downstream_markdown,
    item_interval,
    per_item_dice,
    predict_masks,
    train_segmenter,
)
from medgen.train.evaluation.downstream_config import DownstreamConfig, load_downstream_config
from medgen.train.progress import bars_disabled
from medgen.train.rundir import RunDir, Staging, check_target

KIND = "downstream"
MANIFEST = "manifest.json"
DICE_RULE = "2|P & R| / (|P| + |R|); 1.0 when both are empty, 0.0 when only one is"


def _check_sizes(cfg: DownstreamConfig, shape: list[int]) -> None:
    factor = 2 ** (cfg.levels - 1)
    if any(s % factor for s in shape):
        raise ConfigError(
            f"widths: {cfg.levels} levels halve the size {cfg.levels - 1} times, so every size "
            f"must divide by {factor}; the data are {shape}"
        )


def _request_hash(cfg: DownstreamConfig, provenance: dict) -> str:
    settings = {k: v for k, v in to_dict(cfg).items() if k not in ("out", "threads")}
    text = json.dumps({"config": settings, "data": provenance}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def run_downstream(
    config: str | Path,
    overrides: list[str] = (),
    out: str | Path | None = None,
    *,
    fresh: bool = False,
    quiet: bool = False,
    say=print,
) -> Path:
    """Run the experiment of ``config`` (a file or bundled name, changed by ``overrides``);
    returns the output directory. Everything is checked before anything is written."""
    cfg = load_downstream_config(config, list(overrides))
    out = Path(out) if out is not None else Path(cfg.out)
    check_target(out, KIND)
    modes = list(cfg.mode)
    test = Split("test", cfg.test, "test")
    real = None
    if {"real", "mixed"} & set(modes):
        real = Split("real", cfg.real, "train")
        if (real.cache.resolve(), real.split) == (test.cache.resolve(), test.split):
            raise ConfigError(
                f"test: {test.name} is the training split named by real; name a held-out split "
                "(CACHE:test)"
            )
        check_like("real", real, test)
        refuse_overlap(test, real.subjects, real.scans, f"the real training split {real.name}")
    synthetic, leak_check = None, None
    if {"synthetic", "mixed"} & set(modes):
        synthetic = Synthetic(cfg.synthetic, test)
        leak_check = synthetic.check_leak(test, say)
    shape = list(test.manifest["item_shape"][1:])
    _check_sizes(cfg, shape)
    provenance = {
        "test": test.record(),
        "real": real.record() if real else None,
        "synthetic": synthetic.record() if synthetic else None,
    }
    request_hash = _request_hash(cfg, provenance)
    if (out / MANIFEST).is_file() and not fresh:
        old = json.loads((out / MANIFEST).read_text())
        if old.get("request_hash") == request_hash:
            say(f"downstream: {out} already holds this experiment")
            return out
        raise RunDirError(f"{out}: holds another downstream experiment; use --fresh or --out")
    device = RunSection(device=cfg.device).torch_device()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    test_items = CacheItems(test.dataset)
    reference = np.stack([test_items[i][1][0].numpy() > 0 for i in range(len(test_items))])
    foreground = reference.reshape(len(reference), -1).any(axis=1)
    groups = test.dataset.subjects() if cfg.resample == "subjects" else None
    with RunDir(out, KIND).claim(fresh) as claimed:
        claimed.mark()
        stage = Staging(out)
        try:
            results, t_all = {}, time.perf_counter()
            for mode in modes:
                results[mode], net, weights = _run_mode(cfg, mode, real, synthetic, test_items,
                                                        reference, device, quiet)  # fmt: skip
                save_file(weights, stage.path(f"model_{mode}.safetensors"))
                say(f"downstream {mode}: Dice {results[mode]['dice']['estimate']:.3f} on "
                    f"{len(reference)} test items ({results[mode]['seconds']:.0f} s)")  # fmt: skip
            if "real" in results:
                for mode in results:
                    if mode != "real":
                        diff = np.array(results[mode]["per_item_dice"]) - np.array(
                            results["real"]["per_item_dice"]
                        )
                        results[mode]["dice_minus_real"] = item_interval(
                            diff, cfg.bootstrap, cfg.seed, groups
                        )
            protocol = _protocol(cfg, provenance, foreground, len(shape), net, device)
            protocol["generator_leak_check"] = leak_check
            result = {
                "kind": KIND,
                "modes": results,
                "protocol": protocol,
                "request_hash": request_hash,
                "seconds": time.perf_counter() - t_all,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }
            stage.path("downstream.json").write_text(json.dumps(result, indent=2))
            stage.path("downstream.md").write_text(downstream_markdown(result))
            stage.path("config.yaml").write_text(to_yaml(cfg))
            stage.commit(MANIFEST, {"kind": KIND, "request_hash": request_hash})
        except BaseException:
            stage.abandon()
            raise
    say(f"downstream: {', '.join(modes)} -> {out / 'downstream.md'}")
    return out


def _run_mode(cfg, mode, real, synthetic, test_items, reference, device, quiet):
    """Train one mode's network from the seed and score it on the test items: (result, the
    network, its weights for safetensors)."""
    parts = []
    if mode in ("real", "mixed"):
        parts.append(CacheItems(real.dataset))
    if mode in ("synthetic", "mixed"):
        parts.append(synthetic.items)
    train = torch.utils.data.ConcatDataset(parts)
    torch.manual_seed(cfg.seed)  # every mode starts from the same weights
    in_channels = int(test_items[0][0].shape[0])
    net = build_network(cfg.network, reference.ndim - 1, in_channels, cfg.widths,
                        cfg.num_res_blocks)  # fmt: skip
    t0 = time.perf_counter()
    bar = tqdm(total=cfg.steps, desc=f"downstream {mode}", unit="step",
               disable=bars_disabled(quiet))  # fmt: skip

    def on_step(_step: int, loss: float) -> None:
        bar.update()
        bar.set_postfix(loss=f"{loss:.3f}")

    try:
        losses = train_segmenter(
            net, train, steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr,
            weight_decay=cfg.weight_decay, seed=cfg.seed, device=device, on_step=on_step,
        )  # fmt: skip
    except FloatingPointError as exc:
        raise ConfigError(f"lr: {exc} in mode {mode}; lower lr") from None
    finally:
        bar.close()
    scores = per_item_dice(
        predict_masks(net, test_items, cfg.batch_size, cfg.threshold, device), reference
    )
    foreground = reference.reshape(len(reference), -1).any(axis=1)
    groups = test_items.dataset.subjects() if cfg.resample == "subjects" else None
    result = {
        "n_train_real": len(real.dataset) if mode in ("real", "mixed") else 0,
        "n_train_synthetic": len(synthetic.items) if mode in ("synthetic", "mixed") else 0,
        "n_test": len(scores),
        "n_test_foreground": int(foreground.sum()),
        "dice": item_interval(scores, cfg.bootstrap, cfg.seed, groups),
        "dice_foreground": item_interval(
            scores[foreground],
            cfg.bootstrap,
            cfg.seed,
            None if groups is None else groups[foreground],
        ),
        "per_item_dice": [float(s) for s in scores],
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "loss_last_10_mean": float(np.mean(losses[-10:])),
        "seconds": time.perf_counter() - t0,
    }
    weights = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    return result, net, weights


def _protocol(cfg, provenance, foreground, spatial_dims, net, device) -> dict:
    synthetic = provenance["synthetic"]
    if synthetic is not None:
        synthetic = {**synthetic, "masks": "generated mask channel > 0"}
    return {
        "network": {
            "name": {"segresnet": "SegResNet", "unet": "UNet"}[cfg.network],
            "spatial_dims": spatial_dims,
            "widths": list(cfg.widths),
            "num_res_blocks": cfg.num_res_blocks,
            "parameters": sum(p.numel() for p in net.parameters()),
            "out_channels": "1 (foreground logits)",
        },
        "loss": "MONAI DiceCELoss(sigmoid=True, batch=True)",
        "optimizer": "AdamW, constant lr",
        "lr": cfg.lr,
        "weight_decay": cfg.weight_decay,
        "steps": cfg.steps,
        "batch_size": cfg.batch_size,
        "seed": cfg.seed,
        "threshold": cfg.threshold,
        "dice": DICE_RULE,
        "bootstrap": cfg.bootstrap,
        "resample": cfg.resample,
        "level": 0.95,
        "intervals": f"percentile and BCa, test {cfg.resample} resampled with replacement; "
        "Dice - real: the paired per-item differences",
        "test": {
            **provenance["test"],
            "n_lesion_items": int(foreground.sum()),
            "masks": "real label > 0",
        },
        "real": provenance["real"],
        "synthetic": synthetic,
        "device": str(device),
        "versions": {"torch": torch.__version__, "monai": monai.__version__},
    }


def _command(args: argparse.Namespace) -> int:
    run_downstream(
        args.config,
        args.overrides,
        args.out,
        fresh=args.fresh,
        quiet=args.quiet,
        say=printer(args.quiet),
    )
    return 0


def register(subparsers) -> None:
    """Add ``downstream`` to the CLI."""
    help_ = "segmentation trained on real / synthetic / mixed data, Dice on held-out real data"
    p = add_verb(subparsers, "downstream", _command, help_, __doc__)
    p.add_argument("config", help="YAML downstream config, or a bundled name (demo)")
    add_overrides(p, "key=value (mode=real,mixed steps=50)")
    p.add_argument("--out", help="output directory (default: out of the config)")
    add_fresh(p, "downstream directory")
    add_quiet(p)
