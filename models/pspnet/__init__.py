"""`pspnet`: semantic segmentation with a pyramid pooling module (PSPNet, CVPR 2017)."""

from __future__ import annotations

from typing import Any

import torch

from edgestack.models.pspnet.model import PSPNet
from edgestack.models.registry import AxisRange, ModelSpec, TensorSpec, register

CONFIGS: dict[str, dict[str, Any]] = {
    # The paper's model: dilated ResNet-50, 2048-channel features, R = 512 per bin, ADE20K's 150 classes.
    # Stages 3 and 4 dilated 2 and 4 in every block, as the official PSPNet (hszhao/semseg).
    "pspnet-r50": {"block": "bottleneck", "layers": (3, 4, 6, 3), "stem_width": 64, "head_channels": 512,
                   "num_classes": 150, "dilations": (2, 4)},
    # Edge/CPU size: dilated ResNet-18, 512-channel features, R = 128 per bin.
    "pspnet-r18": {"block": "basic", "layers": (2, 2, 2, 2), "stem_width": 32, "head_channels": 256,
                   "num_classes": 150, "dilations": (2, 4)},
}
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def build(config: dict[str, Any]) -> torch.nn.Module:
    return PSPNet(**config).eval()


def example_inputs(config: dict[str, Any], batch: int, height: int, width: int) -> tuple[torch.Tensor, ...]:
    return (torch.randn(batch, 3, height, width),)


register(
    ModelSpec(
        name="pspnet",
        task="segmentation",
        description="PSPNet: dilated ResNet (output stride 8) + pyramid pooling module, bins 1,2,3,6",
        configs=CONFIGS,
        default_config="pspnet-r50",
        build=build,
        example_inputs=example_inputs,
        inputs=lambda c: [TensorSpec("image", ("batch", 3, "height", "width"), doc="normalized RGB, NCHW")],
        outputs=lambda c: [TensorSpec("logits", ("batch", c["num_classes"], "height", "width"))],
        axes=lambda c: {
            "batch": AxisRange(1, 32),
            "height": AxisRange(65, 2049),
            "width": AxisRange(65, 2049),
        },
        default_size=lambda c: (473, 473),
        parity_sizes=lambda c: [(473, 473), (375, 500)],
        preprocess={"layout": "NCHW", "color": "RGB", "scale": 1 / 255, "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
                    "min_size": 65},
        parity_tolerance={"max_abs_over_max_ref": 1e-4, "argmax_agreement": 0.9999},
        postprocess=lambda c: {"kind": "segmentation", "num_classes": c["num_classes"], "output": "logits"},
    )
)
