"""Compiled kernels (CPU, and CUDA where a GPU exists) == pure-PyTorch reference; loader warning."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import medgen.cuda as mc
from medgen.cuda import _extension, reference

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
TOL = {
    torch.float32: dict(rtol=2e-6, atol=2e-6),
    torch.float64: dict(rtol=1e-12, atol=1e-12),
    torch.float16: dict(rtol=1e-3, atol=1e-3),  # one float16 ulp after float32 math
    torch.bfloat16: dict(rtol=8e-3, atol=8e-3),
}

needs_extension = pytest.mark.skipif(
    not _extension.extension_available(),
    reason="medgen.cuda._C is not built/importable "
    "(pip install --no-build-isolation packages/medgen-cuda); reference-only run",
)
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _step_args(dtype, device="cpu", batch=3):
    g = torch.Generator().manual_seed(11)
    x, m, n = (torch.randn(batch, 4, 6, 10, generator=g) * 3 for _ in range(3))
    a_t = torch.tensor([0.02, 0.5, 0.999])[:batch]
    a_p = torch.tensor([0.05, 0.6, 1.0])[:batch]
    return [t.to(device=device, dtype=dtype) for t in (x, m, n)] + [a_t.to(device), a_p.to(device)]


def _compare_all_ops(dtype, device, expect_fn):
    """Run every op on `device` and compare with `expect_fn(op_name, *cpu_args)`."""
    x, m, n, a_t, a_p = _step_args(dtype, device)
    for prediction in ("epsilon", "v", "sample"):
        for eta, clip in ((0.0, None), (0.6, None), (1.0, 1.5)):
            kw = dict(prediction=prediction, eta=eta, noise=n if eta else None, clip_x0=clip)
            got = mc.ddim_step(x, m, a_t, a_p, **kw)
            exp = expect_fn("ddim_step", x, m, a_t, a_p, **kw)
            for g_, e_ in zip(got, exp, strict=True):
                torch.testing.assert_close(g_.cpu(), e_.cpu(), **TOL[dtype])
            # scalar alpha_bar path (one coefficient row)
            got = mc.ddim_step(x, m, 0.3, 0.45, **kw)
            exp = expect_fn("ddim_step", x, m, 0.3, 0.45, **kw)
            for g_, e_ in zip(got, exp, strict=True):
                torch.testing.assert_close(g_.cpu(), e_.cpu(), **TOL[dtype])
        for clip in (None, 1.0):
            kw = dict(prediction=prediction, noise=n, clip_x0=clip)
            got = mc.ddpm_step(x, m, a_t, a_p, **kw)
            exp = expect_fn("ddpm_step", x, m, a_t, a_p, **kw)
            for g_, e_ in zip(got, exp, strict=True):
                torch.testing.assert_close(g_.cpu(), e_.cpu(), **TOL[dtype])
    got = mc.euler_step(x, m, a_t, a_p)
    torch.testing.assert_close(
        got.cpu(), expect_fn("euler_step", x, m, a_t, a_p).cpu(), **TOL[dtype]
    )
    for shape in ((2, 3, 8, 12), (1, 2, 10, 4, 6)):
        v = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(device, dtype)
        w = mc.haar_dwt(v)
        torch.testing.assert_close(w.cpu(), expect_fn("haar_dwt", v).cpu(), **TOL[dtype])
        torch.testing.assert_close(
            mc.haar_idwt(w).cpu(), expect_fn("haar_idwt", w).cpu(), **TOL[dtype]
        )


def _reference(name, *args, **kwargs):
    return getattr(reference, name)(*args, **kwargs)


@needs_extension
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_extension_cpu_equals_reference(dtype):
    _compare_all_ops(dtype, "cpu", _reference)


@needs_extension
def test_cuda_extension_fp16_saturates_like_reference():
    x = torch.tensor([[60000.0, -60000.0, 1.0, float("nan")]], dtype=torch.float16)
    m = torch.zeros_like(x)
    got = mc.ddim_step(x, m, 0.01, 0.02)
    exp = reference.ddim_step(x, m, 0.01, 0.02)
    for g_, e_ in zip(got, exp, strict=True):
        torch.testing.assert_close(g_, e_, equal_nan=True)
    assert got[1][0, 0] == 65504 and got[1][0, 1] == -65504 and torch.isnan(got[1][0, 3])
    w = torch.full((1, 1, 2, 2, 2), 60000.0, dtype=torch.float16)
    assert mc.haar_dwt(w)[0, 0].item() == 65504.0 == reference.haar_dwt(w)[0, 0].item()


@needs_extension
def test_cuda_extension_large_threaded_input_equals_reference():
    """Big enough for several OpenMP chunks and per-sample runs that straddle chunk borders."""
    g = torch.Generator().manual_seed(2)
    x, m = torch.randn(5, 4, 33, 65, generator=g), torch.randn(5, 4, 33, 65, generator=g)
    a_t = torch.rand(5, generator=g) * 0.9 + 0.05
    got = mc.ddim_step(x, m, a_t, a_t.sqrt())
    exp = reference.ddim_step(x, m, a_t, a_t.sqrt())
    for g_, e_ in zip(got, exp, strict=True):
        torch.testing.assert_close(g_, e_, rtol=2e-6, atol=2e-6)
    v = torch.randn(2, 3, 32, 48, 64, generator=g)
    torch.testing.assert_close(mc.haar_dwt(v), reference.haar_dwt(v), rtol=1e-6, atol=1e-6)


def _fp16_inputs(n: int, seed: int) -> torch.Tensor:
    """float16 data from 1e-9 to 1e5 in magnitude (subnormal results, rounding ties, overflow of
    the float32 result past 65504), with inf, NaN and signed zeros mixed in."""
    g = torch.Generator().manual_seed(seed)
    mag = torch.logspace(-9, 5, n)[torch.randperm(n, generator=g)]
    x = torch.randn(n, generator=g) * mag
    special = torch.tensor([0.0, -0.0, 65504.0, -65504.0, float("inf"), -float("inf"),
                            float("nan"), 6e-8, -3e-8, 2049.0, 2051.0, 1.00048828125])  # fmt: skip
    k = min(n, special.numel())
    x[torch.randperm(n, generator=g)[:k]] = special[:k]
    return x.half()


def _fp16_outputs(ops=mc) -> list[torch.Tensor]:
    """float16 outputs of every op (``ops``: medgen.cuda or its reference) over lengths that cover
    the 8/16-lane conversion loops, their tails and several staged blocks (512 elements), with
    per-sample coefficient rows."""
    outs: list[torch.Tensor] = []
    a_t = torch.tensor([0.003, 0.7], dtype=torch.float64)
    a_p = torch.tensor([0.01, 0.75], dtype=torch.float64)
    for i, n in enumerate((5, 8, 23, 48, 600, 1500)):
        x, m, e = (_fp16_inputs(2 * n, 10 * i + j).reshape(2, n) for j in range(3))
        for kw in (
            {},
            dict(eta=1.0, noise=e),
            dict(clip_x0=1.0),
            dict(eta=0.5, noise=e, clip_x0=2.0),
        ):
            outs += ops.ddim_step(x, m, a_t, a_p, **kw)
        outs += ops.ddpm_step(x, m, a_t, a_p, noise=e)
        outs.append(ops.euler_step(x, m, 0.9, torch.tensor([0.1, -3.0])))
    for shape in ((1, 2, 4, 6), (2, 1, 2, 16), (1, 2, 4, 40), (1, 1, 2, 600), (1, 1, 2, 4, 6),
                  (1, 1, 2, 2, 40), (1, 2, 2, 4, 600)):  # fmt: skip
        numel = torch.Size(shape).numel()
        x = _fp16_inputs(numel, numel).reshape(shape) * 100
        nd = len(shape) - 2
        w = _fp16_inputs(numel, numel + 1) * 100
        w = w.reshape(shape[0], shape[1] << nd, *(d // 2 for d in shape[2:]))
        outs += [ops.haar_dwt(x), ops.haar_idwt(w)]
    return outs


def _fp16_bits(t: torch.Tensor) -> torch.Tensor:
    """Bit patterns with every NaN made the same (the NaN payload is not part of the contract)."""
    return torch.where(torch.isnan(t), torch.full_like(t, float("nan")), t).view(torch.int16)


@needs_extension
def test_cuda_extension_fp16_vector_path_equals_reference():
    for out, exp in zip(_fp16_outputs(), _fp16_outputs(reference), strict=True):
        torch.testing.assert_close(out, exp, **TOL[torch.float16], equal_nan=True)
        assert torch.isfinite(out).sum() >= torch.isfinite(exp).sum()


@needs_extension
def test_cuda_extension_fp16_f16c_path_equals_scalar_path(tmp_path):
    """The F16C conversion (chosen at run time) and the scalar c10::Half one give the same bits:
    same rounding (nearest even), same saturation at +-65504, NaN kept."""
    from medgen.cuda import _C

    if not _C.cpu_f16c():
        pytest.skip("this CPU has no F16C: only the scalar path runs")
    script = (
        "import importlib.util, sys, torch\n"
        "from medgen.cuda import _C\n"
        "assert not _C.cpu_f16c()\n"
        f"spec = importlib.util.spec_from_file_location('t', {str(Path(__file__))!r})\n"
        "t = importlib.util.module_from_spec(spec); spec.loader.exec_module(t)\n"
        "torch.save(t._fp16_outputs(), sys.argv[1])\n"
    )
    path = tmp_path / "scalar.pt"
    env = {**os.environ, "MEDGEN_CUDA_CPU_NO_F16C": "1"}
    subprocess.run([sys.executable, "-c", script, str(path)], env=env, check=True, timeout=300)
    scalar = torch.load(path)
    vector = _fp16_outputs()
    assert len(scalar) == len(vector)
    for i, (v, s_) in enumerate(zip(vector, scalar, strict=True)):
        assert torch.equal(_fp16_bits(v), _fp16_bits(s_)), f"output {i} differs"


@pytest.mark.cuda
@needs_gpu
@needs_extension
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_extension_gpu_equals_cpu_reference(dtype):
    assert mc._extension.get_extension("cuda") is not None, "extension built without CUDA kernels"

    def on_cpu(name, *args, **kwargs):
        moved = [a.cpu() if isinstance(a, torch.Tensor) else a for a in args]
        kw = {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        return getattr(reference, name)(*moved, **kw)

    before = mc.backend_counts()
    _compare_all_ops(dtype, "cuda", on_cpu)
    after = mc.backend_counts()
    # every op on the device ran the CUDA kernels (the CPU-side expectations ran the reference)
    assert after["cuda"] > before["cuda"] and after["cpu"] == before["cpu"]


@pytest.mark.cuda
@needs_gpu
def test_cuda_extension_gpu_outputs_stay_on_device():
    x = torch.randn(2, 1, 4, 4, 4, device="cuda")
    assert mc.haar_dwt(x).device == x.device
    assert mc.last_backend() == "cuda"
    assert mc.ddim_step(x, x, 0.5, 0.6)[0].device == x.device
    assert mc.last_backend() == "cuda"


@pytest.fixture
def broken_extension(monkeypatch):
    def fail():
        raise ImportError("simulated: libc10_cuda.so: cannot open shared object file")

    monkeypatch.delenv(_extension.DISABLE_ENV, raising=False)
    monkeypatch.setattr(_extension, "_import_extension", fail)
    _extension._reset_for_tests()
    yield
    monkeypatch.undo()
    _extension._reset_for_tests()


def test_cuda_extension_missing_warns_exactly_once(broken_extension):
    x = torch.randn(2, 2, 4, 4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert mc.extension_available() is False
        out = [mc.ddim_step(x, x, 0.3, 0.5) for _ in range(3)]
        w = mc.haar_dwt(x)
        mc.haar_idwt(w)
        mc.euler_step(x, x, 1.0, 0.5)
    missing = [c for c in caught if issubclass(c.category, mc.ExtensionMissingWarning)]
    assert len(missing) == 1, [str(c.message) for c in caught]
    assert issubclass(mc.ExtensionMissingWarning, RuntimeWarning)
    msg = str(missing[0].message)
    assert "simulated: libc10_cuda.so" in msg and "reference" in msg
    # and the fallback computes the reference results (no crash, no silence)
    torch.testing.assert_close(out[0], reference.ddim_step(x, x, 0.3, 0.5))
    torch.testing.assert_close(w, reference.haar_dwt(x))


def test_cuda_extension_disable_env_uses_reference_silently(monkeypatch):
    monkeypatch.setenv(_extension.DISABLE_ENV, "1")
    x = torch.randn(2, 2, 4, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert mc.extension_available() is False
        torch.testing.assert_close(mc.haar_dwt(x), reference.haar_dwt(x))


def test_cuda_extension_available_is_bool():
    assert isinstance(mc.extension_available(), bool)
