"""`edgestack triton`: a Triton Inference Server model repository from a bundle.

DIR/NAME/config.pbtxt + DIR/NAME/1/model.plan (TensorRT backend) or DIR/NAME/1/model.onnx (onnxruntime
backend). Inputs and outputs come from meta.json; with max_batch_size > 0 Triton owns the batch dimension, so
dims leave it out, and the model's other dynamic axes are -1.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

from edgestack import bundle as bundle_format
from edgestack.errors import EdgestackError

TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "int32": "TYPE_INT32",
                "uint8": "TYPE_UINT8", "bool": "TYPE_BOOL"}
FORMATS = ("auto", "plan", "onnx")
MAX_QUEUE_DELAY_US = 100


def batch_limit(meta: dict[str, Any], fmt: str) -> int:
    """Largest batch the model file takes: the plan's profile max, else the model's batch axis range."""
    if fmt == "plan":
        return meta["tensorrt"]["profile"]["max"].get("batch", 0)
    return meta["axes"]["batch"]["max"] if "batch" in meta["axes"] else 0


def _tensor(spec: dict[str, Any], batched: bool) -> str:
    if spec["dtype"] not in TRITON_TYPES:
        raise EdgestackError(f"tensor {spec['name']!r} has dtype {spec['dtype']}, which Triton configs cannot name")
    dims = [-1 if isinstance(d, str) else d for d in (spec["shape"][1:] if batched else spec["shape"])]
    return (f'  {{\n    name: "{spec["name"]}"\n    data_type: {TRITON_TYPES[spec["dtype"]]}\n'
            f"    dims: [ {', '.join(str(d) for d in dims)} ]\n  }}")


def triton_config(meta: dict[str, Any], fmt: str, name: str, max_batch: int, instances: int = 1,
                  kind: str = "KIND_GPU") -> str:
    """config.pbtxt text (Triton ModelConfig) for the bundle's plan (`fmt` "plan") or portable ONNX ("onnx")."""
    if fmt not in ("plan", "onnx"):
        raise EdgestackError(f"unknown model format {fmt!r}; choose plan or onnx")
    if instances < 1:
        raise EdgestackError(f"--instances {instances} must be at least 1")
    if fmt == "plan" and kind != "KIND_GPU":
        raise EdgestackError("a TensorRT plan runs on the GPU only; drop --cpu or use --format onnx")
    tensors = meta["inputs"] + meta["outputs"]
    if max_batch > 0:
        unbatched = [t["name"] for t in tensors if t["shape"][0] != "batch"]
        if unbatched:
            raise EdgestackError(f"{', '.join(unbatched)} have no leading batch axis; use --max-batch 0")
        limit = batch_limit(meta, fmt)
        if max_batch > limit:
            raise EdgestackError(f"--max-batch {max_batch} exceeds the {fmt} model's largest batch {limit}; "
                                 + ("rebuild the plan with a larger --profile" if fmt == "plan" else "lower it"))
    elif max_batch < 0:
        raise EdgestackError(f"--max-batch {max_batch} must be 0 (no batching) or more")
    batched = max_batch > 0
    lines = [
        f'name: "{name}"',
        f'backend: "{"tensorrt" if fmt == "plan" else "onnxruntime"}"',
        f"max_batch_size: {max_batch}",
        "input [\n" + ",\n".join(_tensor(s, batched) for s in meta["inputs"]) + "\n]",
        "output [\n" + ",\n".join(_tensor(s, batched) for s in meta["outputs"]) + "\n]",
    ]
    if max_batch > 1:
        preferred = [b for b in (2, 4, 8, 16, 32, 64) if b < max_batch] + [max_batch]
        lines.append(f"dynamic_batching {{\n  preferred_batch_size: [ {', '.join(map(str, preferred))} ]\n"
                     f"  max_queue_delay_microseconds: {MAX_QUEUE_DELAY_US}\n}}")
    lines.append(f"instance_group [\n  {{\n    count: {instances}\n    kind: {kind}\n  }}\n]")
    return "\n".join(lines) + "\n"


def parse_config(text: str) -> Any:
    """The config as Triton's ModelConfig protobuf (from tritonclient): proof that Triton can read it."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        raise EdgestackError("validating Triton configs needs tritonclient: pip install 'tritonclient[grpc]'") from None
    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise EdgestackError(f"generated config.pbtxt is not a valid Triton ModelConfig: {exc}") from None


def write_repository(
    bundle: str | Path,
    repo: str | Path,
    name: str | None = None,
    max_batch: int | None = None,
    instances: int = 1,
    fmt: str = "auto",
    cpu: bool = False,
    replace: bool = False,
) -> Path:
    """Write REPO/NAME/{config.pbtxt, 1/model.*}; returns the model folder. `fmt` auto: the plan if the bundle has
    one, else the portable ONNX; `cpu` runs ONNX instances on the CPU. A plan with plugin nodes gets our plugin
    library and its autoload library copied beside its config: Triton only dlopens the files it is given, so start
    it with `--backend-config=tensorrt,plugins=<the autoload file>`, which registers the plugins when loaded.
    An existing REPO/NAME is refused unless `replace` (then it is replaced whole: no stale model file stays)."""
    bundle, repo = Path(bundle), Path(repo)
    meta = bundle_format.read_meta(bundle, verify=True)
    bundle_format.refuse_several_graphs(bundle, meta, "add each sub-bundle to the repository "
                                                      "(`edgestack triton SUB-BUNDLE --repo ...`)")
    if fmt not in FORMATS:
        raise EdgestackError(f"unknown --format {fmt!r}; choose {', '.join(FORMATS)}")
    if fmt == "auto":
        fmt = "plan" if (bundle / bundle_format.PLAN).is_file() and not cpu else "onnx"
    if fmt == "plan":
        bundle_format.require_recorded(bundle, meta, bundle_format.PLAN, f"build it with `edgestack build {bundle}`")
    graph = meta["model"].get("graph")  # one graph of a multi-graph model (vglaw: text, vision): its own name
    name = name or (f"{meta['model']['config']}-{graph}" if graph else meta["model"]["config"])
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name):  # one folder of the repository, as Triton names it
        raise EdgestackError(f"model name {name!r} must be letters, digits, _ . - (one folder name, not a path)")
    max_batch = batch_limit(meta, fmt) if max_batch is None else max_batch
    text = triton_config(meta, fmt, name, max_batch, instances, "KIND_CPU" if cpu else "KIND_GPU")
    parse_config(text)

    model_dir = repo / name
    if model_dir.resolve() in (bundle.resolve(), *bundle.resolve().parents) or \
            bundle.resolve() in model_dir.resolve().parents:  # replacing it would delete the bundle being copied
        raise EdgestackError(f"the model folder {model_dir} is the bundle {bundle}, or holds it or lies in it; "
                             "choose another --repo or --name")
    if model_dir.exists() or model_dir.is_symlink():
        if not replace:
            raise EdgestackError(f"{model_dir} exists; pass --replace to replace it, or --name to add this model "
                                 "under another name")
        if model_dir.is_symlink() or not model_dir.is_dir():
            raise EdgestackError(f"{model_dir} is not a model folder (a file or a link); remove it or choose --name")
    # Written whole, then swapped in: a failure (a full disk, a missing plugin library) leaves the repository's
    # model folder as it was.
    repo.mkdir(parents=True, exist_ok=True)
    with bundle_format.folder_replaced(model_dir, _staged_beside(repo, name)) as staging:
        _write_model_folder(staging, bundle, meta, fmt, text)
    return model_dir


def _staged_beside(repo: Path, name: str) -> Path:
    """Where a model folder is staged: Triton takes every folder of its repository for a model, dot-named ones
    too, so a polling server would load a half-written `.NAME.staging`, and one left by a kill would stop a
    starting server (a model that fails to load ends tritonserver by default). Beside the repository, then, as
    `.REPO.NAME.staging`; inside it only where a folder cannot be renamed from there into it: a parent that is
    not writable, or a repository that is a mount (a bind mount shares its parent's file system, and still
    refuses the rename), as a rename of an empty folder shows first."""
    repo = repo.resolve()
    beside = repo.parent / f"{repo.name}.{name}"
    probe = beside.with_name(f".{beside.name}.probe")
    try:
        shutil.rmtree(probe, ignore_errors=True)  # what a kill left: ours by name
        probe.mkdir()
        probe.rename(repo / probe.name)
        (repo / probe.name).rmdir()
        return beside
    except OSError:
        shutil.rmtree(probe, ignore_errors=True)
        shutil.rmtree(repo / probe.name, ignore_errors=True)
        return repo / name


def _write_model_folder(model_dir: Path, bundle: Path, meta: dict[str, Any], fmt: str, text: str) -> None:
    version_dir = model_dir / "1"
    version_dir.mkdir()
    source = bundle_format.PLAN if fmt == "plan" else bundle_format.PORTABLE_ONNX
    shutil.copyfile(bundle / source, version_dir / ("model.plan" if fmt == "plan" else "model.onnx"))
    if fmt == "plan" and meta["tensorrt"].get("plugins"):
        from edgestack.tensorrt_env import AUTOLOAD_LIBRARY, PLUGIN_LIBRARY, find_plugin_library

        plugins = find_plugin_library()
        if not (plugins.parent / AUTOLOAD_LIBRARY).is_file():
            raise EdgestackError(f"{plugins.parent} has {PLUGIN_LIBRARY} but not {AUTOLOAD_LIBRARY}, which Triton "
                                 "needs to register the plugins; rebuild the plugins with this checkout's CMakeLists")
        shutil.copyfile(plugins, model_dir / PLUGIN_LIBRARY)
        shutil.copyfile(plugins.parent / AUTOLOAD_LIBRARY, model_dir / AUTOLOAD_LIBRARY)  # finds the other beside it
    (model_dir / "config.pbtxt").write_text(text)
