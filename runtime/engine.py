"""`Engine`: one bundle on one backend, called with numpy arrays, returning numpy arrays by output name."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from edgestack import bundle as bundle_format
from edgestack.errors import EdgestackError

log = logging.getLogger("edgestack.runtime")
BACKENDS = ("onnxruntime", "onnxruntime-int8", "tensorrt", "torch", "torch-compiled")


# onnxruntime's tensor(...) type -> meta.json dtype
ORT_DTYPES = {f"tensor({'float' if dtype == 'float32' else dtype})": dtype for dtype in bundle_format.DTYPES}


def check_declared_io(bundle: Path, meta: dict[str, Any], found: list[tuple[str, str]], source: str) -> None:
    """meta.json has no sha256 of its own: an edited input or output name or dtype is caught on load, against the
    (name, dtype) pairs `source` (the graph, or the registry's model) really has, not as a failed run."""
    declared = [(t["name"], t["dtype"]) for t in [*meta["inputs"], *meta["outputs"]]]
    if found != declared:
        raise EdgestackError(f"{bundle / bundle_format.META} declares inputs and outputs {declared}, but {source} "
                             f"has {found} (meta.json edited?); re-export the bundle")


class OnnxRuntimeBackend:
    """The portable ONNX (or its int8 Q/DQ version) on onnxruntime: CUDA provider when this onnxruntime has it,
    else CPU."""

    def __init__(self, bundle: Path, meta: dict[str, Any], filename: str = bundle_format.PORTABLE_ONNX,
                 name: str = "onnxruntime"):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        self.session = ort.InferenceSession(str(bundle / filename), options, providers=providers)
        self.name = name
        self.device = self.session.get_providers()[0]
        check_declared_io(bundle, meta, [(t.name, ORT_DTYPES.get(t.type, t.type))
                                         for t in [*self.session.get_inputs(), *self.session.get_outputs()]], filename)

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, feed)


class TorchBackend:
    """The model rebuilt from the registry with the bundle's weights; eager or torch.compile'd."""

    def __init__(self, bundle: Path, meta: dict[str, Any], compiled: bool = False):
        import torch
        from safetensors.torch import load_file

        from edgestack.models import resolve

        spec, config = resolve(meta["model"]["name"], meta["model"]["config"])
        cfg = spec.configs[config]
        # The network is built from this edgestack's config: one exported by a version that built it otherwise
        # would load its weights (same shapes) and compute something else than its own ONNX.
        exported, current = meta["model"].get("settings"), json.loads(json.dumps(cfg))  # tuples as JSON has them
        if exported is not None and exported != current:
            changed = sorted(key for key in {*exported, *current} if exported.get(key) != current.get(key))
            raise EdgestackError(f"bundle {bundle} was exported with other {config} settings than this edgestack "
                                 f"builds ({', '.join(changed)}); run it on onnxruntime (its ONNX is the exported "
                                 "network) or re-export it")
        model = spec.build(cfg)
        graph_spec = spec
        if "graph" in meta["model"]:  # one graph of a multi-graph model (e.g. vglaw's text or vision graph)
            graph_spec, wrap = spec.extras["graphs"][meta["model"]["graph"]]
            model = wrap(model)
        built = [*graph_spec.inputs(cfg), *graph_spec.outputs(cfg)]
        check_declared_io(bundle, meta, [(t.name, t.dtype) for t in built], config)
        try:
            model.load_state_dict(load_file(str(bundle / bundle_format.WEIGHTS)), strict=True)
        except RuntimeError as exc:  # meta.json names another config than the weights were exported from
            raise EdgestackError(f"bundle {bundle}: its weights do not fit {config} ({str(exc).splitlines()[0]}); "
                                 "re-export the bundle") from None
        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = model.eval().to(self.device)
        self.forward = torch.compile(self.model) if compiled else self.model
        self.name = "torch-compiled" if compiled else "torch"
        self.input_names = [spec["name"] for spec in meta["inputs"]]

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        with self.torch.inference_mode():
            out = self.forward(*(self.torch.from_numpy(feed[n]).to(self.device) for n in self.input_names))
        out = out if isinstance(out, (tuple, list)) else (out,)
        return [o.cpu().numpy() for o in out]


class Engine:
    """A loaded bundle. `engine(x)` or `engine(image=x, mask=m)` -> {output name: array}."""

    def __init__(self, bundle: Path, meta: dict[str, Any], backend):
        self.bundle = bundle
        self.meta = meta
        self.backend = backend
        self.inputs: list[dict[str, Any]] = meta["inputs"]
        self.outputs: list[dict[str, Any]] = meta["outputs"]
        self.axes: dict[str, dict[str, int]] = meta["axes"]

    @property
    def description(self) -> str:
        return f"{self.meta['model']['config']} on {self.backend.name} ({self.backend.device})"

    def __call__(self, *args: np.ndarray, **kwargs: np.ndarray) -> dict[str, np.ndarray]:
        names = [spec["name"] for spec in self.inputs]
        if len(args) > len(names):
            raise EdgestackError(f"{len(args)} inputs given, the model takes {len(names)}: {', '.join(names)}")
        feed = dict(zip(names, args))
        unknown = set(kwargs) - set(names)
        if unknown:
            raise EdgestackError(f"unknown inputs {sorted(unknown)}; the model takes {', '.join(names)}")
        twice = [name for name in names if name in feed and name in kwargs]
        if twice:
            raise EdgestackError(f"inputs {twice} given both by position and by name; pass each once")
        feed.update(kwargs)
        missing = [n for n in names if n not in feed]
        if missing:
            raise EdgestackError(f"missing inputs {missing}; the model takes {', '.join(names)}")
        feed = {spec["name"]: self._check(spec, feed[spec["name"]]) for spec in self.inputs}
        outputs = self.backend.run(feed)
        # In the dtypes meta.json declares, whatever the backend computed in (torch: int64 detector classes
        # stay int64; TensorRT: int32 from EfficientNMS_TRT, fp16) — onnxruntime already gives them.
        return {spec["name"]: value.astype(spec["dtype"], copy=False) for spec, value in zip(self.outputs, outputs)}

    def _check(self, spec: dict[str, Any], value: Any) -> np.ndarray:
        """Validate rank, static dims and dynamic-axis ranges; cast to the input's dtype."""
        name = spec["name"]
        array = _host_array(name, value)
        if array.ndim != len(spec["shape"]):
            raise EdgestackError(f"input {name!r} must have shape {spec['shape']}, got {list(array.shape)}")
        for size, want in zip(array.shape, spec["shape"]):
            if isinstance(want, int) and size != want:
                raise EdgestackError(f"input {name!r} must have shape {spec['shape']}, got {list(array.shape)}")
            if isinstance(want, str) and want in self.axes:
                problem = bundle_format.axis_problem(self.meta, want, size)
                if problem:
                    raise EdgestackError(f"input {name!r}: {problem}")
        want = np.dtype(spec["dtype"])
        if any((array.dtype.kind == kind) != (want.kind == kind) for kind in "fb"):
            # An image of uint8 levels cast to float32 is 255x off the normalised input the graph expects.
            raise EdgestackError(
                f"input {name!r} takes {want} values, got {array.dtype}; " + (
                    "pass the preprocessed tensor (meta.json's preprocess; edgestack.runtime.images.to_tensor does "
                    "it), not raw pixel levels" if want.kind == "f" else f"pass {want} values, not {array.dtype}"))
        if want.kind in "iu" and array.size:  # token ids must fit the vocabulary; a uint64 past int64 must not wrap
            lowest, highest = spec.get("values", (np.iinfo(want).min, np.iinfo(want).max))
            low, high = int(array.min()), int(array.max())  # Python ints: compared without overflow
            if low < lowest or high > highest:
                raise EdgestackError(f"input {name!r} takes values {lowest}..{highest}, got {low}..{high}")
        with np.errstate(over="ignore"):  # checked right below
            array = np.ascontiguousarray(array, dtype=want)
        if want.kind == "f" and not np.isfinite(array).all():  # after the cast: 1e300 is Inf in float32
            raise EdgestackError(f"input {name!r} holds NaN or Inf values (as {want})")
        if name == "image" and "scale" in self.meta.get("preprocess", {}) and array.size:
            # 0..255 levels as float pass the dtype check, and read as a frame 255x too bright for the model
            low, high = preprocessed_range(self.meta["preprocess"])
            span = high - low
            least, most = float(array.min()), float(array.max())
            if least < low - span or most > high + span:
                raise EdgestackError(
                    f"input 'image' holds {least:g}..{most:g}, far outside the {low:.3g}..{high:.3g} its preprocessing "
                    "gives: pass the preprocessed tensor (to_tensor(read_image(frame), meta['preprocess'])), not "
                    "pixel levels")
        return array


def preprocessed_range(preprocess: dict[str, Any]) -> tuple[float, float]:
    """The lowest and highest value to_tensor gives with this preprocessing, over its channels."""
    ends = np.array([0.0, 255.0])[:, None] * preprocess["scale"]
    if "mean" in preprocess:
        ends = (ends - np.asarray(preprocess["mean"])) / np.asarray(preprocess["std"])
    ends = ends + preprocess.get("offset", 0.0)
    return float(ends.min()), float(ends.max())


def _host_array(name: str, value: Any) -> np.ndarray:
    """A numpy view of an input: numpy arrays as they are; torch tensors (any device, with grad or not) and CuPy
    arrays copied to the host, where every backend takes its inputs."""
    try:
        if hasattr(value, "detach") and hasattr(value, "cpu"):  # torch.Tensor, without importing torch
            value = value.detach().cpu().numpy()
        elif hasattr(value, "__cuda_array_interface__") and hasattr(value, "get"):  # CuPy
            value = value.get()
        array = np.asarray(value)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise EdgestackError(f"input {name!r} cannot be read as an array ({type(value).__name__}: {exc}); pass a "
                             "numpy array or a torch tensor of numbers (bfloat16 has no numpy type: .float() "
                             "it first)") from None
    if array.dtype.kind not in "biuf":
        raise EdgestackError(f"input {name!r} has dtype {array.dtype}; pass a numpy array or a torch tensor of numbers")
    return array


TASK_COMMANDS = {"segmentation": "edgestack infer", "detection": "edgestack infer", "inpainting": "edgestack inpaint",
                 "defect_probability": "edgestack inspect", "grounding_text": "edgestack ground",
                 "grounding": "edgestack ground"}  # postprocess kind -> the command that runs it


def require_task(engine: Engine, kind: str) -> None:
    """Refuse a bundle whose postprocessing is not `kind`, naming the command that runs it."""
    actual = engine.meta["postprocess"].get("kind")
    if actual != kind:
        raise EdgestackError(f"bundle {engine.bundle} is a {engine.meta['model']['task']} model, not {kind}; run it "
                             f"with `{TASK_COMMANDS.get(actual, 'the command for its task')}`")


def check_backends(names: list[str]) -> None:
    """Refuse names that are no backend, before anything is loaded."""
    unknown = [name for name in names if name not in ("auto", *BACKENDS)]
    if unknown:
        raise EdgestackError(f"unknown backend(s) {', '.join(unknown)}; choose from auto, {', '.join(BACKENDS)}")


def _make_backend(name: str, bundle: Path, meta: dict[str, Any], **tensorrt_options: bool):
    def recorded(filename: str, how: str) -> None:
        bundle_format.require_recorded(bundle, meta, filename, how)

    if name == "onnxruntime":
        recorded(bundle_format.PORTABLE_ONNX, "re-export the bundle")
        return OnnxRuntimeBackend(bundle, meta)
    if name == "onnxruntime-int8":
        recorded(bundle_format.INT8_ONNX, "one graph of a multi-graph model has no int8 form (calibration draws image "
                 "inputs only); run it in fp32 or fp16" if meta["model"].get("graph") else
                 f"create it with `edgestack quantize {bundle}`")
        return OnnxRuntimeBackend(bundle, meta, filename=bundle_format.INT8_ONNX, name=name)
    if name in ("torch", "torch-compiled"):
        recorded(bundle_format.WEIGHTS, "re-export the bundle")
        return TorchBackend(bundle, meta, compiled=name == "torch-compiled")
    from edgestack.runtime.tensorrt import TensorRTBackend  # name is "tensorrt": load() ran check_backends

    return TensorRTBackend(bundle, meta, **tensorrt_options)


def random_feed(meta: dict[str, Any], sizes: dict[str, int], seed: int = 0) -> dict[str, np.ndarray]:
    """A random feed for meta.json's `inputs`, `sizes` filling their named axes: the image uniform over what its
    preprocessing gives (the engine refuses far more), other floats normal, and 0 or 1 for integer inputs (token
    ids and attention masks: valid for both, and they cost what any id costs)."""
    rng = np.random.default_rng(seed)
    feed = {}
    for spec in meta["inputs"]:
        shape = [d if isinstance(d, int) else sizes[d] for d in spec["shape"]]
        if spec["name"] == "image" and "scale" in meta.get("preprocess", {}):
            feed["image"] = rng.uniform(*preprocessed_range(meta["preprocess"]), shape).astype(spec["dtype"])
        elif np.dtype(spec["dtype"]).kind == "f":
            feed[spec["name"]] = rng.standard_normal(shape).astype(spec["dtype"])
        else:
            feed[spec["name"]] = rng.integers(0, 2, shape).astype(spec["dtype"])
    return feed


def load(bundle: str | Path, backend: str = "auto", *, rebuild: bool = False, cuda_graph: bool = False) -> Engine:
    """Load a bundle (sha256 of every file checked) on `backend`; `auto` picks the fastest that works here.

    TensorRT only: `rebuild` rebuilds a plan made for another GPU or TensorRT version instead of refusing it;
    `cuda_graph` replays each input shape's work as a captured CUDA graph."""
    check_backends([backend])
    options = {"rebuild": rebuild, "cuda_graph": cuda_graph}
    meta = bundle_format.read_meta(bundle, verify=True)
    bundle = Path(bundle)
    bundle_format.refuse_several_graphs(bundle, meta, f"load one of them, or for {meta['model']['name']} use "
                                                      "edgestack.runtime.grounding.Grounder / `edgestack ground`")
    if backend != "auto":
        return Engine(bundle, meta, _make_backend(backend, bundle, meta, **options))
    # auto: TensorRT when the bundle has a plan that runs here, else onnxruntime (its CUDA provider first).
    if (bundle / bundle_format.PLAN).is_file():
        try:
            engine = Engine(bundle, meta, _make_backend("tensorrt", bundle, meta, **options))
            log.info("backend auto -> %s", engine.description)
            return engine
        except EdgestackError as exc:
            skipped = f"tensorrt skipped: {exc}"
    else:
        skipped = f"tensorrt skipped: no {bundle_format.PLAN} (build one with `edgestack build {bundle}`)"
    engine = Engine(bundle, meta, _make_backend("onnxruntime", bundle, meta))
    log.info("backend auto -> %s (%s)", engine.description, skipped)
    return engine
