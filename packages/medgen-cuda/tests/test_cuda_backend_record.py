"""Which implementation ran: ``last_backend()`` / ``backend_counts()``, and the CUDA kernels on a
device at sizes spanning many thread blocks, with ``out=`` and non-contiguous inputs.

The CPU tests prove the record tells the compiled CPU kernels from the PyTorch fallback (a GPU
test passing on the fallback would otherwise look the same as one that ran the kernels). The
GPU tests (marked ``cuda``; they skip without a device, run by ``nox -s gpu``) assert that every
op call was counted under ``"cuda"``: the CUDA kernels, not the reference, produced the result.
"""

from __future__ import annotations

import pytest
import torch

import medgen.cuda as mc
from medgen.cuda import reference

needs_extension = pytest.mark.skipif(
    not mc.extension_available(), reason="medgen.cuda._C is not built/importable"
)
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _ops(x: torch.Tensor) -> dict:
    """Every public op on ``x`` (5 op calls: dwt, idwt, ddim, ddpm, euler)."""
    w = mc.haar_dwt(x)
    return {
        "dwt": w,
        "idwt": mc.haar_idwt(w),
        "ddim": mc.ddim_step(x, x, 0.3, 0.45),
        "ddpm": mc.ddpm_step(x, x, 0.3, 0.45, noise=torch.zeros_like(x)),
        "euler": mc.euler_step(x, x, 0.5, 0.4),
    }


def _delta(before: dict, after: dict) -> dict:
    return {k: after[k] - before[k] for k in before if after[k] != before[k]}


def test_cuda_backend_record_starts_none_or_known():
    assert mc.last_backend() in (None, "cuda", "cpu", "reference")
    counts = mc.backend_counts()
    assert set(counts) == {"cuda", "cpu", "reference"}
    counts["cpu"] += 1000  # a copy: the module's counts are not changed through it
    assert mc.backend_counts()["cpu"] != counts["cpu"]


@needs_extension
def test_cuda_backend_record_cpu_kernels():
    x = torch.randn(2, 3, 8, 8)
    before = mc.backend_counts()
    _ops(x)
    assert _delta(before, mc.backend_counts()) == {"cpu": 5}
    assert mc.last_backend() == "cpu"


def test_cuda_backend_record_reference_when_disabled(monkeypatch):
    monkeypatch.setenv("MEDGEN_CUDA_DISABLE_EXTENSION", "1")
    x = torch.randn(2, 3, 8, 8)
    before = mc.backend_counts()
    _ops(x)
    assert _delta(before, mc.backend_counts()) == {"reference": 5}
    assert mc.last_backend() == "reference"


@needs_extension
def test_cuda_backend_record_follows_each_call(monkeypatch):
    """The record is per call: kernel, then fallback, then kernel again."""
    x = torch.randn(1, 1, 4, 4)
    mc.haar_dwt(x)
    assert mc.last_backend() == "cpu"
    monkeypatch.setenv("MEDGEN_CUDA_DISABLE_EXTENSION", "1")
    mc.haar_dwt(x, out=torch.empty(1, 4, 2, 2))
    assert mc.last_backend() == "reference"
    monkeypatch.delenv("MEDGEN_CUDA_DISABLE_EXTENSION")
    mc.euler_step(x, x, 0.2, 0.1)
    assert mc.last_backend() == "cpu"


@needs_extension
def test_cuda_backend_record_autograd_step_is_reference():
    """A step differentiated through uses the (differentiable) reference, and says so."""
    x = torch.randn(2, 1, 4, 4, requires_grad=True)
    before = mc.backend_counts()
    mc.ddim_step(x, x.detach(), 0.3, 0.45)[0].sum().backward()
    assert _delta(before, mc.backend_counts()) == {"reference": 1}


def test_cuda_backend_record_failed_op_counts_nothing():
    """A call rejected before any implementation ran leaves the counts alone."""
    before = mc.backend_counts()
    with pytest.raises(ValueError):
        mc.haar_dwt(torch.randn(1, 1, 5, 4))
    with pytest.raises(ValueError):
        mc.haar_dwt(torch.randn(1, 1, 4, 4), out=torch.empty(1, 4, 2, 3))
    assert mc.backend_counts() == before


# --- on a CUDA device -------------------------------------------------------------------------
# The Haar kernels run 256 threads per block, one thread per 2x2 (2x2x2) input block: these
# shapes need 7 to 36 thread blocks, the first with a partial last block (1785 positions).
MANY_BLOCKS = [(1, 3, 34, 70), (2, 3, 64, 96), (2, 2, 16, 24, 20), (1, 1, 6, 130, 34)]
TOL = {torch.float64: dict(atol=1e-12, rtol=0), torch.float32: dict(atol=2e-6, rtol=2e-6)}


def _cuda_only(before: dict, calls: int) -> None:
    assert _delta(before, mc.backend_counts()) == {"cuda": calls}, "the CUDA kernels did not run"
    assert mc.last_backend() == "cuda"


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("shape", MANY_BLOCKS, ids=lambda s: "x".join(map(str, s)))
def test_cuda_backend_gpu_haar_many_blocks(shape, dtype):
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x = x.to(dtype)
    xd = x.cuda()
    before = mc.backend_counts()
    w = mc.haar_dwt(xd)
    back = mc.haar_idwt(w)
    _cuda_only(before, 2)
    torch.testing.assert_close(w.cpu(), reference.haar_dwt(x), **TOL[dtype])
    torch.testing.assert_close(back.cpu(), x, **TOL[dtype])


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("shape", MANY_BLOCKS, ids=lambda s: "x".join(map(str, s)))
def test_cuda_backend_gpu_haar_out(shape):
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    xd = x.cuda()
    w_out = torch.full(reference.haar_dwt(x).shape, float("nan"), dtype=x.dtype, device="cuda")
    x_out = torch.full_like(xd, float("nan"))
    before = mc.backend_counts()
    assert mc.haar_dwt(xd, out=w_out) is w_out
    assert mc.haar_idwt(w_out, out=x_out) is x_out
    _cuda_only(before, 2)
    torch.testing.assert_close(w_out.cpu(), reference.haar_dwt(x), **TOL[torch.float64])
    torch.testing.assert_close(x_out.cpu(), x, **TOL[torch.float64])


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("shape", MANY_BLOCKS, ids=lambda s: "x".join(map(str, s)))
def test_cuda_backend_gpu_haar_noncontiguous(shape):
    """Transposed (last two axes) and strided (every other column of a doubled one) inputs."""
    base = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    t = base.transpose(-1, -2).cuda()  # a view with swapped strides
    doubled = torch.stack([base, -base], dim=-1).flatten(-2).cuda()  # (..., 2W) interleaved
    s = doubled[..., ::2]  # == base, stride 2 along W
    assert not t.is_contiguous() and not s.is_contiguous()
    before = mc.backend_counts()
    wt = mc.haar_dwt(t)
    ws = mc.haar_dwt(s)
    back = mc.haar_idwt(ws.transpose(-1, -2))  # non-contiguous input to the inverse too
    _cuda_only(before, 3)
    tol = TOL[torch.float64]
    torch.testing.assert_close(
        wt.cpu(), reference.haar_dwt(base.transpose(-1, -2).contiguous()), **tol
    )
    torch.testing.assert_close(ws.cpu(), reference.haar_dwt(base), **tol)
    expect = reference.haar_idwt(reference.haar_dwt(base).transpose(-1, -2).contiguous())
    torch.testing.assert_close(back.cpu(), expect, **tol)


@pytest.mark.cuda
@needs_gpu
def test_cuda_backend_gpu_steps_run_kernels():
    x = torch.randn(4, 3, 64, 96, generator=torch.Generator().manual_seed(3))
    xd = x.cuda()
    before = mc.backend_counts()
    got = _ops(xd)
    _cuda_only(before, 5)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDGEN_CUDA_DISABLE_EXTENSION", "1")
        want = _ops(x)
    for k in got:
        g, e = (got[k], want[k]) if isinstance(got[k], tuple) else ((got[k],), (want[k],))
        for g_, e_ in zip(g, e, strict=True):
            torch.testing.assert_close(g_.cpu(), e_, atol=1e-5, rtol=1e-5)
