"""Compiled kernels (CPU, and CUDA where a GPU exists) == pure-PyTorch reference; loader warning."""

from __future__ import annotations

import warnings

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


@needs_gpu
@needs_extension
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_extension_gpu_equals_cpu_reference(dtype):
    assert mc._extension.get_extension("cuda") is not None, "extension built without CUDA kernels"

    def on_cpu(name, *args, **kwargs):
        moved = [a.cpu() if isinstance(a, torch.Tensor) else a for a in args]
        kw = {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        return getattr(reference, name)(*moved, **kw)

    _compare_all_ops(dtype, "cuda", on_cpu)


@needs_gpu
def test_cuda_extension_gpu_outputs_stay_on_device():
    x = torch.randn(2, 1, 4, 4, 4, device="cuda")
    assert mc.haar_dwt(x).device == x.device
    assert mc.ddim_step(x, x, 0.5, 0.6)[0].device == x.device


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
