"""torch -> ONNX in two flavours, both from one torch.export program.

portable: every custom op decomposed into its reference (standard ONNX ops, runs anywhere).
plugins:  every custom op as one node named after its TensorRT plugin.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path

import onnx
import torch

from edgestack.errors import EdgestackError
from edgestack.kernels import custom_ops
from edgestack.models.registry import AxisRange, TensorSpec

OPSET = 18
FLAVOURS = ("portable", "plugins")
# onnxscript's rewrite rules the exporter's optimizer runs without. SlicesSplit (two Slices of one tensor's last
# axis -> one Split) matches with the generic multi-output matcher, which scans the graph for every Slice: with
# onnxscript 0.7.2 it was 78 s of MAT-512's export on a 2-core CPU (portable 62 s, plugins 16 s) and rewrote
# nothing in any of our models, so the graphs are the same without it.
SKIPPED_REWRITES = frozenset({"SlicesSplit"})


def dynamic_shapes(inputs: list[TensorSpec], axes: dict[str, AxisRange]) -> dict[str, dict[int, torch.export.Dim]]:
    """torch.export Dims for every named axis; one Dim object per name so equal names stay equal."""
    dims = {name: torch.export.Dim(name, min=rng.min, max=rng.max) for name, rng in axes.items()}
    return {
        spec.name: {i: dims[d] for i, d in enumerate(spec.shape) if isinstance(d, str) and d in dims}
        for spec in inputs
    }


def trace(
    model: torch.nn.Module,
    example: tuple[torch.Tensor, ...],
    inputs: list[TensorSpec],
    axes: dict[str, AxisRange],
) -> torch.export.ExportedProgram:
    shapes = dynamic_shapes(inputs, axes)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        try:
            return torch.export.export(model, example, dynamic_shapes=shapes, strict=False)
        except Exception as exc:  # torch.export raises many types; all mean "this model is not exportable"
            raise EdgestackError(f"torch.export failed for this model: {exc.__class__.__name__}: {exc}") from exc


def _name_axes(model: onnx.ModelProto, specs: list[TensorSpec], values) -> None:
    """Give dynamic dims our axis names (the exporter writes s0, s1, ...), so meta.json and ONNX agree."""
    by_name = {spec.name: spec for spec in specs}
    for value in values:
        spec = by_name.get(value.name)
        if spec is None:
            continue
        for dim, want in zip(value.type.tensor_type.shape.dim, spec.shape):
            if isinstance(want, str):
                dim.ClearField("dim_value")
                dim.dim_param = want


@contextlib.contextmanager
def skipping_rewrites():
    """The exporter's optimizer (onnxscript's default rewrite rules) without SKIPPED_REWRITES. onnxscript has no
    public switch for its defaults; an onnxscript that keeps them elsewhere runs them all, only slower."""
    from onnxscript import rewriter

    defaults = getattr(rewriter, "_DEFAULT_REWRITE_RULES", None)
    if not isinstance(defaults, tuple):
        yield
        return
    kept = tuple(rule for rule in defaults if getattr(rule, "name", None) not in SKIPPED_REWRITES)
    rewriter._DEFAULT_REWRITE_RULES = kept
    try:
        yield
    finally:
        rewriter._DEFAULT_REWRITE_RULES = defaults


def to_onnx(
    program: torch.export.ExportedProgram,
    flavour: str,
    path: Path,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    translations: dict | None = None,
) -> onnx.ModelProto:
    """Write one flavour to `path` and return the checked ModelProto.

    `translations` (torch op -> onnxscript function) adds model-specific ops this flavour translates as a whole
    (e.g. the detector's NMS, which has no traceable decomposition)."""
    if flavour not in FLAVOURS:
        raise EdgestackError(f"unknown ONNX flavour {flavour!r}; choose one of {FLAVOURS}")
    ops = custom_ops()
    if flavour == "portable":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch's own pytree deprecation notices
            program = program.run_decompositions({op.torch_op: op.decomposition for op in ops})
        table = dict(translations or {}) or None
    else:
        table = {op.torch_op: op.onnx_plugin_node for op in ops} | (translations or {})
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)  # it warns about every optional torchvision op it does not find
    with warnings.catch_warnings(), skipping_rewrites():
        warnings.simplefilter("ignore")
        onnx_program = torch.onnx.export(
            program,
            input_names=[s.name for s in inputs],
            output_names=[s.name for s in outputs],
            opset_version=OPSET,
            dynamo=True,
            custom_translation_table=table,
            optimize=True,
            verbose=False,
        )
    exporter_log.setLevel(level)
    proto = onnx_program.model_proto
    _name_axes(proto, inputs, proto.graph.input)
    _name_axes(proto, outputs, proto.graph.output)
    onnx.checker.check_model(proto, full_check=False)
    onnx.save(proto, str(path))
    return proto


def plugin_nodes(proto: onnx.ModelProto) -> dict[str, int]:
    """Count of plugin nodes by op_type."""
    names = {op.plugin.name for op in custom_ops()}
    counts: dict[str, int] = {}
    for node in proto.graph.node:
        if node.op_type in names:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts
