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
from edgestack.models.detector.nms import box_iou

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


def miou(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Mean IoU between two label maps over the classes either one uses."""
    ious = []
    for c in np.union1d(reference, candidate):
        a, b = reference == c, candidate == c
        ious.append((a & b).sum() / (a | b).sum())
    return float(np.mean(ious))


def parity_vs_fp32(reference: list[np.ndarray], candidate: list[np.ndarray], task: str) -> dict[str, Any]:
    """The outputs of an int8 model or a TensorRT plan (`candidate`) against fp32's: compare figures of
    the first outputs plus the task's quality proxy."""
    figures = compare(reference[0], candidate[0], task)
    if task == "segmentation":
        # No labels here: mIoU of the candidate's argmax against fp32's stands in for the mIoU drop.
        figures["miou_vs_fp32"] = miou(reference[0].argmax(1), candidate[0].argmax(1))
        figures["miou_drop_proxy"] = 1.0 - figures["miou_vs_fp32"]
    elif task == "inpainting":
        mse = float(np.mean((reference[0].astype(np.float64) - candidate[0]) ** 2))
        peak = float(reference[0].max() - reference[0].min()) or 1.0  # the fp32 output's own range
        figures["psnr_db_vs_fp32"] = float(10 * np.log10(peak**2 / max(mse, 1e-20)))
    elif task == "detection":  # padded boxes compared rank by rank say little: which detections it keeps
        figures |= detections_vs_fp32(reference, candidate)
    return figures


def detections_vs_fp32(reference: list[np.ndarray], candidate: list[np.ndarray], iou: float = 0.5) -> dict[str, Any]:
    """Of (boxes, scores, classes, count) per image: the share of fp32's detections that the candidate also makes
    (same class, IoU >= `iou`, at any rank) and the share of the candidate's that fp32 makes (1.0 when there are
    none)."""
    totals = {"fp32": 0, "candidate": 0}
    matched = {"fp32": 0, "candidate": 0}
    for image in range(len(reference[3])):
        n, m = int(reference[3][image]), int(candidate[3][image])
        overlap = box_iou(torch.from_numpy(reference[0][image, :n]), torch.from_numpy(candidate[0][image, :m])).numpy()
        same = (overlap >= iou) & (reference[2][image, :n, None] == candidate[2][image, None, :m])
        totals["fp32"] += n
        totals["candidate"] += m
        matched["fp32"] += int(same.any(1).sum())
        matched["candidate"] += int(same.any(0).sum())
    return {"detections_fp32": totals["fp32"], "detections": totals["candidate"],
            "fp32_detections_kept": matched["fp32"] / totals["fp32"] if totals["fp32"] else 1.0,
            "detections_in_fp32": matched["candidate"] / totals["candidate"] if totals["candidate"] else 1.0}


def run_torch(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
    with torch.no_grad():
        out = model(*inputs)
    out = out if isinstance(out, (tuple, list)) else (out,)
    return [o.numpy() for o in out]


def run_onnx(session: ort.InferenceSession, names: list[str], inputs: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
    with interrupts_held():
        return session.run(None, {name: t.numpy() for name, t in zip(names, inputs)})
