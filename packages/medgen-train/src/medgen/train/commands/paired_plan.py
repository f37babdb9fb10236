"""Conditioning taken from reference items for ``medgen-train sample --priors-from``: a
reference ``CACHE[:split]`` opened as the run saw its data, one item's prior channels and
ControlNet control maps, and the *paired* plan (``--paired``): one sample per item of the
split, in item order, each conditioned on its own item's priors and control maps and token, so
that ``evaluate`` can score every sample against the item it came from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from medgen.train.errors import ConfigError
from medgen.train.latents.space import pixel_cache
from medgen.train.tasks.data import open_items
from medgen.train.tasks.diffusion.sampling import Plan


def parse_reference(text: str, default_split: str) -> tuple[Path, str]:
    """``CACHE[:split]`` -> (cache directory, split)."""
    path, sep, split = text.rpartition(":")
    if not sep or "/" in split or not split:
        return Path(text), default_split
    return Path(path), split


def open_reference(reference: str, description):
    """``(items, cache, split)`` of ``--priors-from CACHE[:split]`` (``:split``: the run's own
    training cache), the items as the run saw its data (a pairs cache at the run's depth)."""
    cache, split = parse_reference(reference, "val")
    if reference.startswith(":"):
        cache = Path(pixel_cache(description))
    modality_as = "mode" if description.n_modes else "channels"
    return open_items(cache, split, description, modality_as=modality_as), cache, split


def item_conditioning(layout, item: dict) -> tuple:
    """``(priors (P, *spatial) | None, control (K, *spatial) | None, control mask | None)`` of
    one reference item under the run's channel layout."""
    batch = {key: v[None] for key, v in item.items() if isinstance(v, torch.Tensor)}
    priors = torch.cat(layout.prior_tensors(batch), dim=1)[0] if layout.priors else None
    control = layout.control_tensor(batch)[0] if layout.control else None
    mask = None
    if layout.control and {"mask", "labels"} & set(layout.control):
        mask = item["mask"][0].numpy() > 0
    return priors, control, mask


def paired_plan(generator, reference: str, description) -> tuple[Plan, dict]:
    """``(plan, record)``: one sample per item of ``reference``'s split, conditioned on that
    item's priors, control maps, token and mode; ``record`` (``cache``, ``split``, ``items``,
    ``subjects``) goes into the samples manifest."""
    layout = generator.model.layout
    if not [*layout.priors, *layout.control]:
        raise ConfigError(
            "--paired: this run is not conditioned on priors or control maps, so its samples "
            "have no item of their own to be paired with"
        )
    items, cache, split = open_reference(reference, description)
    if len(items) == 0:
        raise ConfigError(f"--paired: {cache}:{split} holds no items")
    trained = set(description.tokens)
    fields: dict[str, list] = {"z_bin": [], "class_id": [], "token": [], "mode": []}
    priors, control, masks = [], [], []
    for i in range(len(items)):
        item = items[i]
        token = int(item["token"])
        if trained and token not in trained:
            raise ConfigError(
                f"--paired: item {i} of {cache}:{split} has token {token} (z-bin "
                f"{int(item['z_bin'])}, class {int(item['class_id'])}), which the run never "
                f"trained on (trained tokens: {sorted(trained)})"
            )
        for key in ("z_bin", "class_id", "token"):
            fields[key].append(int(item[key]))
        if "mode" in item:
            fields["mode"].append(int(item["mode"]))
        p, c, m = item_conditioning(layout, item)
        priors.append(p)
        control.append(c)
        masks.append(m)
    plan = Plan(
        z_bin=np.array(fields["z_bin"], np.int64),
        class_id=np.array(fields["class_id"], np.int64),
        token=np.array(fields["token"], np.int64),
        mode=np.array(fields["mode"], np.int64) if description.n_modes else None,
        priors=priors if layout.priors else None,
        control=control if layout.control else None,
        control_mask=np.stack(masks) if masks[0] is not None else None,
    )
    record = {
        "cache": str(Path(cache).resolve()),
        "split": split,
        "items": list(range(len(items))),
        "subjects": [str(s) for s in items.subjects()],
    }
    return plan, record
