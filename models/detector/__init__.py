"""`detector`: anchor-free one-stage defect detector (FPN + parallel cls/box heads), exported with NMS inside.

One class, "defect": the synthetic generator's masks are the union of all defects of an image and a
connected component cannot be traced back to its defect kind (overlaps, multi-blob stains), so per-kind
labels are not recoverable. `detector-student` is distilled from `detector-teacher` with Task-Balanced
Distillation (edgestack.train.tbd).
"""

from __future__ import annotations

from typing import Any

import torch

from edgestack.models.detector import nms
from edgestack.models.detector.model import STRIDES, Detector
from edgestack.models.registry import AxisRange, ModelSpec, TensorSpec, register

CLASSES = ("defect",)
_COMMON = {"num_classes": len(CLASSES), "max_detections": 100, "iou_threshold": 0.6, "score_threshold": 0.05}
CONFIGS: dict[str, dict[str, Any]] = {
    "detector-teacher": {"stem": 32, "widths": (48, 96, 192, 320), "blocks": (1, 2, 2, 1), "fpn": 128,
                         "head_convs": 2, **_COMMON},
    # Edge size: <= 1/4 of the teacher's FLOPs (tests/test_detector.py checks it).
    "detector-student": {"stem": 16, "widths": (24, 48, 96, 160), "blocks": (1, 1, 1, 1), "fpn": 64,
                         "head_convs": 2, **_COMMON},
}
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def build(config: dict[str, Any]) -> torch.nn.Module:
    return Detector(**config).eval()


def example_inputs(config: dict[str, Any], batch: int, height: int, width: int) -> tuple[torch.Tensor, ...]:
    return (torch.randn(batch, 3, height, width),)


def _outputs(config: dict[str, Any]) -> list[TensorSpec]:
    k = config["max_detections"]
    return [
        TensorSpec("boxes", ("batch", k, 4), doc="x1, y1, x2, y2 in input pixels; zero rows past num_detections"),
        TensorSpec("scores", ("batch", k), doc="descending; 0 past num_detections"),
        TensorSpec("classes", ("batch", k), dtype="int64", doc="index into postprocess.classes"),
        TensorSpec("num_detections", ("batch",), dtype="int64"),
    ]


register(
    ModelSpec(
        name="detector",
        task="detection",
        description="anchor-free one-stage defect detector: ResNet-style backbone + FPN (strides 8/16/32) + "
        "parallel cls/box heads, NMS in the graph (EfficientNMS_TRT in the plugins flavour)",
        configs=CONFIGS,
        default_config="detector-student",
        build=build,
        example_inputs=example_inputs,
        inputs=lambda c: [TensorSpec("image", ("batch", 3, "height", "width"), doc="normalized RGB, NCHW")],
        outputs=_outputs,
        # Multiples of the coarsest stride; >= 128 so the locations (336 at 128x128) outnumber K for ONNX TopK.
        axes=lambda c: {
            "batch": AxisRange(1, 32),
            "height": AxisRange(128, 1024, STRIDES[-1]),
            "width": AxisRange(128, 1024, STRIDES[-1]),
        },
        default_size=lambda c: (128, 128),
        parity_sizes=lambda c: [(128, 128), (160, 224)],
        preprocess={"layout": "NCHW", "color": "RGB", "scale": 1 / 255, "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
                    "min_size": 128},
        parity_tolerance={"box_max_abs": 1e-3, "score_max_abs": 1e-5, "detection_agreement": 0.99},
        postprocess=lambda c: {"kind": "detection", "classes": list(CLASSES), "boxes": "boxes", "scores": "scores",
                               "labels": "classes", "count": "num_detections",
                               "score_threshold": c["score_threshold"], "iou_threshold": c["iou_threshold"]},
        extras={
            "onnx_translations": nms.TRANSLATIONS,
            "parity_compare": nms.compare_detections,
            "parity_skip": {"plugins": "EfficientNMS_TRT is a TensorRT plugin that onnxruntime cannot run; only "
                                       "its structure is checked (tests/test_detector_export.py)"},
        },
    )
)
