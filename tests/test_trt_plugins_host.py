"""The TensorRT plugin library, driven on the host through its entry points as TensorRT and its ONNX parser
drive them (kernels/common/plugin_check.cpp): fields typed as the parser types ONNX attributes, output types and
shapes, format combinations, contract violations refused with a logged message, workspace, serialization round
trip. No GPU and no libnvinfer are needed; no kernel runs (the GPU tests cover the kernels).

CI builds one plugin library per TensorRT header set in ci-trt-<version>/ (.ci/build_kernels.sh), and one
with the host code under ASan and UBSan (ci-trt-v10.16-sanitized/); each is checked here with the check
program built against the same headers and flags.
"""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILDS = sorted(check.parent for folders in ("build*", "ci-trt-*")
                for check in ROOT.glob(f"{folders}/edgestack_trt_plugin_check"))


@pytest.mark.skipif(not BUILDS, reason="no plugin library built against TensorRT headers here "
                                       "(bash .ci/build_kernels.sh, or cmake with -DTensorRT_INCLUDE_DIR)")
@pytest.mark.parametrize("build", BUILDS, ids=[b.name for b in BUILDS])
def test_plugin_library_on_the_host(build):
    result = subprocess.run([str(build / "edgestack_trt_plugin_check"), str(build / "libedgestack_trt_plugins.so")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "EdgeWindowMaskedAttention" in result.stdout and "EdgePyramidPooling" in result.stdout
    assert "passed: 0 failed check(s)" in result.stdout


@pytest.mark.skipif(not BUILDS, reason="no plugin library built against TensorRT headers here")
@pytest.mark.parametrize("build", BUILDS, ids=[b.name for b in BUILDS])
def test_plugin_library_stands_alone(build):
    """A version-compatible plan embeds the plugin library alone, and Triton gets a copy: it needs no
    libedgestack_kernels.so, libnvinfer or libcudart at load time, and exports only TensorRT's two entry points
    (the kernels inside stay private, so another copy in the process cannot take their calls). The autoload
    library opens it by path and links nothing of ours."""
    plugins = build / "libedgestack_trt_plugins.so"
    assert not [n for n in _needed(plugins) if "edgestack" in n or "nvinfer" in n or "cudart.so" in n]
    assert _exported(plugins) == {"getCreators", "setLoggerFinder"}
    autoload = build / "libedgestack_trt_plugins_autoload.so"
    assert not [n for n in _needed(autoload) if "edgestack" in n or "nvinfer" in n]


@pytest.mark.skipif(not BUILDS, reason="no plugin library built against TensorRT headers here")
@pytest.mark.parametrize("build", BUILDS, ids=[b.name for b in BUILDS])
def test_autoload_outside_tensorrt_says_so_and_does_nothing(build):
    """Loaded where no libnvinfer is (not Triton's TensorRT backend), it registers nothing and says why."""
    autoload = build / "libedgestack_trt_plugins_autoload.so"
    result = subprocess.run([sys.executable, "-c", f"import ctypes; ctypes.CDLL({str(autoload)!r}); print('loaded')"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "loaded", result.stderr
    assert "libnvinfer.so.10 is not loaded in this process; nothing registered" in result.stderr


def _needed(library: Path) -> list[str]:
    dynamic = subprocess.run(["readelf", "-d", str(library)], capture_output=True, text=True, check=True).stdout
    return [line.split("[", 1)[1].rstrip("]") for line in dynamic.splitlines() if "(NEEDED)" in line]


def _exported(library: Path) -> set[str]:
    """Names the library defines for others (functions and data; not its versioned C++ runtime references)."""
    symbols = subprocess.run(["nm", "-D", "--defined-only", str(library)], capture_output=True, text=True,
                             check=True).stdout
    return {line.split()[-1] for line in symbols.splitlines() if line.split()[1] in "TDBRVWu"}
