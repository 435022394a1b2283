import ctypes
import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import edgestack.kernels


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (run on the GPU machine)")
    skip_trt = pytest.mark.skip(reason="needs TensorRT >= 10.3 (not installable in this workplace)")
    has_cuda = torch.cuda.is_available()
    has_trt = importlib.util.find_spec("tensorrt") is not None
    for item in items:
        if "tensorrt" in item.keywords and not has_trt:
            item.add_marker(skip_trt)
        elif "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def overflow_outputs(engine, monkeypatch):
    """`engine` runs as before, but every float value of its outputs is NaN, as an fp16 plan that overflowed
    gives them."""
    run = engine.backend.run

    def overflowed(feed):
        return [np.full_like(out, np.nan) if out.dtype.kind == "f" else out for out in run(feed)]

    monkeypatch.setattr(engine.backend, "run", overflowed)


# Bundles exported once per session through the full bundle path (both flavours, parity checked): an export
# takes 30-140 s on a 2-core CPU. Tests read them; a test that writes into a bundle works on its own copy.


@pytest.fixture(scope="session")
def mat_edge_bundle(tmp_path_factory):
    """mat-edge, random weights (seed 0)."""
    return _export(tmp_path_factory, "mat-edge")


@pytest.fixture(scope="session")
def pspnet_bundle(tmp_path_factory):
    """pspnet-r18, random weights (seed 0), parity at its default sizes."""
    return _export(tmp_path_factory, "pspnet-r18")


@pytest.fixture(scope="session")
def defectseg_bundle(tmp_path_factory):
    """defectseg-s with its shipped weights (the default checkpoint)."""
    return _export(tmp_path_factory, "defectseg-s", parity_sizes=[(64, 96)])


def _export(tmp_path_factory, config: str, **kwargs):
    from edgestack.export import export_bundle

    path, _ = export_bundle(config, out=tmp_path_factory.mktemp("bundle") / config, progress=lambda m: None, **kwargs)
    return path


def cuda_include_dir() -> Path | None:
    """Where cuda_fp16.h is: $CUDA_HOME, then beside nvcc, then /usr/local/cuda."""
    nvcc = shutil.which("nvcc")
    roots = [os.environ.get("CUDA_HOME"), Path(nvcc).resolve().parent.parent if nvcc else None, "/usr/local/cuda"]
    for root in filter(None, roots):
        if (Path(root) / "include" / "cuda_fp16.h").is_file():
            return Path(root) / "include"
    return None


def host_compiler() -> str | None:
    """The C++ compiler the emulated kernels are built with: $CXX, else g++."""
    return shutil.which(os.environ.get("CXX", "g++"))


# Set by test_kernels_sanitized.py for the run it starts, with the sanitizer's runtime preloaded: the emulated
# kernels are then built with -fsanitize=<its value>.
SANITIZER_ENV = "EDGESTACK_EMULATE_SANITIZER"


@pytest.fixture(scope="session")
def emulated_kernels(tmp_path_factory):
    """load(op): kernels/<op>/emulate.cpp (the op's device code on CPU threads, kernels/common/emulate.h)
    compiled for the host, through ctypes; skips where there is no C++20 compiler or no CUDA headers."""
    compiler, include = host_compiler(), cuda_include_dir()
    if not compiler or not include:
        pytest.skip("needs a C++20 compiler (g++ or $CXX) and the CUDA headers (cuda_fp16.h) to emulate the kernels")
    kernels = Path(edgestack.kernels.__file__).parent
    out = tmp_path_factory.mktemp("emulated")
    sanitizer = os.environ.get(SANITIZER_ENV)
    sanitize = [f"-fsanitize={sanitizer}", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"] if sanitizer else []

    def load(op: str) -> ctypes.CDLL:
        library = out / f"{op}_emulated.so"
        if not library.exists():
            subprocess.run(
                [compiler, "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", f"-I{include}", f"-I{kernels}",
                 *sanitize, str(kernels / op / "emulate.cpp"), "-o", str(library)],
                check=True, capture_output=True,
            )  # fmt: skip
        return ctypes.CDLL(str(library))

    return load
