"""`edgestack build`: a bundle's ONNX -> TensorRT `model.plan` for this GPU, recorded in meta.json.

fp32/fp16 plans come from `model.plugins.onnx` with our plugin library loaded; int8 plans from the Q/DQ model
`edgestack quantize` writes (explicit quantization: scales come from the Q/DQ nodes, no TensorRT calibrator).
Everything that can go wrong with the user's arguments is checked before TensorRT is imported.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgestack import bundle as bundle_format
from edgestack.errors import EdgestackError

PRECISIONS = ("fp32", "fp16", "int8")
LEVELS = ("min", "opt", "max")


def parse_profile(text: str) -> dict[str, dict[str, int]]:
    """`--profile` "MIN,OPT,MAX", each HxW or BxHxW (e.g. 65x65,473x473,1025x1025) -> {level: {axis: size}}."""
    parts = [p.strip().lower() for p in text.split(",")]
    try:
        sizes = [[int(v) for v in part.split("x")] for part in parts]
    except ValueError:
        sizes = []
    if len(sizes) != 3 or any(len(s) not in (2, 3) or len(s) != len(sizes[0]) for s in sizes):
        raise EdgestackError(
            f"--profile {text!r} is not MIN,OPT,MAX with each HxW or BxHxW (e.g. 65x65,473x473,1025x1025 or "
            "1x65x65,1x473x473,8x1025x1025)"
        )
    names = ("height", "width") if len(sizes[0]) == 2 else ("batch", "height", "width")
    return {level: dict(zip(names, size)) for level, size in zip(LEVELS, sizes)}


def resolve_profile(meta: dict[str, Any], profile: str | dict[str, dict[str, int]] | None) -> dict[str, dict[str, int]]:
    """Optimization profile as {min|opt|max: {axis: size}}, overridden by `profile` (text as `--profile` takes it,
    or an already resolved dict). Default: opt at the default size and batch 1, min at the model's minimum, max at
    twice the default size and batch 8 (within the model's range) -- the model's whole range would reserve
    activation memory for batch 32 at 2049x2049 on every GPU."""
    values: dict[str, dict[str, int]] = {level: {} for level in LEVELS}
    default = {"batch": 1, "height": meta["default_size"][0], "width": meta["default_size"][1]}
    for axis, rng in meta["axes"].items():
        step = rng["multiple_of"]
        low = -(-rng["min"] // step) * step
        high = min(rng["max"], 8 if axis == "batch" else 2 * default.get(axis, rng["max"])) // step * step
        high = max(high, low)
        opt = default.get(axis, low)
        opt = max(low, min(round(opt / step) * step, high))
        values["min"][axis], values["opt"][axis], values["max"][axis] = low, opt, high
    overrides = parse_profile(profile) if isinstance(profile, str) else profile or {}
    for level, sizes in overrides.items():
        for axis, size in sizes.items():
            if axis not in meta["axes"]:
                raise EdgestackError(f"--profile sets {axis}, but this model has no dynamic axis {axis!r}")
            values[level][axis] = size
    for axis in meta["axes"]:
        for level in LEVELS:
            problem = bundle_format.axis_problem(meta, axis, values[level][axis])
            if problem:
                raise EdgestackError(f"profile {level}: {problem}; choose --profile sizes inside it")
        if not values["min"][axis] <= values["opt"][axis] <= values["max"][axis]:
            raise EdgestackError(
                f"profile {axis}: min {values['min'][axis]} <= opt {values['opt'][axis]} <= max "
                f"{values['max'][axis]} does not hold; order --profile as MIN,OPT,MAX"
            )
    return values


def input_shapes(meta: dict[str, Any], values: dict[str, dict[str, int]]) -> dict[str, list[tuple[int, ...]]]:
    """Each input's (min, opt, max) shape under a resolved profile."""
    return {
        spec["name"]: [tuple(values[level][d] if isinstance(d, str) else d for d in spec["shape"]) for level in LEVELS]
        for spec in meta["inputs"]
    }


def describe_parse_failure(
    source: Path,
    errors: list[tuple[str, str, str]],
    creators: list[tuple[str, str]],
    expected: dict[str, str],
) -> str:
    """Message for a failed ONNX parse. errors: (node name, op type, description); creators: (name, version) of
    the registry's plugin creators; expected: our plugin names -> versions."""
    lines = "; ".join(f"node {node or '?'} ({op or '?'}): {desc}" for node, op, desc in errors) or "no details"
    missing = sorted({op for _, op, desc in errors if op in expected or "plugin" in desc.lower()})
    if not missing:
        return f"TensorRT's ONNX parser rejected {source}: {lines}"
    ours = sorted(f"{name} v{version}" for name, version in creators if name in expected) or ["none"]
    want = ", ".join(f"{name} v{version}" for name, version in sorted(expected.items()))
    return (
        f"TensorRT's ONNX parser found no plugin for {', '.join(missing)} in {source} ({lines}). Registered edgestack "
        f"plugins: {', '.join(ours)}; this bundle needs {want}. Rebuild the plugin library from this checkout "
        "(`cmake --build build`) against this TensorRT, or point EDGESTACK_TRT_PLUGINS at a matching one"
    )


def foreign_plugins(onnx_path: Path) -> list[str]:
    """Op types in the graph that are neither standard ONNX nor our plugins: TensorRT's own plugins
    (EfficientNMS_TRT in the detector's plugins flavour)."""
    import onnx

    from edgestack.kernels import custom_ops

    if not onnx_path.is_file():
        raise EdgestackError(f"bundle {onnx_path.parent} has no {onnx_path.name}; re-export it")
    ours = {op.plugin.name for op in custom_ops()}
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    return sorted({node.op_type for node in graph.node if node.domain not in ("", "ai.onnx")
                   and node.op_type not in ours})


def version_compatible_problem(onnx_path: Path) -> str | None:
    """Why `onnx_path` cannot become a version-compatible plan, or None.

    Such a plan must carry the code of every plugin in it (IBuilderConfig::setPluginsToSerialize). Our plugin
    library can be carried; TensorRT's own plugins cannot: libnvinfer_plugin exports none of the entry points
    (getCreators) an embedded library needs, libnvinfer_vc_plugin holds only ROIAlign_TRT, and the ONNX parser
    imports other built-ins without reporting a library for them.
    """
    foreign = foreign_plugins(onnx_path)
    if not foreign:
        return None
    return (f"{onnx_path.name} uses TensorRT's own plugin {', '.join(foreign)}, which a version-compatible plan "
            "cannot carry")


def default_timing_cache(env: dict[str, str]) -> Path:
    """One timing cache per TensorRT version and GPU, shared by every bundle built on this machine."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgestack" / "tensorrt"
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", f"trt{env['tensorrt']}-sm{env['compute_capability']}-{env['gpu']}")
    return root / f"{slug.strip('-')}.timing"


@bundle_format.changes_bundle
def build_engine(
    bundle: str | Path,
    precision: str = "fp16",
    calib: str | Path | None = None,
    workspace_mb: int | None = None,
    profile: str | dict[str, dict[str, int]] | None = None,
    version_compatible: bool = False,
    hardware_compatible: bool = False,
    timing_cache: str | Path | None = None,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Build `model.plan` for this GPU; returns the meta.json record of the plan (meta["tensorrt"])."""
    bundle = Path(bundle)
    meta = bundle_format.read_meta(bundle, verify=True)
    bundle_format.refuse_several_graphs(bundle, meta, "build a plan in each sub-bundle (`edgestack build "
                                                      "SUB-BUNDLE`); the runtime loads each graph's own plan")
    if precision not in PRECISIONS:
        raise EdgestackError(f"unknown precision {precision!r}; choose {', '.join(PRECISIONS)}")
    if calib is not None and precision != "int8":
        raise EdgestackError("--calib only applies to --precision int8")
    if workspace_mb is not None and workspace_mb <= 0:
        raise EdgestackError(f"--workspace {workspace_mb} MB must be positive")
    # The int8 graph is made from the portable flavour, so it holds that flavour's nodes plus Q/DQ.
    flavour = bundle_format.PORTABLE_ONNX if precision == "int8" else bundle_format.PLUGINS_ONNX
    problem = version_compatible and version_compatible_problem(bundle / flavour)
    if problem:
        raise EdgestackError(f"--version-compatible: {problem}; build without it and rebuild the plan after a "
                             "TensorRT upgrade (`edgestack build` again, or load(bundle, rebuild=True))")
    values = resolve_profile(meta, profile)
    shapes = input_shapes(meta, values)

    from edgestack.tensorrt_env import (
        current_environment,
        find_plugin_library,
        hardware_compatible_problem,
        import_tensorrt,
        load_plugins,
        registered_creators,
        trt_logger,
    )

    trt = import_tensorrt()
    env = current_environment()
    problem = hardware_compatible and hardware_compatible_problem(env)
    if problem:
        raise EdgestackError(f"--hardware-compatible: {problem}; build without it")
    if precision == "int8" and (calib is not None or not (bundle / bundle_format.INT8_ONNX).is_file()):
        from edgestack.export.quantize import quantize

        quantize(bundle, calib=calib, progress=progress)
        meta = bundle_format.read_meta(bundle, verify=True)
    source = bundle / (bundle_format.INT8_ONNX if precision == "int8" else bundle_format.PLUGINS_ONNX)
    # The Q/DQ model is made from the portable flavour (onnxruntime calibrates it), so it has no plugin nodes.
    plugins = {} if precision == "int8" else meta["onnx"]["plugin_nodes"]

    started = time.perf_counter()
    builder = trt.Builder(trt_logger())
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, trt_logger())
    library = None
    if plugins:
        library = find_plugin_library()
        load_plugins(builder.get_plugin_registry(), library, plugins)
    progress(f"parsing {source.name} ...")
    if not parser.parse_from_file(str(source)):
        errors = [parser.get_error(i) for i in range(parser.num_errors)]
        from edgestack.kernels import custom_ops

        raise EdgestackError(describe_parse_failure(
            source,
            [(e.node_name(), e.node_operator(), e.desc()) for e in errors],
            registered_creators(builder.get_plugin_registry()),
            {op.plugin.name: op.plugin.version for op in custom_ops()},
        ))

    config = builder.create_builder_config()
    if workspace_mb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if precision in ("fp16", "int8"):
        # int8: layers without Q/DQ around them may still run in fp16 rather than fp32.
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
    if version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
        # The plan carries the code of its plugins: ours, and any version-compatible TensorRT plugin library the
        # parser used (as trtexec does).
        serialized = ([str(library)] if library is not None else []) + list(parser.get_used_vc_plugin_libraries())
        if serialized:
            config.plugins_to_serialize = serialized
    if hardware_compatible:
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    optimization_profile = builder.create_optimization_profile()
    for name, (low, opt, high) in shapes.items():
        optimization_profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(optimization_profile)

    cache_path = Path(timing_cache) if timing_cache else default_timing_cache(env)
    use_timing_cache(config, cache_path, progress)

    progress(f"building a {precision} plan for {env['gpu']} (this takes minutes the first time) ...")
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EdgestackError(
            f"TensorRT could not build a plan from {source} (see its log above); try a larger --workspace or a "
            "smaller --profile"
        )
    save_timing_cache(config, cache_path, progress)

    record = {
        "version": trt.__version__,
        "gpu": env["gpu"],
        "compute_capability": env["compute_capability"],
        "precision": precision,
        "flags": {"fp16": precision in ("fp16", "int8"), "int8": precision == "int8",
                  "version_compatible": version_compatible, "hardware_compatible": hardware_compatible},
        "source": source.name,
        "plugins": plugins,
        "plugin_library": str(library) if library else None,
        "profile": values,
        "workspace_mb": workspace_mb,
        "timing_cache": str(cache_path),
        "build_seconds": round(time.perf_counter() - started, 1),
    }
    meta["tensorrt"] = record
    # plan and meta.json together: a plan on disk that meta.json does not record would stop the bundle loading
    bundle_format.replace_files(bundle, meta, {bundle_format.PLAN: memoryview(plan)})
    record["parity_vs_onnxruntime"] = verify_plan(bundle, meta, values["opt"])
    bundle_format.write_meta(bundle, meta)
    progress(f"wrote {bundle / bundle_format.PLAN} ({record['build_seconds']} s)")
    return record


def use_timing_cache(config: Any, path: Path, progress: Callable[[str], None]) -> None:
    """Start the build from the timing cache at `path` when TensorRT accepts it; an unreadable or mismatched
    cache (another TensorRT version or GPU, a damaged file) only costs tactic timing, so it is replaced."""
    data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data)
    if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
        return
    progress(f"timing cache {path} does not fit this TensorRT/GPU; timing every tactic afresh and replacing it")
    config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)


def save_timing_cache(config: Any, path: Path, progress: Callable[[str], None]) -> None:
    """Keep the build's timings for the next build; a cache that cannot be written is reported, never fatal."""
    cache = config.get_timing_cache()
    if cache is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        bundle_format.write_atomic(path, memoryview(cache.serialize()))
    except OSError as exc:
        progress(f"could not save the timing cache {path} ({exc}); the next build times its tactics again")


def verify_plan(bundle: Path, meta: dict[str, Any], sizes: dict[str, int]) -> dict[str, Any]:
    """The new plan against the portable ONNX on onnxruntime, on one random input at the profile's opt shape."""
    from edgestack.export.parity import parity_vs_fp32
    from edgestack.runtime.engine import load, random_feed

    feed = random_feed(meta, sizes)  # integer inputs in range: vglaw's text graph refuses negative ids
    names = [output["name"] for output in meta["outputs"]]
    got = load(bundle, backend="tensorrt")(**feed)
    want = load(bundle, backend="onnxruntime")(**feed)
    return {"sizes": sizes, **parity_vs_fp32([want[n] for n in names], [got[n] for n in names],
                                             meta["model"]["task"])}


def rebuild_plan(bundle: Path, meta: dict[str, Any]) -> None:
    """Rebuild the bundle's plan for this machine with the precision, flags and profile recorded in meta.json."""
    info = meta["tensorrt"]
    source = bundle / info["source"]
    if not source.is_file():
        raise EdgestackError(f"cannot rebuild the plan: {source} is missing; re-export the bundle")
    from edgestack.tensorrt_env import current_environment, hardware_compatible_problem

    # The rebuild is for this GPU: where a hardware-compatible plan cannot run (Jetson, pre-Ampere), build a plain one.
    hardware_compatible = (info["flags"]["hardware_compatible"]
                           and not hardware_compatible_problem(current_environment()))
    build_engine(
        bundle,
        precision=info["precision"],
        workspace_mb=info.get("workspace_mb"),
        profile=info["profile"],
        version_compatible=info["flags"]["version_compatible"],
        hardware_compatible=hardware_compatible,
    )
