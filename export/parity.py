"""Run exported ONNX flavours and compare them with PyTorch on the same inputs.

The plugins flavour has custom nodes no stock runtime knows; onnxruntime-extensions runs each of them
through the op's reference, registered as a Python op, so both flavours are executed, not just checked.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from edgestack.errors import EdgestackError
from edgestack.export.onnx_ops import PLUGIN_DOMAIN
from edgestack.interrupts import interrupts_held
from edgestack.kernels import custom_ops

_EXTENSIONS_DOMAIN = "ai.onnx.contrib"


@functools.cache
def _register_plugin_runners() -> str:
    """Register every plugin node with onnxruntime-extensions; return its custom-op library path."""
    try:
        from onnxruntime_extensions import PyCustomOpDef, get_library_path, onnx_op
    except ImportError:
        raise EdgestackError(
            "running the plugins flavour needs onnxruntime-extensions: pip install onnxruntime-extensions"
        ) from None
    dtypes = {int: PyCustomOpDef.dt_int64, float: PyCustomOpDef.dt_float, str: PyCustomOpDef.dt_string,
              list: PyCustomOpDef.dt_string}  # int lists travel as "1,2,3" strings: see _for_extensions
    for op in custom_ops():
        plugin = op.plugin

        def run(*arrays, _op=op, **attributes):
            for name, kind in _op.plugin.attributes.items():
                if kind is list:
                    attributes[name] = [int(v) for v in attributes[name].split(",")]
            return _op.run_plugin_node(*arrays, **attributes)

        onnx_op(
            op_type=plugin.name,
            inputs=[PyCustomOpDef.dt_float] * len(plugin.inputs),
            outputs=[PyCustomOpDef.dt_float] * len(plugin.outputs),
            attrs={name: dtypes[kind] for name, kind in plugin.attributes.items()},
        )(run)
    return get_library_path()


def _for_extensions(model: onnx.ModelProto) -> onnx.ModelProto:
    """Copy with plugin nodes moved to the extensions' domain and INTS attributes written as strings."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for node in model.graph.node:
        if node.domain == PLUGIN_DOMAIN:
            node.domain = _EXTENSIONS_DOMAIN
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.INTS:
                    text = ",".join(str(v) for v in attr.ints)
                    attr.ClearField("ints")
                    attr.type = onnx.AttributeProto.STRING
                    attr.s = text.encode()
    for opset in model.opset_import:
        if opset.domain == PLUGIN_DOMAIN:
            opset.domain = _EXTENSIONS_DOMAIN
    return model


def onnx_session(model: onnx.ModelProto | str, threads: int = 0) -> ort.InferenceSession:
    """A CPU session for either flavour (plugin nodes run through the reference)."""
    if isinstance(model, str):
        model = onnx.load(model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    if any(node.domain == PLUGIN_DOMAIN for node in model.graph.node):
        options.register_custom_ops_library(_register_plugin_runners())
        model = _for_extensions(model)
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def compare(reference: np.ndarray, candidate: np.ndarray, task: str) -> dict[str, Any]:
    """Error figures for one output: max abs, relative (max abs / max |ref|), L2 relative, argmax agreement."""
    diff = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    scale = float(np.abs(reference).max()) or 1.0
    figures = {
        "max_abs": float(diff.max()),
        "max_abs_over_max_ref": float(diff.max()) / scale,
        "rel_l2": float(np.linalg.norm(diff) / (np.linalg.norm(reference.astype(np.float64)) or 1.0)),
        "finite": bool(np.isfinite(candidate).all()),
    }
    if task == "segmentation":
        figures["argmax_agreement"] = float((reference.argmax(1) == candidate.argmax(1)).mean())
    return figures


def run_torch(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
    with torch.no_grad():
        out = model(*inputs)
    out = out if isinstance(out, (tuple, list)) else (out,)
    return [o.numpy() for o in out]


def run_onnx(session: ort.InferenceSession, names: list[str], inputs: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
    with interrupts_held():
        return session.run(None, {name: t.numpy() for name, t in zip(names, inputs)})
