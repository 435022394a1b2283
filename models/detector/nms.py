"""`torch.ops.edgestack.detection_nms`: per-class NMS + top-K padding with EfficientNMS's output layout.

Semantics (the same in PyTorch and in the portable ONNX tail): per image and class, boxes scoring above
`score_threshold` are visited by descending score and kept unless their IoU with a kept box exceeds
`iou_threshold` (ONNX NonMaxSuppression, at most K per class); of all kept boxes the K best by score are
returned in descending order (ties: lower class*N + box index first, as ONNX TopK), padded with zeros;
`num_detections` says how many are real.

For ONNX it becomes either standard ops (`portable_node`: NonMaxSuppression + ScatterND + TopK + gathers)
or one TensorRT `EfficientNMS_TRT` node (`efficient_nms_node`) on the same pre-NMS boxes and scores.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import torch
from onnx.defs import OpSchema

EFFICIENT_NMS = "EfficientNMS_TRT"


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of every box in a [N, 4] with every box in b [M, 4] (x1, y1, x2, y2) -> [N, M]; 0 for empty boxes."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def nms_indices(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, limit: int) -> torch.Tensor:
    """Greedy NMS over candidates `boxes` [N, 4] with `scores` [N]: kept indices by descending score."""
    order = torch.sort(scores, descending=True, stable=True).indices
    iou = box_iou(boxes[order], boxes[order])
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    keep = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        if len(keep) == limit:
            break
        suppressed |= iou[i] > iou_threshold
    return order[torch.tensor(keep, dtype=torch.long)]


@torch.library.custom_op("edgestack::detection_nms", mutates_args=())
def detection_nms(
    boxes: torch.Tensor, scores: torch.Tensor, max_detections: int, iou_threshold: float, score_threshold: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    # On the host, where its loop of data-dependent steps runs without a device sync per box (the torch backend
    # runs the model on CUDA); the outputs go back to the inputs' device.
    device, boxes, scores = boxes.device, boxes.cpu(), scores.cpu()
    batch, count, classes = scores.shape
    dense = torch.full((batch, classes * count), -1.0)
    for b in range(batch):
        for c in range(classes):
            candidates = torch.nonzero(scores[b, :, c] > score_threshold)[:, 0]
            kept = candidates[nms_indices(boxes[b, candidates], scores[b, candidates, c], iou_threshold,
                                          max_detections)]
            dense[b, c * count + kept] = scores[b, kept, c]
    top, index = torch.sort(dense, dim=1, descending=True, stable=True)
    top, index = top[:, :max_detections], index[:, :max_detections]
    valid = top >= 0
    picked = torch.gather(boxes, 1, (index % count)[..., None].expand(-1, -1, 4))
    outputs = (picked * valid[..., None], torch.where(valid, top, 0.0), torch.where(valid, index // count, 0),
               valid.sum(1))
    return tuple(output.to(device) for output in outputs)


@detection_nms.register_fake
def _(boxes, scores, max_detections, iou_threshold, score_threshold):
    batch = boxes.shape[0]
    return (
        boxes.new_empty((batch, max_detections, 4)),
        scores.new_empty((batch, max_detections)),
        boxes.new_empty((batch, max_detections), dtype=torch.int64),
        boxes.new_empty((batch,), dtype=torch.int64),
    )


def portable_node(boxes, scores, max_detections, iou_threshold, score_threshold):
    """The op in standard ONNX ops (opset 18), for torch.onnx's custom_translation_table."""
    from onnxscript import opset18 as op

    def const(value, dtype):
        return op.Constant(value=onnx.helper.make_tensor("c", dtype, [len(value)] if isinstance(value, list) else [],
                                                          value if isinstance(value, list) else [value]))

    int64, float32 = onnx.TensorProto.INT64, onnx.TensorProto.FLOAT
    scores_t = op.Transpose(scores, perm=[0, 2, 1])  # [B, C, N], as NonMaxSuppression wants
    selected = op.NonMaxSuppression(boxes, scores_t, const(max_detections, int64), const(iou_threshold, float32),
                                    const(score_threshold, float32))  # [M, 3]: batch, class, box
    shape = op.Shape(scores_t)
    batch, classes, count = (op.Gather(shape, const(i, int64)) for i in range(3))
    picked_scores = op.GatherND(scores_t, selected)
    sel_batch, sel_class, sel_box = (op.Gather(selected, const(i, int64), axis=1) for i in range(3))
    flat = op.Add(op.Mul(sel_class, count), sel_box)
    dense_shape = op.Concat(op.Unsqueeze(batch, const([0], int64)),
                            op.Unsqueeze(op.Mul(classes, count), const([0], int64)), axis=0)
    dense = op.Expand(const(-1.0, float32), dense_shape)
    dense = op.ScatterND(dense, op.Concat(op.Unsqueeze(sel_batch, const([1], int64)),
                                          op.Unsqueeze(flat, const([1], int64)), axis=1), picked_scores)
    top, index = op.TopK(dense, const([max_detections], int64), axis=1, largest=1, sorted=1)
    valid = op.GreaterOrEqual(top, const(0.0, float32))
    box_index = op.Mod(index, count)
    gather_index = op.Expand(op.Unsqueeze(box_index, const([2], int64)),
                             op.Concat(op.Shape(box_index), const([4], int64), axis=0))
    picked = op.GatherElements(boxes, gather_index, axis=1)
    zero_i, zero_f = const(0, int64), const(0.0, float32)
    return (
        op.Where(op.Unsqueeze(valid, const([2], int64)), picked, zero_f),
        op.Where(valid, top, zero_f),
        op.Where(valid, op.Div(index, count), zero_i),
        op.ReduceSum(op.Cast(valid, to=int64), const([1], int64), keepdims=0),
    )


def _efficient_nms_op():
    """onnxscript Op for EfficientNMS_TRT, registering its schema (int32 count/classes outputs) once."""
    from onnxscript.values import Op, Opset

    from edgestack.export.onnx_ops import PLUGIN_DOMAIN, PLUGIN_OPSET_VERSION

    try:
        onnx.defs.get_schema(EFFICIENT_NMS, PLUGIN_OPSET_VERSION, PLUGIN_DOMAIN)
    except onnx.defs.SchemaError:
        attr = OpSchema.AttrType
        onnx.defs.register_schema(OpSchema(
            EFFICIENT_NMS, PLUGIN_DOMAIN, PLUGIN_OPSET_VERSION,
            doc="TensorRT's built-in EfficientNMS plugin (version 1)",
            inputs=[OpSchema.FormalParameter("boxes", "T"), OpSchema.FormalParameter("scores", "T")],
            outputs=[OpSchema.FormalParameter("num_detections", "tensor(int32)"),
                     OpSchema.FormalParameter("detection_boxes", "T"),
                     OpSchema.FormalParameter("detection_scores", "T"),
                     OpSchema.FormalParameter("detection_classes", "tensor(int32)")],
            type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "fp32 or fp16")],
            attributes=[OpSchema.Attribute(name, kind, required=False) for name, kind in (
                ("background_class", attr.INT), ("box_coding", attr.INT), ("iou_threshold", attr.FLOAT),
                ("max_output_boxes", attr.INT), ("plugin_version", attr.STRING), ("score_activation", attr.INT),
                ("score_threshold", attr.FLOAT), ("class_agnostic", attr.INT))],
        ))
    return Op(Opset(PLUGIN_DOMAIN, PLUGIN_OPSET_VERSION), EFFICIENT_NMS)


def efficient_nms_node(boxes, scores, max_detections, iou_threshold, score_threshold):
    """Plugins ONNX: TensorRT's EfficientNMS_TRT on the pre-NMS boxes [B,N,4] (corners) and scores [B,N,C]
    (already sigmoid), then casts to this op's output types."""
    from onnxscript import opset18 as op

    count, det_boxes, det_scores, det_classes = _efficient_nms_op()(
        boxes, scores, background_class=-1, box_coding=0, iou_threshold=float(iou_threshold),
        max_output_boxes=int(max_detections), plugin_version="1", score_activation=0,
        score_threshold=float(score_threshold), class_agnostic=0,
    )
    int64 = onnx.TensorProto.INT64
    flat = op.Constant(value=onnx.helper.make_tensor("c", int64, [1], [-1]))
    return det_boxes, det_scores, op.Cast(det_classes, to=int64), op.Reshape(op.Cast(count, to=int64), flat)


TRANSLATIONS = {
    "portable": {torch.ops.edgestack.detection_nms.default: portable_node},
    "plugins": {torch.ops.edgestack.detection_nms.default: efficient_nms_node},
}


def compare_detections(expected: list[np.ndarray], got: list[np.ndarray]) -> dict[str, Any]:
    """Parity figures for (boxes, scores, classes, num_detections): rank by rank, a detection agrees when its
    class matches and its box overlaps the reference's with IoU >= 0.99; errors are over agreeing pairs."""
    (ref_boxes, ref_scores, ref_classes, ref_count), (boxes, scores, classes, count) = expected[:4], got[:4]
    agree = total = 0
    box_err = score_err = 0.0
    for b in range(len(ref_count)):
        n, m = int(ref_count[b]), int(count[b])
        total += max(n, m)
        k = min(n, m)
        iou = box_iou(torch.from_numpy(ref_boxes[b, :k]), torch.from_numpy(boxes[b, :k])).diagonal().numpy()
        same = (iou >= 0.99) & (ref_classes[b, :k] == classes[b, :k])
        agree += int(same.sum())
        if same.any():
            box_err = max(box_err, float(np.abs(ref_boxes[b, :k][same] - boxes[b, :k][same]).max()))
            score_err = max(score_err, float(np.abs(ref_scores[b, :k][same] - scores[b, :k][same]).max()))
    # rank-by-rank box error, the figures every parity table shows
    diff = np.abs(ref_boxes.astype(np.float64) - boxes)
    return {
        "max_abs": float(diff.max()),
        "max_abs_over_max_ref": float(diff.max()) / (float(np.abs(ref_boxes).max()) or 1.0),
        "rel_l2": float(np.linalg.norm(diff) / (np.linalg.norm(ref_boxes.astype(np.float64)) or 1.0)),
        "detections": total,
        "detection_agreement": agree / total if total else 1.0,
        "box_max_abs": box_err,
        "score_max_abs": score_err,
        "finite": bool(np.isfinite(boxes).all() and np.isfinite(scores).all()),
    }
