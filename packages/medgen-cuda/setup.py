"""Build script for the medgen.cuda._C extension.

Install AFTER torch, without build isolation (the extension must be compiled against the torch of
the environment that imports it):

    MAX_JOBS=1 pip install --no-build-isolation packages/medgen-cuda

What gets built:
  * always: the C++ CPU kernels (OpenMP via ATen's parallel_for) and the pybind11 binding;
  * additionally the CUDA kernels when torch is a CUDA build (``torch.version.cuda``), a CUDA
    toolkit with ``bin/nvcc`` is found, and ``MEDGEN_CUDA_FORCE_CPU`` is not ``1``.

CUDA_HOME and TORCH_CUDA_ARCH_LIST are defaulted here BEFORE ``torch.utils.cpp_extension`` is
imported (it reads them at import time): the ``nvcc`` on PATH may be a wrapper script, which makes
torch guess the toolkit directory wrongly, and with no GPU present torch cannot infer an arch list.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).parent.resolve()
DEFAULT_ARCH_LIST = "8.0;9.0;10.0;12.0+PTX"


def _is_toolkit(path: Path) -> bool:
    return (path / "bin" / "nvcc").is_file() and (path / "include" / "cuda_runtime_api.h").is_file()


def _find_cuda_home() -> str | None:
    """The real CUDA toolkit directory, resolving nvcc symlinks and wrapper scripts."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        value = os.environ.get(var)
        if value and _is_toolkit(Path(value)):
            return value
    candidates: list[Path] = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        real = Path(nvcc).resolve()
        candidates.append(real.parent.parent)
        try:  # a wrapper script: look for the absolute path of the nvcc it executes
            if real.stat().st_size < 65536:
                text = real.read_text(errors="ignore")
                candidates += [Path(m) for m in re.findall(r"(/[^\s\"'$;]+)/bin/nvcc\b", text)]
        except OSError:
            pass
    candidates.append(Path("/usr/local/cuda"))
    candidates += sorted(Path("/usr/local").glob("cuda-*"), reverse=True)
    for cand in candidates:
        if _is_toolkit(cand):
            return str(cand.resolve())
    return None


CUDA_HOME = _find_cuda_home()
FORCE_CPU = os.environ.get("MEDGEN_CUDA_FORCE_CPU", "0") == "1"
if CUDA_HOME and not FORCE_CPU:
    os.environ["CUDA_HOME"] = CUDA_HOME
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCH_LIST)

import torch  # noqa: E402  (after the environment defaults above)
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

WITH_CUDA = not FORCE_CPU and torch.version.cuda is not None and CUDA_HOME is not None


def _rel(paths) -> list[str]:
    return sorted(str(p.relative_to(HERE)) for p in paths)


cpp_sources = _rel((HERE / "csrc").glob("*.cpp")) + _rel((HERE / "csrc" / "cpu").glob("*.cpp"))
# No -std flag: torch.utils.cpp_extension picks the standard its headers need (C++20 for
# torch >= 2.14, C++17 before).
cxx_flags = ["-O3", "-fopenmp"]
common = dict(
    name="medgen.cuda._C",
    include_dirs=[str(HERE / "csrc")],
    extra_link_args=["-fopenmp"],
)
if WITH_CUDA:
    print(
        f"medgen-cuda: building CPU + CUDA kernels (CUDA_HOME={CUDA_HOME}, "
        f"TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST')})"
    )
    ext = CUDAExtension(
        sources=cpp_sources + _rel((HERE / "csrc" / "cuda").glob("*.cu")),
        define_macros=[("MEDGEN_WITH_CUDA", "1")],
        extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3"]},
        **common,
    )
else:
    reason = (
        "MEDGEN_CUDA_FORCE_CPU=1"
        if FORCE_CPU
        else "torch is a CPU build"
        if torch.version.cuda is None
        else "no CUDA toolkit (bin/nvcc + include/cuda_runtime_api.h) found"
    )
    print(f"medgen-cuda: building the CPU extension only ({reason})")
    ext = CppExtension(sources=cpp_sources, extra_compile_args={"cxx": cxx_flags}, **common)

setup(ext_modules=[ext], cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)})
