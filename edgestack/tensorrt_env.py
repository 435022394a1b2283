"""Finding TensorRT, cuda-python and our plugin library, and describing this GPU.

Shared by `edgestack build` (edgestack.export.tensorrt) and the tensorrt backend (edgestack.runtime.tensorrt),
so that export does not import the runtime to build a plan. Each import fails with an EdgestackError that says
what to install.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from edgestack.errors import EdgestackError

log = logging.getLogger("edgestack.runtime")

PLUGIN_LIBRARY = "libedgestack_trt_plugins.so"
# Registers PLUGIN_LIBRARY's plugins when dlopened, for hosts that load nothing else (Triton).
AUTOLOAD_LIBRARY = "libedgestack_trt_plugins_autoload.so"
PLUGIN_ENV = "EDGESTACK_TRT_PLUGINS"
MIN_TENSORRT = (10, 3)
# TensorRT 11 dropped the FP16/INT8 builder flags (always strongly typed): our fp16 and int8 plans need 10.x.
END_TENSORRT = (11, 0)
# cuda-python's major version must not be newer than the driver's CUDA (13.x needs a CUDA 13 driver).
INSTALL_CUDA_PYTHON = ('`pip install "cuda-python>=12.3,<13"` with a CUDA 12 driver (JetPack 6), '
                       '`pip install "cuda-python>=13,<14"` with a CUDA 13 driver')
INSTALL_TENSORRT = (
    "install TensorRT 10.x (>= 10.3): on Jetson it comes with JetPack 6.1+ (`sudo apt install nvidia-jetpack`, "
    'Python package python3-libnvinfer); elsewhere `pip install "tensorrt-cu12>=10.3,<11" "cuda-python>=12.3,<13"` '
    '(CUDA 12 driver) or `pip install "tensorrt-cu13>=10.13,<11" "cuda-python>=13,<14"` (CUDA 13 driver)'
)
# Compute capability a hardware-compatible (AMPERE_PLUS) plan needs.
AMPERE = (8, 0)


def import_tensorrt():
    """The tensorrt module, or an EdgestackError that says how to install it."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise EdgestackError(f"TensorRT is not installed ({exc}); {INSTALL_TENSORRT}") from None
    problem = tensorrt_version_problem(trt.__version__)
    if problem:
        raise EdgestackError(f"{problem}; {INSTALL_TENSORRT}")
    return trt


def tensorrt_version_problem(version: str) -> str | None:
    """Why this TensorRT version cannot build or run our plans, or None."""
    major_minor = version_tuple(version)[:2]
    if major_minor < MIN_TENSORRT:
        return f"TensorRT {version} is too old: edgestack's plugins use IPluginV3 (TensorRT >= 10.3)"
    if major_minor >= END_TENSORRT:
        return (f"TensorRT {version} is not supported: TensorRT 11 builds only strongly typed networks, and "
                "edgestack's fp16/int8 plans use TensorRT 10's precision flags")
    return None


@functools.cache
def import_cudart():
    """cuda-python's runtime API: `cuda.bindings.runtime` (cuda-python >= 12.6), else the older `cuda.cudart`."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            raise EdgestackError(f"the tensorrt backend needs cuda-python: {INSTALL_CUDA_PYTHON}") from None
    return cudart


def cuda_check(result: Any, what: str) -> Any:
    """Unpack a cuda-python return tuple `(err, *values)`; raise on any error code other than success."""
    cudart = import_cudart()
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        _, text = cudart.cudaGetErrorString(err)
        text = text.decode() if isinstance(text, bytes) else text
        raise EdgestackError(f"CUDA call {what} failed: {getattr(err, 'name', err)} ({text})")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def version_tuple(version: str) -> tuple[int, ...]:
    """Major, minor, patch: what TensorRT's own "expecting library version" check on a plan compares."""
    return tuple(int(part) for part in version.split(".")[:3] if part.isdigit())


def plugin_library_candidates() -> list[Path]:
    """Where the CMake build puts the plugin library, searched as kernels/loader.py searches for the kernels:
    build/ and build-*/ of this checkout, then the kernels package folder."""
    from edgestack import kernels

    package = Path(kernels.__file__).resolve().parent
    root = package.parent
    return [root / "build" / PLUGIN_LIBRARY, *sorted(root.glob(f"build-*/{PLUGIN_LIBRARY}")), package / PLUGIN_LIBRARY]


def find_plugin_library() -> Path:
    """Our TensorRT plugin library: $EDGESTACK_TRT_PLUGINS if set, else the first one the CMake build left."""
    override = os.environ.get(PLUGIN_ENV)
    if override:
        path = Path(override)
        if not path.is_file():
            raise EdgestackError(f"{PLUGIN_ENV}={override} does not exist; point it at {PLUGIN_LIBRARY} or unset it")
        return path
    candidates = plugin_library_candidates()
    for path in candidates:
        if path.is_file():
            return path
    raise EdgestackError(
        f"TensorRT plugin library {PLUGIN_LIBRARY} not found (looked in build/ and build-*/ of this checkout and "
        f"{candidates[-1].parent}); build it with `cmake -S . -B build && cmake --build build` on a machine with "
        f"TensorRT headers, or set {PLUGIN_ENV}=/path/to/{PLUGIN_LIBRARY}"
    )


_loaded_plugin_libraries: set[str] = set()


def registered_creators(registry: Any) -> list[tuple[str, str]]:
    """(name, version) of every plugin creator in a TensorRT plugin registry."""
    creators = getattr(registry, "all_creators", None) or registry.plugin_creator_list
    return [(c.name, c.plugin_version) for c in creators]


def load_plugins(registry: Any, path: Path, needed: Iterable[str]) -> None:
    """Load the plugin library into a TensorRT plugin registry once per process (a second load re-registers).

    TensorRT refuses a library any of whose plugins is registered already: by its autoload, or by a copy of the
    library at another path. When that copy holds every plugin in `needed`, it is used, with a warning."""
    key = str(path.resolve())
    if key in _loaded_plugin_libraries:
        return
    if not registry.load_library(key):
        registered = {name for name, _ in registered_creators(registry)}
        if not set(needed) <= registered:
            raise EdgestackError(
                f"TensorRT could not load the plugin library {path} (see the TensorRT log above); rebuild it "
                f"against this TensorRT version, or, if another copy of {PLUGIN_LIBRARY} is loaded too (TensorRT's "
                f"plugin autoload, another {PLUGIN_ENV}), load only one"
            )
        log.warning("plugins %s are registered already (another copy of %s, or TensorRT's autoload); using those, "
                    "not %s", ", ".join(sorted(needed)), PLUGIN_LIBRARY, path)
    _loaded_plugin_libraries.add(key)


@functools.cache
def trt_logger():
    """One TensorRT logger per process, as TensorRT expects; also registers TensorRT's own plugins
    (EfficientNMS_TRT of the detector's plugins flavour) before any parse or deserialization."""
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    trt.init_libnvinfer_plugins(logger, "")
    return logger


class DriverTooOldError(EdgestackError):
    """cuda-python's bindings need a newer CUDA driver than the one installed."""


def gpu_environment() -> dict[str, Any]:
    """GPU name, compute capability and integrated (Jetson) flag of the current device, and the CUDA version its
    driver supports, through cuda-python."""
    cudart = import_cudart()
    try:
        driver = cuda_check(cudart.cudaDriverGetVersion(), "cudaDriverGetVersion")  # 12060 = CUDA 12.6, 0: none
        err, count = cudart.cudaGetDeviceCount()
    except RuntimeError as exc:  # cuda-python 12 raises where libcuda.so.1 is missing (13 returns an error code)
        raise EdgestackError(f"no NVIDIA driver is usable here ({exc}); TensorRT needs an NVIDIA GPU and driver — "
                             "use backend='onnxruntime' on this machine") from None
    driver_cuda = f"{driver // 1000}.{driver % 1000 // 10}"
    # cudaErrorInsufficientDriver also means "no driver at all"; only with a driver is cuda-python too new for it.
    if driver and err == cudart.cudaError_t.cudaErrorInsufficientDriver:
        raise DriverTooOldError(
            f"this cuda-python needs a newer driver than this one (CUDA {driver_cuda}); "
            f"install the cuda-python that matches the driver: {INSTALL_CUDA_PYTHON}"
        )
    if err != cudart.cudaError_t.cudaSuccess or count == 0:
        raise EdgestackError(
            f"no CUDA GPU is usable here (cudaGetDeviceCount: {err}); TensorRT needs an NVIDIA GPU and driver — "
            "use backend='onnxruntime' on this machine"
        )
    device = cuda_check(cudart.cudaGetDevice(), "cudaGetDevice")
    props = cuda_check(cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    return {
        "gpu": name.rstrip("\x00").strip(),
        "compute_capability": f"{props.major}.{props.minor}",
        "integrated": bool(props.integrated),
        "driver_cuda": driver_cuda,
    }


def current_environment() -> dict[str, Any]:
    """TensorRT version and gpu_environment(): what a plan is checked against."""
    return {"tensorrt": import_tensorrt().__version__, **gpu_environment()}


def hardware_compatible_problem(env: dict[str, Any]) -> str | None:
    """Why a hardware-compatible (AMPERE_PLUS) plan cannot be built or run on this GPU, or None."""
    if env.get("integrated"):
        return f"hardware-compatible plans are not supported on integrated GPUs (JetPack); {env['gpu']} is one"
    if tuple(int(v) for v in env["compute_capability"].split(".")) < AMPERE:
        return (f"hardware-compatible plans need an Ampere or newer GPU (compute capability >= 8.0); {env['gpu']} "
                f"has {env['compute_capability']}")
    return None
