"""`export_bundle`: model -> both ONNX flavours -> parity vs PyTorch -> meta.json + report.md.

The bundle is assembled in a temporary folder beside the target and moved into place only after
every check passed, so a failed export never leaves a half-written bundle.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
import onnxruntime
import torch
from safetensors.torch import save_file

from edgestack import __version__
from edgestack import bundle as bundle_format
from edgestack.errors import EdgestackError
from edgestack.export import onnx_export, parity
from edgestack.models import resolve
from edgestack.models.checkpoints import load_checkpoint


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
    """Export one model config to a verified bundle; returns (bundle path, meta)."""
    spec, config_name = resolve(model_name, config)
    cfg = spec.configs[config_name]
    out = Path(out) if out else Path("artifacts") / model_name
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
    inputs, outputs, axes = spec.inputs(cfg), spec.outputs(cfg), spec.axes(cfg)

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        height, width = spec.default_size(cfg)
        progress(f"tracing {config_name} with torch.export ...")
        # Batch 2: torch.export specializes size-1 dims, which would pin the dynamic batch axis.
        program = onnx_export.trace(model, spec.example_inputs(cfg, 2, height, width), inputs, axes)
        protos = {}
        for flavour, filename in (("portable", bundle_format.PORTABLE_ONNX), ("plugins", bundle_format.PLUGINS_ONNX)):
            progress(f"writing {flavour} ONNX ...")
            translations = spec.extras.get("onnx_translations", {}).get(flavour)
            protos[flavour] = onnx_export.to_onnx(program, flavour, staging / filename, inputs, outputs, translations)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(staging / bundle_format.WEIGHTS))

        skipped = spec.extras.get("parity_skip", {})
        checked = [f for f in ("portable", "plugins") if f not in skipped]
        progress(f"checking parity of {' and '.join(checked)} ONNX against PyTorch ..."
                 + "".join(f" ({f} not run: {why})" for f, why in skipped.items()))
        parity_report = check_parity(spec, cfg, model, staging, parity_sizes or spec.parity_sizes(cfg), seed)
        failed = [f"{r['flavour']} at {r['height']}x{r['width']}" for r in parity_report if not r["passed"]]
        if failed:
            raise EdgestackError(
                f"parity check failed for {', '.join(failed)} (tolerance {spec.parity_tolerance}); bundle not "
                f"written. Figures: {parity_report}"
            )

        files = [bundle_format.PORTABLE_ONNX, bundle_format.PLUGINS_ONNX, bundle_format.WEIGHTS]
        meta = {
            "schema_version": bundle_format.SCHEMA_VERSION,
            "model": {"name": spec.name, "config": config_name, "task": spec.task, "settings": cfg},
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
            "builder": {
                "edgestack": __version__,
                "torch": torch.__version__,
                "onnx": onnx.__version__,
                "onnxruntime": onnxruntime.__version__,
                "export_seconds": round(time.perf_counter() - started, 1),
            },
            "files": {name: bundle_format.sha256(staging / name) for name in files},
        }
        bundle_format.write_meta(staging, meta)
        from edgestack.export.report import write_report

        write_report(staging, meta)
        if out.exists():
            shutil.rmtree(out)
        staging.chmod(0o755)  # mkdtemp makes it private; a bundle is meant to be shared
        for path in staging.iterdir():
            path.chmod(0o644)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out, meta


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
