"""Sessions for the MedGen monorepo.

Every session installs the pinned CPU torch first (constraints.txt), then the MedGen
packages from their local paths. ``nox -s tests`` is the CI entry point.
"""

from __future__ import annotations

import os
from pathlib import Path

import nox

ROOT = Path(__file__).parent
CONSTRAINTS = str(ROOT / "constraints.txt")
PACKAGES = {
    "cuda": ROOT / "packages" / "medgen-cuda",
    "data": ROOT / "packages" / "medgen-data",
    "models": ROOT / "packages" / "medgen-models",
    "train": ROOT / "packages" / "medgen-train",
}
# Which MedGen packages each package needs installed beside it (its declared dependencies).
NEEDS = {
    "cuda": ("cuda",),
    "data": ("data",),
    "models": ("cuda", "models"),
    "train": ("cuda", "data", "models", "train"),
}
TEST_EXTRAS = (
    "pytest>=8",
    "scikit-image",
    "PyWavelets",
    "diffusers>=0.30",
    "pyyaml",
    "nilearn",
    "torchmetrics",
    "hypothesis",
)
# The dataset-layout tests' independent references (BIDS reading, nnU-Net's own fingerprint).
LAYOUT_EXTRAS = ("pybids", "nnunetv2")

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["tests"]


def install_torch(session: nox.Session, torch_spec: str = "torch==2.13.0") -> None:
    """Install torch before anything else, so nothing resolves a CUDA wheel by accident."""
    constraints = ("-c", CONSTRAINTS) if torch_spec == "torch==2.13.0" else ()
    session.install(*constraints, torch_spec)


def install_medgen(session: nox.Session, *names: str, constraints: bool = True) -> None:
    """Install MedGen packages from local paths; medgen-cuda compiles against the venv's torch."""
    pin = ("-c", CONSTRAINTS) if constraints else ()
    if "cuda" in names:
        session.install(*pin, "setuptools>=69", "wheel", "ninja")
        session.install(*pin, "--no-build-isolation", str(PACKAGES["cuda"]))
    rest = [str(PACKAGES[n]) for n in names if n != "cuda"]
    if rest:
        session.install(*pin, *rest)


def install_test_extras(session: nox.Session, layouts: bool = True) -> None:
    """The test dependencies; with ``layouts``, nnunetv2 and pybids too, then torchvision out.

    nnunetv2 pulls torchvision (through timm), and the registry's torchvision wheel is a CUDA
    build whose operators do not register beside the CPU torch wheel: ``import torchvision``
    raises, and diffusers (which imports it when present) with it. nnU-Net's fingerprint and
    planner, all the tests use of it, never import torchvision, so it is removed again."""
    session.install("-c", CONSTRAINTS, *TEST_EXTRAS, *(LAYOUT_EXTRAS if layouts else ()))
    if layouts:
        session.run("python", "-m", "pip", "uninstall", "-y", "-q", "torchvision")


def pytest_args(session: nox.Session, *paths: str) -> list[str]:
    return ["pytest", *paths, *session.posargs]


@nox.session
def tests(session: nox.Session) -> None:
    """Every package's tests plus the root cross-package tests (the CI entry point)."""
    install_torch(session)
    install_medgen(session, "cuda", "data", "models", "train")
    install_test_extras(session)
    paths = [str(p / "tests") for p in PACKAGES.values()] + [str(ROOT / "tests")]
    session.run(*pytest_args(session, *paths), env={"MEDGEN_QUIET": "1"})


def _package_session(name: str):
    def run(session: nox.Session) -> None:
        install_torch(session)
        install_medgen(session, *NEEDS[name])
        install_test_extras(session, layouts=name in ("data", "train"))
        session.run(*pytest_args(session, str(PACKAGES[name] / "tests")))

    run.__doc__ = f"Tests of medgen-{name} alone, installed with only its declared dependencies."
    return run


data = nox.session(name="data")(_package_session("data"))
models = nox.session(name="models")(_package_session("models"))
train = nox.session(name="train")(_package_session("train"))
CUDA_ARCHS = ("80", "90", "100", "120")


@nox.session(name="cuda")
def cuda(session: nox.Session) -> None:
    """medgen-cuda: CPU extension build + tests, every .cu through plain nvcc, full CUDA build.

    1. builds the CPU extension against torch 2.13.0 (constraints) and runs its tests;
    2. compiles every csrc/cuda/*.cu with plain nvcc for sm_80, sm_90, sm_100 and sm_120 (no GPU
       and no torch headers needed);
    3. notifies ``cuda-full``: the full CUDA extension against torch==2.14.1 in its own venv.
    """
    import shutil  # local imports: this session is self-contained

    install_torch(session)
    install_medgen(session, "cuda")
    session.install("-c", CONSTRAINTS, *TEST_EXTRAS, "monai")
    session.run(
        "python", "-c", "import medgen.cuda as m; assert m.extension_available(), 'no extension'"
    )
    session.run(*pytest_args(session, str(PACKAGES["cuda"] / "tests")))

    nvcc = shutil.which("nvcc") or next(
        (str(p) for p in sorted(Path("/usr/local").glob("cuda*/bin/nvcc")) if p.is_file()), None
    )
    if nvcc is None:
        session.error("nvcc not found: the CUDA sources must compile in CI")
    csrc = PACKAGES["cuda"] / "csrc"
    out = Path(session.create_tmp()) / "nvcc"
    out.mkdir(exist_ok=True)
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in CUDA_ARCHS]
    for cu in sorted((csrc / "cuda").glob("*.cu")):
        obj = str(out / (cu.stem + ".o"))
        session.run(nvcc, "-std=c++17", "-O3", "-I", str(csrc), *gencode, "-c", str(cu), "-o", obj,
                    external=True)  # fmt: skip
    session.notify("cuda-full")


@nox.session(name="cuda-full")
def cuda_full(session: nox.Session) -> None:
    """The full CUDA extension against torch==2.14.1 (CUDA 13), imported and CPU-tested."""
    install_torch(session, "torch==2.14.1")
    install_medgen(session, "cuda", constraints=False)
    session.install(*TEST_EXTRAS, "monai")
    session.run(
        "python",
        "-c",
        "import torch, medgen.cuda as m, medgen.cuda._C as C; "
        "assert torch.version.cuda and C.cuda_compiled(), 'CUDA kernels not built'; "
        "print('medgen-cuda CUDA build OK, torch', torch.__version__, 'cuda', torch.version.cuda)",
    )
    session.run(*pytest_args(session, str(PACKAGES["cuda"] / "tests")))


@nox.session
def gpu(session: nox.Session) -> None:
    """Every CUDA test of every package, on a GPU node, against the CUDA kernels.

    Installs torch==2.14.1 (the registry's CUDA 13 wheel, not the CPU pin), builds medgen-cuda
    against it (its setup.py defaults CUDA_HOME to the real toolkit and TORCH_CUDA_ARCH_LIST to
    8.0;9.0;10.0;12.0+PTX: DESIGN.md section 5), refuses to go on unless a device is visible and
    the extension has CUDA kernels, then runs the tests marked ``cuda`` of all four packages and
    the root tests (``pytest -m cuda``). Those tests assert with ``medgen.cuda.backend_counts()``
    / ``last_backend()`` that the CUDA kernels, not the PyTorch fallback, produced their results.
    Not in CI (no device there); extra arguments go to pytest."""
    install_torch(session, "torch==2.14.1")
    install_medgen(session, "cuda", constraints=False)
    install_medgen(session, "data", "models", "train", constraints=False)
    session.install(*TEST_EXTRAS, "monai")
    session.run(
        "python",
        "-c",
        "import torch, medgen.cuda as m, medgen.cuda._C as C; "
        "assert torch.version.cuda and C.cuda_compiled(), 'CUDA kernels not built'; "
        "assert torch.cuda.is_available(), 'no CUDA device visible: run this on a GPU node'; "
        "print('GPU', torch.cuda.get_device_name(0), 'torch', torch.__version__)",
    )
    paths = [str(p / "tests") for p in PACKAGES.values()] + [str(ROOT / "tests")]
    session.run("pytest", "-m", "cuda", "-rs", *paths, *session.posargs, env={"MEDGEN_QUIET": "1"})


@nox.session(venv_backend="none")
def mutants(session: nox.Session) -> None:
    """Mutation testing (mutmut 3) of the numeric and safety modules; slow, outside CI.

    Runs benchmarks/run_mutants.py in the current environment (an editable dev install, e.g.
    ``pip install -e`` of the four packages, plus mutmut and the test extras): each module is
    mutated in a scratch copy of its package, never in the source tree, against the test files
    mapped to it; the score per module goes to bench/results/<timestamp>_mutants.{json,md}.
    ``nox -s mutants -- train/ema data/zbin`` picks modules (``-- --list`` shows them)."""
    session.run("python", "-m", "pip", "install", "-q", "mutmut>=3.8,<4")
    session.run("python", str(ROOT / "benchmarks" / "run_mutants.py"), *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check + format check over the whole tree."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def quickstart(session: nox.Session) -> None:
    """The main job: JS-DDPM-style joint image+mask diffusion on MNI152 slices (~10 CPU-min)."""
    install_torch(session)
    install_medgen(session, "cuda", "data", "models", "train")
    out = os.environ.get("MEDGEN_RUN_DIR", str(ROOT / "runs" / "quickstart"))
    session.run("medgen-train", "quickstart", "--out", out, *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks, each against its peers measured in the same run; JSON + Markdown written
    to bench/results/<timestamp>_<name>.*: kernels (medgen-cuda vs PyWavelets, ptwt, WDM-style
    slicing, diffusers, MONAI), DICOM series reading (vs SimpleITK, pydicom), cache building,
    the training engine's step vs a bare loop, training-data loading (LoaderBatches vs MONAI's
    PersistentDataset, and the quickstart step fed from memory vs by the loader), and DDP on
    2 gloo ranks vs the hand-written all-reduce it replaced, and the denoising networks
    (ConditionedUNet, DiT, HDiT, U-ViT at a matched size vs MONAI's DiffusionModelUNet, 2D and
    3D, plus DiT vs HDiT step time over token counts), and decoding a 3D latent to 128^3 unsplit
    vs chunked vs MONAI's sliding window (peak RSS, time), and FID / KID on 10,000 x 2048
    features vs torchmetrics and the scipy sqrtm route plus feature-extraction throughput
    (bench_fid.py). Run it on an otherwise idle
    machine. Extra arguments go to bench_cuda.py."""
    install_torch(session)
    install_medgen(session, "cuda", "data", "models", "train")  # brings MONAI and nilearn
    session.install("-c", CONSTRAINTS, "PyWavelets", "ptwt", "diffusers>=0.30", "torchmetrics>=1.0")
    out = str(ROOT / "bench" / "results")
    bench = ROOT / "benchmarks"
    session.run("python", str(bench / "bench_cuda.py"), "--out", out, *session.posargs)
    session.run("python", str(bench / "bench_data.py"), "--out", out)
    session.run("python", str(bench / "bench_cache.py"), "--out", out)
    session.run("python", str(bench / "bench_engine.py"), "--out", out)
    session.run("python", str(bench / "bench_loader.py"), "--out", out)
    session.run("python", str(bench / "bench_ddp.py"), "--out", out)
    session.run("python", str(bench / "bench_networks.py"), "--out", out)
    session.run("python", str(bench / "bench_fid.py"), "--out", out)
    session.run("python", str(bench / "bench_autoencoder_decode.py"), "--out", out)
    session.run("python", str(bench / "bench_autoencoder_decode.py"), "--out", out, "--norm", "none",
                "--chunks", "4:auto", "--no-sliding")  # fmt: skip
