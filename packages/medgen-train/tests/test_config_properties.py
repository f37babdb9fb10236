"""Property test (Hypothesis): any well-typed change to a config survives to_yaml -> read_yaml
-> from_mapping unchanged, including strings YAML would otherwise re-type ("yes", "null",
"1e3", "0x10", ": #") and extreme floats. Skipped where hypothesis is not installed."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from medgen.train.config.fit import FitConfig, load_fit_config  # noqa: E402
from medgen.train.config.schema import from_mapping, to_dict, to_yaml  # noqa: E402
from medgen.train.config.yaml_io import read_yaml  # noqa: E402
from medgen.train.errors import ConfigError  # noqa: E402

BASE = to_dict(load_fit_config("quickstart", []))


def _leaves(d: dict, prefix: tuple = ()) -> list[tuple]:
    out = []
    for k, v in d.items():
        if isinstance(v, dict):
            out += _leaves(v, (*prefix, k))
        elif isinstance(v, bool | int | float | str):
            out.append(((*prefix, k), type(v)))
    return out


LEAVES = _leaves(BASE)
TRICKY = ["yes", "no", "on", "null", "~", "1e3", "0x10", "012", ": #", "- a", "'q'", '"', "", " "]
VALUES = {
    bool: st.booleans(),
    int: st.integers(-(2**40), 2**40),
    float: st.one_of(
        st.floats(allow_nan=False, allow_infinity=False, width=64),
        st.sampled_from([0.0, -0.0, 1e-30, 1e300, 5e-324, 0.1, 1.0]),
    ),
    str: st.one_of(st.sampled_from(TRICKY), st.text(max_size=12)),
}


def _set(d: dict, path: tuple, value) -> dict:
    out = dict(d)
    out[path[0]] = _set(d[path[0]], path[1:], value) if len(path) > 1 else value
    return out


@st.composite
def changed_configs(draw):
    data = BASE
    for _ in range(draw(st.integers(1, 6))):
        path, kind = draw(st.sampled_from(LEAVES))
        data = _set(data, path, draw(VALUES[kind]))
    return data


@settings(max_examples=80, deadline=None, derandomize=True)
@given(changed_configs())
def test_config_yaml_round_trip_property(data):
    try:
        cfg = from_mapping(FitConfig, data)
    except ConfigError:  # a value outside a Literal's choices, etc.: not a config
        assume(False)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(to_yaml(cfg))
        again = from_mapping(FitConfig, read_yaml(path))
    assert again == cfg
    a, b = to_dict(again), to_dict(cfg)
    for leaf, _ in LEAVES:  # same Python types too (1 stays int, "1" stays str)
        x, y = a, b
        for k in leaf:
            x, y = x[k], y[k]
        assert type(x) is type(y), (leaf, x, y)
