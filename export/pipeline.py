"""`export_bundle`: model -> both ONNX flavours -> parity vs PyTorch -> meta.json + report.md.

The bundle is assembled in a temporary folder beside the target and moved into place only after
every check passed, so a failed export never leaves a half-written bundle.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
import onnxruntime
import torch
from safetensors.torch import save

from edgestack import __version__
from edgestack import bundle as bundle_format
from edgestack.errors import EdgestackError, make_folder
from edgestack.export import onnx_export, parity
from edgestack.export.report import write_graphs_report, write_report
from edgestack.models import resolve_recorded
from edgestack.models.checkpoints import load_checkpoint, read_checkpoint, recorded_config


def _meets(figures: dict[str, float], tolerance: dict[str, float]) -> bool:
    for key, limit in tolerance.items():
        value = figures[key]
        if not (value >= limit if key.endswith("agreement") else value <= limit):
            return False
    return figures["finite"]


def export_bundle(
    model_name: str,
    config: str | None = None,
    out: str | Path | None = None,
    checkpoint: str | Path | None = None,
    parity_sizes: list[tuple[int, int]] | None = None,
    seed: int = 0,
    progress: Callable[[str], None] = print,
) -> tuple[Path, dict[str, Any]]:
    """Export one model config to a verified bundle; returns (bundle path, meta).

    A model with several deployable graphs (`extras["graphs"]`: name -> (spec, wrapper)) becomes a folder of
    sub-bundles, one per graph, each a complete bundle of its own, under a meta.json that lists them."""
    # A training checkpoint names its config: `export detector --checkpoint teacher/best.pt` exports the teacher.
    recorded = recorded_config(read_checkpoint(checkpoint)) if checkpoint and Path(checkpoint).suffix in (
        ".pt", ".pth") else None
    spec, config_name = resolve_recorded(model_name, config, recorded, str(checkpoint))
    cfg = spec.configs[config_name]
    out = Path(out) if out else Path("artifacts") / model_name
    check_out_folder(out)
    started = time.perf_counter()

    torch.manual_seed(seed)
    model = spec.build(cfg)
    shipped = spec.extras.get("default_checkpoint", {}).get(config_name)
    if not checkpoint and shipped:
        checkpoint = shipped
        progress(f"no --checkpoint given: using the weights shipped with edgestack for {config_name}")
    if checkpoint:
        loader = spec.load_checkpoint or load_checkpoint
        weights = loader(model, str(checkpoint)) | {"random": False, "shipped": checkpoint == shipped}
        progress(f"loaded weights from {checkpoint}")
    else:
        weights = {"random": True, "seed": seed}
        progress(f"no --checkpoint given: {config_name} has RANDOM weights (seed {seed}); "
                 "outputs are meaningless until you pass trained weights")
    model.eval()

    with bundle_format.folder_replaced(out) as staging:  # out's parent check_out_folder made
        extra_files = {}
        for name, source in spec.extras.get("bundle_files", {}).items():
            shutil.copyfile(source, staging / name)
            extra_files[name] = bundle_format.sha256(staging / name)
        graphs = spec.extras.get("graphs")
        if not graphs:
            meta = _write_module(spec, config_name, model, weights, staging, parity_sizes, seed, progress, extra_files)
        else:
            metas = {}
            for name, (graph_spec, wrap) in graphs.items():
                folder = staging / name
                folder.mkdir()
                metas[name] = _write_module(graph_spec, config_name, wrap(model).eval(), weights, folder, None, seed,
                                            progress, graph=(spec.name, name))
                bundle_format.write_meta(folder, metas[name])
                write_report(folder, metas[name])
            meta = _graphs_meta(spec, config_name, weights, metas, staging, extra_files)
        meta["builder"]["export_seconds"] = round(time.perf_counter() - started, 1)
        bundle_format.write_meta(staging, meta)
        if graphs:
            write_graphs_report(staging, meta)
        else:
            write_report(staging, meta)
    return out, meta


def check_out_folder(out: Path) -> None:
    """The new bundle replaces `out`, so `out` must be new, empty or an earlier bundle (it has meta.json): never
    a folder of other files (a training run's checkpoints), a file, a link, or the working folder or one above
    it. Checked before the export runs, with the parent created."""
    here = Path.cwd().resolve()
    if out.resolve() in (here, *here.parents):
        raise EdgestackError(f"--out {out} is the working folder or one above it; the bundle replaces --out, so "
                             "name a folder of its own, e.g. artifacts/MODEL")
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise EdgestackError(f"--out {out} is a {'link' if out.is_symlink() else 'file'}; the bundle replaces "
                             "--out, so name a new folder or an earlier bundle")
    if out.is_dir() and any(out.iterdir()):
        others = _foreign_entries(out)
        if others is None:
            raise EdgestackError(f"--out {out} holds files and is no edgestack bundle (no valid {bundle_format.META}); "
                                 "the bundle replaces --out, so name a new folder or an earlier bundle")
        if others:  # fine-tuned weights, bench/ results: the replaced folder would take them along
            raise EdgestackError(f"--out {out} is an earlier bundle but also holds {', '.join(others[:5])}"
                                 f"{' ...' if len(others) > 5 else ''}, which the new bundle would delete; move them "
                                 "out of it (bench/ results describe the old bundle) or name another --out")
    make_folder(out.parent, "folder of --out")


def _foreign_entries(folder: Path) -> list[str] | None:
    """What `folder` holds beyond the bundle its meta.json describes (its files, meta.json, report.md, and its
    sub-bundles, each checked the same way), as paths relative to it; None when it holds no bundle's meta.json.
    Any schema version: an earlier edgestack's bundle is replaced too."""
    try:
        meta = json.loads((folder / bundle_format.META).read_text())
        recorded = {bundle_format.META, bundle_format.REPORT} | {Path(name).parts[0] for name in meta["files"]}
        subs = {graph["folder"] for graph in meta.get("graphs", {}).values()}
        recorded |= {f".{sub}.lock" for sub in subs}  # what `edgestack build SUB-BUNDLE` locked
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    foreign = []
    for path in sorted(folder.iterdir()):
        if path.name in subs and path.is_dir():  # `edgestack bench` writes into a sub-bundle, as told to
            inner = _foreign_entries(path)
            foreign += [f"{path.name}/"] if inner is None else [f"{path.name}/{name}" for name in inner]
        elif path.name not in recorded and path.name.removesuffix(".tmp") not in recorded:  # .tmp: a killed write's
            foreign.append(path.name)
    return foreign


def _builder() -> dict[str, Any]:
    return {"edgestack": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__}


def _write_module(spec, config_name: str, model: torch.nn.Module, weights: dict[str, Any], folder: Path,
                  parity_sizes: list[tuple[int, int]] | None, seed: int, progress: Callable[[str], None],
                  extra_files: dict[str, str] | None = None, graph: tuple[str, str] | None = None) -> dict[str, Any]:
    """Both ONNX flavours, weights, parity and meta.json of one graph, written into `folder`; returns the meta.

    `graph` = (model name, graph name) when this is one graph of a multi-graph model: the runtime's torch
    backend then rebuilds it as that model's graph wrapper."""
    started = time.perf_counter()
    cfg = spec.configs[config_name]
    inputs, outputs, axes = spec.inputs(cfg), spec.outputs(cfg), spec.axes(cfg)
    height, width = spec.default_size(cfg)
    progress(f"tracing {spec.name}/{config_name} with torch.export ...")
    # Batch 2: torch.export specializes size-1 dims, which would pin the dynamic batch axis.
    program = onnx_export.trace(model, spec.example_inputs(cfg, 2, height, width), inputs, axes)
    protos = {}
    for flavour, filename in (("portable", bundle_format.PORTABLE_ONNX), ("plugins", bundle_format.PLUGINS_ONNX)):
        progress(f"writing {flavour} ONNX ...")
        translations = spec.extras.get("onnx_translations", {}).get(flavour)
        protos[flavour] = onnx_export.to_onnx(program, flavour, folder / filename, inputs, outputs, translations)
    # save_file creates its file readable by its owner alone; a bundle is meant to be deployed under another account
    bundle_format.write_atomic(folder / bundle_format.WEIGHTS,
                               save({k: v.contiguous() for k, v in model.state_dict().items()}))

    skipped = spec.extras.get("parity_skip", {})
    checked = [f for f in ("portable", "plugins") if f not in skipped]
    progress(f"checking parity of {' and '.join(checked)} ONNX against PyTorch ..."
             + "".join(f" ({f} not run: {why})" for f, why in skipped.items()))
    parity_report = check_parity(spec, cfg, model, folder, parity_sizes or spec.parity_sizes(cfg), seed)
    failed = [f"{r['flavour']} at {r['height']}x{r['width']}" for r in parity_report if not r["passed"]]
    if failed:
        raise EdgestackError(
            f"parity check failed for {', '.join(failed)} (tolerance {spec.parity_tolerance}); bundle not "
            f"written. Figures: {parity_report}"
        )

    files = [bundle_format.PORTABLE_ONNX, bundle_format.PLUGINS_ONNX, bundle_format.WEIGHTS]
    return {
        "schema_version": bundle_format.SCHEMA_VERSION,
        "model": {"name": graph[0] if graph else spec.name, "config": config_name, "task": spec.task, "settings": cfg}
        | ({"graph": graph[1]} if graph else {}),
        "weights": weights,
        "inputs": [s.as_dict() for s in inputs],
        "outputs": [s.as_dict() for s in outputs],
        "axes": {name: rng.as_dict() for name, rng in axes.items()},
        "default_size": [height, width],
        "preprocess": spec.preprocess,
        "postprocess": spec.postprocess(cfg),
        "precision": "fp32",
        "onnx": {
            "opset": onnx_export.OPSET,
            "plugin_nodes": onnx_export.plugin_nodes(protos["plugins"]),
            "portable_custom_nodes": onnx_export.plugin_nodes(protos["portable"]),
        },
        "parity": {"tolerance": spec.parity_tolerance, "results": parity_report,
                   "not_run": spec.extras.get("parity_skip", {})},
        "builder": _builder() | {"export_seconds": round(time.perf_counter() - started, 1)},
        "files": {name: bundle_format.sha256(folder / name) for name in files} | (extra_files or {}),
    }


def _graphs_meta(spec, config_name: str, weights: dict[str, Any], metas: dict[str, dict[str, Any]], folder: Path,
                 extra_files: dict[str, str]) -> dict[str, Any]:
    """meta.json of a multi-graph bundle: the graphs' folders (each a bundle) and the files they share."""
    cfg = spec.configs[config_name]
    # The graphs' exported files, by their path: a sub-bundle from another export is caught, and a sub-bundle's
    # meta.json may still change where its files stay (`edgestack build SUB` adds a plan and records it there).
    files = {f"{name}/{file}": sha for name, meta in metas.items() for file, sha in meta["files"].items()}
    return {
        "schema_version": bundle_format.SCHEMA_VERSION,
        "model": {"name": spec.name, "config": config_name, "task": spec.task, "settings": cfg},
        "weights": weights,
        "graphs": {name: {"folder": name, "inputs": meta["inputs"], "outputs": meta["outputs"]}
                   for name, meta in metas.items()},
        "default_size": list(spec.default_size(cfg)),
        "preprocess": spec.preprocess,
        "postprocess": spec.postprocess(cfg),
        "precision": "fp32",
        "parity": {name: meta["parity"] for name, meta in metas.items()},
        "builder": _builder(),
        "files": files | extra_files,
    }


def check_parity(spec, cfg, model, bundle: Path, sizes: list[tuple[int, int]], seed: int) -> list[dict[str, Any]]:
    """Both flavours vs PyTorch on the same random inputs at each size.

    A model's extras may name flavours onnxruntime cannot run (`parity_skip`: flavour -> reason) and its own
    comparison of all outputs (`parity_compare`: (torch outputs, onnx outputs) -> figures)."""
    names = [s.name for s in spec.inputs(cfg)]
    files = {"portable": bundle_format.PORTABLE_ONNX, "plugins": bundle_format.PLUGINS_ONNX}
    skip = spec.extras.get("parity_skip", {})
    sessions = {flavour: parity.onnx_session(str(bundle / f)) for flavour, f in files.items() if flavour not in skip}
    custom_compare = spec.extras.get("parity_compare")
    results = []
    for height, width in sizes:
        torch.manual_seed(seed + height * 7919 + width)
        example = spec.example_inputs(cfg, 1, height, width)
        expected = parity.run_torch(model, example)
        for flavour, session in sessions.items():
            got = parity.run_onnx(session, names, example)
            figures = custom_compare(expected, got) if custom_compare else parity.compare(expected[0], got[0],
                                                                                           spec.task)
            results.append({"flavour": flavour, "height": height, "width": width, **figures,
                            "passed": _meets(figures, spec.parity_tolerance)})
    return results
