"""`edgestack doctor`: what this machine can run, one finding per component, each missing or broken one with
the fix. Nothing is built or loaded onto a GPU: it imports, queries versions and devices, and reads meta.json.

A finding is "ok", "missing" (not installed or not built: that path is unavailable, the others still work) or
"problem" (installed but unusable as it is: a version we do not support, a driver older than its bindings, a
plan that cannot run here, a tampered bundle).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgestack import bundle as bundle_format
from edgestack.errors import EdgestackError

JETSON_RELEASE = Path("/etc/nv_tegra_release")


@dataclass
class Finding:
    component: str
    status: str  # ok | missing | problem
    detail: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def findings(bundle: str | Path | None = None) -> list[Finding]:
    """Every component in the order a deployment needs them; with `bundle`, what it can run on here."""
    gpu, tensorrt = _gpu(), _tensorrt()
    found = [_machine(), _torch(), _onnxruntime(), _kernels(), gpu, tensorrt, _plugins()]
    if bundle is not None:
        from edgestack.tensorrt_env import current_environment

        env = current_environment() if gpu.status == tensorrt.status == "ok" else None
        found += _bundle(Path(bundle), env)
    return found


def _machine() -> Finding:
    detail = f"Python {platform.python_version()} on {platform.system()} {platform.machine()}"
    if JETSON_RELEASE.is_file():
        detail += f", Jetson ({JETSON_RELEASE.read_text(errors='replace').splitlines()[0].lstrip('# ').strip()})"
    return Finding("machine", "ok", detail)


def _torch() -> Finding:
    import torch

    if torch.cuda.is_available():
        return Finding("torch", "ok", f"{torch.__version__}, CUDA {torch.version.cuda}, "
                                      f"{torch.cuda.get_device_name()}")
    return Finding("torch", "ok", f"{torch.__version__}, CPU only (no CUDA device visible to torch)")


def _onnxruntime() -> Finding:
    import onnxruntime as ort

    providers = ort.get_available_providers()
    detail = f"{ort.__version__}, providers {', '.join(providers)}"
    if "CUDAExecutionProvider" not in providers:
        detail += " (CPU only: onnxruntime-gpu gives the CUDA provider)"
    return Finding("onnxruntime", "ok", detail)


def _kernels() -> Finding:
    from edgestack.kernels import loader

    try:
        library = loader.library()
    except EdgestackError as exc:
        return Finding("CUDA kernels", "problem", str(exc))
    if library is None:
        return Finding("CUDA kernels", "missing", f"{loader.LIBRARY_NAME} not built: the torch backend runs the "
                       "PyTorch references (build: cmake -S . -B build && cmake --build build)")
    path = next(p for p in loader.candidates() if p.is_file())
    import torch

    if not torch.cuda.is_available():  # built, but they run on CUDA tensors only
        return Finding("CUDA kernels", "missing", f"{path} is built, but torch sees no CUDA device, so the torch "
                       "backend runs the PyTorch references")
    return Finding("CUDA kernels", "ok", str(path))


def _distribution_version(*names: str) -> str | None:
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _gpu() -> Finding:
    from edgestack.tensorrt_env import INSTALL_CUDA_PYTHON, DriverTooOldError, gpu_environment

    bindings = _distribution_version("cuda-bindings", "cuda-python")
    if bindings is None:
        return Finding("GPU (cuda-python)", "missing", f"cuda-python is not installed (the tensorrt backend "
                                                       f"needs it): {INSTALL_CUDA_PYTHON}")
    try:
        env = gpu_environment()
    except DriverTooOldError as exc:
        return Finding("GPU (cuda-python)", "problem", f"cuda-python {bindings}: {exc}")
    except EdgestackError as exc:
        return Finding("GPU (cuda-python)", "missing", f"cuda-python {bindings}: {exc}")
    return Finding("GPU (cuda-python)", "ok", f"{env['gpu']}, compute capability {env['compute_capability']}"
                                              f"{', integrated' if env['integrated'] else ''}; driver CUDA "
                                              f"{env['driver_cuda']}, cuda-python {bindings}")


def _tensorrt() -> Finding:
    from edgestack.tensorrt_env import INSTALL_TENSORRT, import_tensorrt

    if importlib.util.find_spec("tensorrt") is None:
        return Finding("TensorRT", "missing", f"not installed; {INSTALL_TENSORRT}")
    try:
        return Finding("TensorRT", "ok", import_tensorrt().__version__)
    except EdgestackError as exc:
        return Finding("TensorRT", "problem", str(exc))


def _plugins() -> Finding:
    from edgestack.tensorrt_env import AUTOLOAD_LIBRARY, PLUGIN_ENV, find_plugin_library

    try:
        path = find_plugin_library()
    except EdgestackError as exc:  # a wrong $EDGESTACK_TRT_PLUGINS is a problem; no build at all is missing
        return Finding("TensorRT plugins", "problem" if os.environ.get(PLUGIN_ENV) else "missing", str(exc))
    autoload = path.parent / AUTOLOAD_LIBRARY
    return Finding("TensorRT plugins", "ok", f"{path}" + ("" if autoload.is_file() else
                                                         f" (no {AUTOLOAD_LIBRARY} beside it: Triton cannot use it)"))


def _bundle(bundle: Path, env: dict[str, Any] | None) -> list[Finding]:
    """The bundle's files, and whether its plan runs in `env` (current_environment; None: no TensorRT or GPU)."""
    from edgestack.runtime.tensorrt import plan_problem

    try:
        meta = bundle_format.read_meta(bundle, verify=True)
    except EdgestackError as exc:
        return [Finding(f"bundle {bundle}", "problem", str(exc))]
    model = meta["model"]
    if "graphs" in meta:  # several graphs (vglaw: text + vision): each sub-bundle on its own
        subs = [_bundle(bundle / graph["folder"], env) for graph in meta["graphs"].values()]
        return [Finding(f"bundle {bundle}", "ok", f"{model['config']}, {len(subs)} graphs")] + sum(subs, [])
    found = [Finding(f"bundle {bundle}", "ok", f"{model['config']} ({model['task']}), every file's sha256 matches")]
    plan = f"plan {bundle / bundle_format.PLAN}"
    if not (bundle / bundle_format.PLAN).is_file():
        return found + [Finding(plan, "missing", "no TensorRT plan: the auto backend runs onnxruntime; build one "
                                                 f"on the target with `edgestack build {bundle}`")]
    try:
        bundle_format.require_recorded(bundle, meta, bundle_format.PLAN, f"rebuild it with `edgestack build {bundle}`")
    except EdgestackError as exc:  # a plan copied in by hand: never run, so no figures of it to show
        return found + [Finding(plan, "problem", str(exc))]
    info = meta["tensorrt"]
    built = f"{info.get('precision')} plan built with TensorRT {info.get('version')} on {info.get('gpu')}"
    if env is None:
        return found + [Finding(plan, "missing", f"{built}; cannot run here without TensorRT and a GPU")]
    problem = plan_problem(meta, env)
    if problem:
        return found + [Finding(plan, "problem", f"{problem}; rebuild it with `edgestack build {bundle} "
                                                 f"--precision {info.get('precision')}`")]
    return found + [Finding(plan, "ok", f"{built}: runs here (the auto backend picks it)")]


def print_findings(found: list[Finding]) -> None:
    width = max(len(f.component) for f in found)
    for f in found:
        print(f"{f.status:<8} {f.component:<{width}}  {f.detail}")
