"""`defectseg`: concealed (low-contrast) defect segmentation, CDS2K-style — a per-pixel defect probability.

The shipped `defectseg-s` weights (trained from scratch on the synthetic set of edgestack.train.synthetic,
no download) are exposed as `extras["default_checkpoint"]`; their training config and held-out metrics
are in weights/defectseg-s.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from edgestack.models.defectseg.model import STRIDE, DefectSeg
from edgestack.models.registry import AxisRange, ModelSpec, TensorSpec, register

CONFIGS: dict[str, dict[str, Any]] = {
    # Edge/CPU size: <= 5M parameters and <= 5 GMACs at 352x352 (tests/test_defectseg.py checks both).
    "defectseg-s": {"stem": 16, "widths": (24, 48, 96, 192), "blocks": (2, 2, 2, 2), "decoder": 64},
    "defectseg-m": {"stem": 24, "widths": (32, 64, 128, 256), "blocks": (2, 2, 3, 2), "decoder": 96},
}
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
WEIGHTS_DIR = Path(__file__).parent / "weights"
SHIPPED = {"defectseg-s": WEIGHTS_DIR / "defectseg-s.safetensors"}


def build(config: dict[str, Any]) -> torch.nn.Module:
    return DefectSeg(**config).eval()


def example_inputs(config: dict[str, Any], batch: int, height: int, width: int) -> tuple[torch.Tensor, ...]:
    return (torch.randn(batch, 3, height, width),)


register(
    ModelSpec(
        name="defectseg",
        task="defect_segmentation",
        description="concealed-defect segmentation: narrow ResNet + pyramid pooling + multi-scale decoder, "
        "per-pixel defect probability",
        configs=CONFIGS,
        default_config="defectseg-s",
        build=build,
        example_inputs=example_inputs,
        inputs=lambda c: [TensorSpec("image", ("batch", 3, "height", "width"), doc="normalized RGB, NCHW")],
        outputs=lambda c: [
            TensorSpec("prob", ("batch", 1, "height", "width"), doc="per-pixel defect probability 0..1")
        ],
        # Height and width are multiples of the encoder stride (32) so every pyramid level aligns with the input.
        axes=lambda c: {
            "batch": AxisRange(1, 32),
            "height": AxisRange(64, 2048, STRIDE),
            "width": AxisRange(64, 2048, STRIDE),
        },
        default_size=lambda c: (352, 352),
        parity_sizes=lambda c: [(352, 352), (256, 384)],
        preprocess={"layout": "NCHW", "color": "RGB", "scale": 1 / 255, "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
                    "min_size": 64},
        # The output is a probability: an absolute bound. On a defect-free input every probability is ~1e-4,
        # so an error relative to the largest one says nothing (1e-7 absolute read as 1e-3 relative).
        parity_tolerance={"max_abs": 1e-5},
        postprocess=lambda c: {"kind": "defect_probability", "output": "prob", "threshold": 0.5},
        extras={"default_checkpoint": {name: str(path) for name, path in SHIPPED.items()}},
    )
)
