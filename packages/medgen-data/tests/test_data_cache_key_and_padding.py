"""What a cache's identity and a padded batch must hold, checked on behaviour:

* the shard key changes with every recipe field that can change the data, found by walking
  the recipe's schema (a field added later is covered without editing this test); the fields
  that cannot change the data are an explicit list, checked to be still part of the schema;
* a shard damaged on disk is found, warned about, rebuilt, and the cache then equals a fresh
  build;
* a padded batch whose real data holds -1 voxels (windowing clips background to exactly -1):
  the validity mask is the items' extent, not "not equal to the pad value".
"""

import dataclasses
import typing
import warnings

import pytest
import torch

from medgen.data import CacheRecipe, build_cache, verify_cache
from medgen.data.cache.build import recipe_processing_hash
from medgen.data.cache.shards import SHARDS
from medgen.data.layouts.source import LayoutSource
from medgen.data.loading.collate import collate_padded, pad_stack

# Fields that decide where the data is or how subjects are split, never what a shard holds.
# Changing one must leave every shard key alone (the sources enter the key by content hash).
NOT_DATA = {
    "out": "where the cache is written",
    "sources": "where the scans are; shards are keyed by the files' content hashes instead",
    "val_fraction": "the subject split (rewrites the manifest, rebuilds no shard)",
    "test_fraction": "the subject split",
    "split_seed": "the subject split",
}


def changed(value, annotation):
    """Some other value of the field's type (validity is not needed: only the key is)."""
    if value is None:  # an optional field: a value of the non-None member of its type
        member = next(a for a in typing.get_args(annotation) if a is not type(None))
        args = typing.get_args(member)
        base = typing.get_origin(member) or member
        if base is tuple:
            return tuple(changed(0 if a is int else 0.0, a) for a in args if a is not Ellipsis)
        return changed(base(), base)
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value + 0.5
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, tuple):
        return (*value[:-1], changed(value[-1], type(value[-1]))) if value else ("x",)
    if isinstance(value, LayoutSource):
        return dataclasses.replace(value, root=value.root + "x")
    raise TypeError(f"no change known for {value!r}; extend changed()")


def key(recipe, available=("t1",)):
    """The shard-key part of ``recipe`` for sources holding the ``available`` modalities (the
    recipe's ``modalities`` select among them; empty: all, as select_modalities does)."""
    return recipe_processing_hash(recipe, recipe.modalities or available)


def test_every_data_affecting_recipe_field_changes_the_shard_key():
    fields = {f.name: f for f in dataclasses.fields(CacheRecipe)}
    hints = typing.get_type_hints(CacheRecipe)
    assert set(NOT_DATA) <= set(fields), set(NOT_DATA) - set(fields)  # still in the schema
    base = CacheRecipe(sources=("a.nii.gz",), spacing=None, z_range=None, thick_spacing=None)
    checked = []
    for name in fields:
        other = dataclasses.replace(base, **{name: changed(getattr(base, name), hints[name])})
        assert getattr(other, name) != getattr(base, name), name
        if name in NOT_DATA:
            assert key(other) == key(base), f"{name} ({NOT_DATA[name]}) changed the shard key"
        else:
            assert key(other) != key(base), f"changing {name} leaves the shard key unchanged"
            checked.append(name)
    assert len(checked) == len(fields) - len(NOT_DATA) >= 15
    assert key(base, ("t1", "flair")) != key(base)  # the modalities the shards hold


def test_a_damaged_shard_is_warned_about_rebuilt_and_equals_a_fresh_build(tmp_path, subjects_csv):
    csv = subjects_csv(3)
    recipe = CacheRecipe(out=str(tmp_path / "c"), sources=(str(csv),), n_bins=2)
    first = build_cache(recipe, quiet=True)
    victim = tmp_path / "c" / SHARDS / first.built[1]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    assert verify_cache(tmp_path / "c") == [first.built[1]]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = build_cache(recipe, quiet=True)
    messages = [str(w.message) for w in caught]
    assert any(first.built[1] in m and "damaged" in m and "rebuilding" in m for m in messages)
    assert again.damaged == [first.built[1]] and again.built == [first.built[1]]
    assert sorted(again.reused) == sorted(n for n in first.built if n != first.built[1])
    assert verify_cache(tmp_path / "c") == []
    fresh = build_cache(dataclasses.replace(recipe, out=str(tmp_path / "fresh")), quiet=True)
    assert again.manifest == fresh.manifest
    with warnings.catch_warnings(record=True) as caught:  # and an intact cache: no warning
        warnings.simplefilter("always")
        third = build_cache(recipe, quiet=True)
    assert not [w for w in caught if "damaged" in str(w.message)] and not third.built


def test_padding_mask_is_the_item_extent_even_where_real_voxels_are_minus_one():
    g = torch.Generator().manual_seed(0)
    a = torch.rand((2, 3, 5, 4), generator=g) * 2 - 1
    a[:, -1] = -1.0  # its last slice is background, clipped to exactly -1 (both channels)
    a[:, :, -1, :] = -1.0  # and its last row
    b = torch.full((2, 5, 3, 6), -1.0)  # an item of pure background
    c = torch.rand((2, 2, 5, 6), generator=g) * 2 - 1
    out, valid, shapes = pad_stack([a, b, c])
    assert out.shape == (3, 2, 5, 5, 6) and shapes.tolist() == [[3, 5, 4], [5, 3, 6], [2, 5, 6]]
    for i, item in enumerate((a, b, c)):
        region = (i, slice(None), *(slice(0, s) for s in item.shape[1:]))
        assert torch.equal(out[region], item)
        expected = torch.zeros((1, 5, 5, 6), dtype=torch.bool)
        expected[(slice(None), *(slice(0, s) for s in item.shape[1:]))] = True
        assert torch.equal(valid[i], expected), i  # real -1 voxels are valid
    assert int(valid[1].sum()) == 5 * 3 * 6  # the all -1 item is all valid
    genuine = (out == -1).all(1, keepdim=True) & valid
    assert int(genuine.sum()) > 100  # the case the mask must not be derived from
    batch = collate_padded([{"image": a}, {"image": b}, {"image": c}])
    assert torch.equal(batch["image_valid"], valid)


@pytest.mark.parametrize("pad", [-1.0, 0.0])
def test_padding_mask_does_not_depend_on_the_pad_value(pad):
    items = [torch.full((1, 2, 3), pad), torch.full((1, 4, 1), pad)]
    _, valid, _ = pad_stack(items, value=pad)
    assert valid[0, 0, :2, :3].all() and int(valid[0].sum()) == 6
    assert valid[1, 0, :4, :1].all() and int(valid[1].sum()) == 4
