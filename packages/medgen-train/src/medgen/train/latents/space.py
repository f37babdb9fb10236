"""``task.space.kind: latent``: the diffusion task's latent space, built from an autoencoder run.

A latent run reads either a latent cache (``data.cache`` made by ``medgen-train encode``:
stored raw latents and the manifest's scale factor) or the pixel cache (the frozen
autoencoder encodes each batch under ``no_grad``; the scale factor is measured over the
training split when the run starts). Either way the factor lands in the run's ``data.json``
(``DataDescription.latent``) with the autoencoder's run, checkpoint and weights sha256, so a
resumed run and ``sample`` use the same value, and an autoencoder whose weights changed since
is refused naming both hashes. The factor is applied by :class:`medgen.models.LatentSpace`
(times on the way in, divided on the way out); latents are never clamped. The autoencoder is
a frozen module of the space, never a module of the run: never checkpointed, rebuilt from its
run every time.
"""

from __future__ import annotations

import json
import math

import torch
from torch import nn

from medgen.models.spaces import LatentSpace
from medgen.train.errors import ConfigError
from medgen.train.latents.autoencoder import AutoencoderRun, ChunkedDecoding
from medgen.train.latents.dataset import LATENT, is_latent_cache
from medgen.train.latents.scale import scale_of_items

KEY = "task.space.autoencoder"
FROM_CACHE, ON_THE_FLY = "latent cache", "encoded on the fly"
SCALE_RTOL = 1e-9  # two records of one measured factor agree to float64 round-off


def describe_latent(manifest: dict, cache) -> dict:
    """``DataDescription.latent`` of a cache: the latent section of a latent cache (where its
    latents come from, their scale), {} for a pixel cache."""
    if not is_latent_cache(manifest):
        return {}
    lat = manifest[LATENT]
    return {
        "origin": FROM_CACHE,
        "cache": str(cache),
        "source_cache": lat["source"]["cache"],
        "channels": list(lat["channels"]),
        "shape": list(lat["shape"]),
        "scale_factor": float(lat["scale_factor"]),
        "scale_split": lat["scale_split"],
        "autoencoder": dict(lat["autoencoder"]),
    }


def pixel_cache(description) -> str:
    """The pixel cache behind a run's data (a latent cache's source; else its own cache)."""
    return (description.latent or {}).get("source_cache") or description.cache


def _hash_mismatch(recorded: dict, ae: AutoencoderRun, where: str) -> ConfigError:
    return ConfigError(
        f"{KEY}: {where} was made with the autoencoder {recorded['run']} {recorded['checkpoint']}"
        f" (weights sha256 {recorded['sha256'][:12]}), but {ae.run_dir} {ae.checkpoint} now "
        f"holds other weights (sha256 {ae.sha256[:12]}); encode again / train afresh for it"
    )


def _check(ae: AutoencoderRun, description, layout, latent: dict) -> None:
    """The autoencoder against the run's channels and data, and against what the latent
    cache (or the trained run's data.json) recorded."""
    ae.check_channels(layout.generate, "task.generate")
    if ae.channels:
        from medgen.train.tasks.diffusion.channels import ChannelLayout

        mine = ChannelLayout.from_config(
            ae.channels, (), description.channels, description.has_mask
        ).generate
        if list(mine) != list(layout.generate):
            raise ConfigError(
                f"task.generate: {list(layout.generate)}, but the autoencoder of {ae.run_dir} "
                f"encodes {list(mine)}"
            )
    ae.check_shape(description.shape, "data")
    if not latent:
        return
    where = latent.get("cache") or "this run"
    if latent["autoencoder"]["sha256"] != ae.sha256:
        raise _hash_mismatch(latent["autoencoder"], ae, where)
    shape = ae.latent_shape(description.shape)
    if list(latent["shape"]) != shape:
        raise ConfigError(
            f"{KEY}: {where} holds latents of shape {latent['shape']}, but the autoencoder of "
            f"{ae.run_dir} encodes the data to {shape}"
        )
    if list(latent["channels"]) != list(layout.generate):
        raise ConfigError(
            f"task.generate: {list(layout.generate)}, but {where} holds latents of "
            f"{latent['channels']}"
        )


def build_space(space_cfg, description, layout, device) -> nn.Module:
    """The diffusion space of ``task.space`` for ``description``'s data (a latent space: its
    autoencoder loaded, frozen and checked; scale from ``description.latent`` when recorded)."""
    latent = dict(getattr(description, "latent", None) or {})
    if space_cfg.kind != "latent":
        if latent.get("origin") == FROM_CACHE:
            raise ConfigError(
                f"data.cache: {description.cache} is a latent cache (medgen-train encode); "
                "train on it with task.space.kind=latent, or give the pixel cache"
            )
        return space_cfg.build(description.spatial_dims).to(device)
    if description.n_modes:
        raise ConfigError(
            "data.modality_as: 'mode' gives one modality per item; a latent space encodes the "
            "channels the autoencoder was trained on together (use modality_as=channels)"
        )
    images = [p for p in layout.priors if p != "mask"]
    if images and latent.get("origin") == FROM_CACHE:
        raise ConfigError(
            f"task.priors: {images} are image channels, which the latent cache "
            f"{description.cache} does not hold (only masks); train on the pixel cache"
        )
    ae = AutoencoderRun.open(space_cfg.autoencoder, space_cfg.checkpoint, device, KEY)
    _check(ae, description, layout, latent)
    decoding = ChunkedDecoding(ae.module, ae.factors[0], space_cfg.chunks, space_cfg.overlap)
    scale = float(latent.get("scale_factor", 1.0))
    even = len(set(ae.factors)) == 1  # else LatentSpace measures its latent shape by a dry run
    space = LatentSpace(decoding, description.spatial_dims, scale,
                        ae.latent_channels if even else None, ae.downsample if even else None)  # fmt: skip
    space.run = ae  # where the weights came from (not a module: never checkpointed)
    return space.to(device)


def encode_x0(space: nn.Module, layout, batch: dict) -> torch.Tensor:
    """x0 in the diffusion space: a latent cache's stored latents times the scale factor (what
    ``LatentSpace.encode`` returns for their items), else ``space.encode`` of the generated
    channels (the frozen autoencoder under ``no_grad``)."""
    if LATENT in batch:
        return batch[LATENT].float() * float(space.scale_factor)
    if isinstance(space, LatentSpace):
        with torch.no_grad():
            return space.encode(layout.x0(batch))
    return space.encode(layout.x0(batch))


def data_x0(space: nn.Module, layout, batch: dict) -> torch.Tensor:
    """The generated channels of ``batch`` in data space (a latent cache's: its latents
    decoded, what the autoencoder reconstructs)."""
    if LATENT in batch:
        with torch.no_grad():
            return space.decode(encode_x0(space, layout, batch))
    return layout.x0(batch)


def _stored(run_dir) -> dict:
    """``latent`` of the data.json of the newest verified checkpoint of ``run_dir`` ({})."""
    from medgen.train import checkpoint

    if not run_dir:
        return {}
    ckpt, _ = checkpoint.find_checkpoint(run_dir, "latest")
    if ckpt is None or not (ckpt / "data.json").is_file():
        return {}
    return json.loads((ckpt / "data.json").read_text()).get("latent") or {}


def calibrate(model, ctx) -> float:
    """Settle the scale factor of a latent run at ``fit``: a resumed run's recorded one, else
    the latent cache's, else 1 / std over the training split's latents; record it (with the
    autoencoder) in ``ctx.description.latent`` and set it on the space."""
    d, space, ae = ctx.description, model.space, model.space.run
    latent = dict(d.latent or {})
    stored = _stored(ctx.config.run.dir)
    if stored:
        if stored["autoencoder"]["sha256"] != ae.sha256:
            raise _hash_mismatch(stored["autoencoder"], ae, str(ctx.config.run.dir))
        if "scale_factor" in latent and not math.isclose(
            latent["scale_factor"], stored["scale_factor"], rel_tol=SCALE_RTOL
        ):
            raise ConfigError(
                f"data.cache: {latent['cache']} records the scale factor "
                f"{latent['scale_factor']!r}, but {ctx.config.run.dir} was trained with "
                f"{stored['scale_factor']!r} (data.json); use --fresh or encode again"
            )
        scale = float(stored["scale_factor"])
    elif "scale_factor" in latent:
        scale = float(latent["scale_factor"])
    else:
        split = ctx.config.data.train_split
        scale = scale_of_items(space, ctx.train_dataset, model.layout.x0,
                               ctx.config.training.batch_size, ctx.device,
                               f"{d.cache} ({split} split)")  # fmt: skip
    if not latent:
        latent = {
            "origin": ON_THE_FLY,
            "cache": None,
            "source_cache": d.cache,
            "channels": list(model.layout.generate),
            "shape": list(model.latent_shape),
            "scale_split": ctx.config.data.train_split,
        }
    latent.update(scale_factor=scale, autoencoder=ae.provenance())
    d.latent = latent
    space.set_scale_factor(scale)
    return scale


def provenance(space: nn.Module) -> dict:
    """What samples of a latent run depend on besides its checkpoint: the autoencoder's
    weights and how it decodes ({} for other spaces)."""
    run = getattr(space, "run", None)
    if run is None:
        return {}
    dec = space.autoencoder
    return {"autoencoder": run.provenance(), "decode": {"chunks": dec.chunks,
                                                        "overlap": dec.overlap}}  # fmt: skip


def latent_modules(space: nn.Module) -> dict[str, nn.Module]:
    """``{"autoencoder": module}`` of a latent space (frozen), {} for other spaces."""
    run = getattr(space, "run", None)
    return {} if run is None else {"autoencoder": run.module}
