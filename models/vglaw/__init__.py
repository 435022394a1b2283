"""`vglaw`: text-prompted defect grounding (VG-LAW) -> one box and one mask for the defect a sentence names.

Deployed as two graphs (`extras["graphs"]`), exported side by side into one bundle with the tokenizer:
`text` (token ids -> Phi for every block + [CLS] feature) and `vision` (image + those -> box + mask).
A line that always asks the same questions runs the text graph once per question (edgestack.runtime.grounding
caches its outputs) and only the vision graph per image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from edgestack.models.registry import AxisRange, ModelSpec, TensorSpec, register
from edgestack.models.vglaw.model import TextGraph, VisionGraph, build
from edgestack.models.vglaw.tokenizer import MAX_LENGTH

_SMALL = {"vocab": 512, "image_size": 128, "patch": 16, "dim": 192, "depth": 6, "heads": 6, "text_dim": 256,
          "text_depth": 2, "text_heads": 4, "max_length": MAX_LENGTH, "groups": 4, "reduction": 16, "rank": 32,
          "pool_dim": 64}
CONFIGS: dict[str, dict[str, Any]] = {
    "vglaw-s": {**_SMALL, "adaptive": True},
    # The paper's ablation: the same network with Phi disabled (static backbone; the prompt reaches the heads only).
    "vglaw-s-static": {**_SMALL, "adaptive": False},
}
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
MASK_THRESHOLD = 0.35  # as in the paper
WEIGHTS_DIR = Path(__file__).parent / "weights"
SHIPPED = {"vglaw-s": WEIGHTS_DIR / "vglaw-s.safetensors"}
PREPROCESS = {"layout": "NCHW", "color": "RGB", "scale": 1 / 255, "mean": IMAGENET_MEAN, "std": IMAGENET_STD}


def _size(c: dict[str, Any]) -> tuple[int, int]:
    return c["image_size"], c["image_size"]


def _text_example(c: dict[str, Any], batch: int, height: int, width: int) -> tuple[torch.Tensor, ...]:
    lengths = torch.randint(3, c["max_length"] + 1, (batch,))
    mask = (torch.arange(c["max_length"])[None] < lengths[:, None]).long()
    ids = torch.randint(4, c["vocab"], (batch, c["max_length"])) * mask
    return ids, mask


def _vision_example(c: dict[str, Any], batch: int, height: int, width: int) -> tuple[torch.Tensor, ...]:
    # Phi at the scale training leaves it (|Phi| ~ 0.1), so parity exercises the adaptive path for real.
    return (torch.randn(batch, 3, height, width), 0.1 * torch.randn(batch, c["depth"], c["rank"], c["rank"]),
            torch.randn(batch, c["text_dim"]))


def _phi_spec(c: dict[str, Any]) -> TensorSpec:
    return TensorSpec("phi", ("batch", c["depth"], c["rank"], c["rank"]),
                      doc="language-adaptive factor of every block's qkv weight: W_i = W0_i + P phi_i Q^T")


def _text_feature_spec(c: dict[str, Any]) -> TensorSpec:
    return TensorSpec("text_feature", ("batch", c["text_dim"]), doc="[CLS] feature for the box and mask heads")


def _compare_all(expected, got) -> dict[str, Any]:
    """The worst of each parity figure over every output (both graphs have several float outputs)."""
    from edgestack.export.parity import compare

    figures = [compare(e, g, "grounding") for e, g in zip(expected, got)]
    return {key: max(f[key] for f in figures) for key in ("max_abs", "max_abs_over_max_ref", "rel_l2")} | {
        "finite": all(f["finite"] for f in figures)}


def _graph_spec(name: str, **fields) -> ModelSpec:
    common = {"configs": CONFIGS, "default_config": "vglaw-s", "build": build, "default_size": _size,
              "axes": lambda c: {"batch": AxisRange(1, 32)}, "parity_sizes": lambda c: [_size(c)],
              "parity_tolerance": {"max_abs_over_max_ref": 1e-4}, "extras": {"parity_compare": _compare_all}}
    return ModelSpec(name=name, **(common | fields))


TEXT = _graph_spec(
    "vglaw-text", task="grounding_text", description="VG-LAW prompt graph: token ids -> adaptive weights",
    example_inputs=_text_example,
    # Value ranges checked on every backend: onnxruntime's Gather wraps a negative id round the vocabulary.
    inputs=lambda c: [TensorSpec("ids", ("batch", c["max_length"]), "int64", "WordPiece ids, [CLS] ... [SEP], 0-pad",
                                 (0, c["vocab"] - 1)),
                      TensorSpec("attention_mask", ("batch", c["max_length"]), "int64", "1 = token, 0 = padding",
                                 (0, 1))],
    outputs=lambda c: [_phi_spec(c), _text_feature_spec(c)],
    preprocess={"tokenizer": "tokenizer.json", "max_length": MAX_LENGTH},
    postprocess=lambda c: {"kind": "grounding_text"},
)
VISION = _graph_spec(
    "vglaw-vision", task="grounding", description="VG-LAW image graph: image + adaptive weights -> box + mask",
    example_inputs=_vision_example,
    inputs=lambda c: [TensorSpec("image", ("batch", 3, c["image_size"], c["image_size"]), doc="normalized RGB"),
                      _phi_spec(c), _text_feature_spec(c)],
    outputs=lambda c: [TensorSpec("box", ("batch", 4), doc="x1, y1, x2, y2 in input pixels"),
                       TensorSpec("mask", ("batch", 1, c["image_size"], c["image_size"]), doc="probability 0..1")],
    preprocess=PREPROCESS,
    postprocess=lambda c: {"kind": "grounding", "mask_threshold": MASK_THRESHOLD},
)

register(
    ModelSpec(
        name="vglaw",
        task="grounding",
        description="VG-LAW text-prompted defect grounding: a ViT with language-adaptive q/k/v weights, box + mask "
        "for the defect a sentence names; deployed as a text graph and a vision graph",
        configs=CONFIGS,
        default_config="vglaw-s",
        build=build,
        example_inputs=lambda c, b, h, w: (_vision_example(c, b, h, w)[0], *_text_example(c, b, h, w)),
        inputs=lambda c: VISION.inputs(c)[:1] + TEXT.inputs(c),
        outputs=lambda c: [TensorSpec("box", ("batch", 4), doc="cx, cy, w, h in 0..1"),
                           TensorSpec("mask_logits", ("batch", 1, c["image_size"], c["image_size"]))],
        axes=lambda c: {"batch": AxisRange(1, 32)},
        default_size=_size,
        parity_sizes=lambda c: [_size(c)],
        preprocess=PREPROCESS,
        postprocess=lambda c: {"kind": "grounding", "mask_threshold": MASK_THRESHOLD},
        extras={
            "graphs": {"text": (TEXT, TextGraph), "vision": (VISION, VisionGraph)},
            "bundle_files": {"tokenizer.json": str(Path(__file__).parent / "tokenizer.json")},
            "default_checkpoint": {name: str(path) for name, path in SHIPPED.items()},
        },
    )
)
