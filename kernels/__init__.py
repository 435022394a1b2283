"""Our custom ops: one folder each (reference, torch op, CUDA kernel, TensorRT plugin)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class CustomOp:
    """How one op crosses into ONNX: decomposed (portable) or as a plugin node (plugins flavour)."""

    torch_op: Any
    decomposition: Any
    onnx_plugin_node: Any
    plugin_name: str
    plugin_version: str


def custom_ops() -> list[CustomOp]:
    from edgestack.kernels.pyramid_pooling import op as pyramid_pooling
    from edgestack.kernels.window_attention import op as window_attention

    return [
        CustomOp(
            torch.ops.edgestack.pyramid_pooling.default,
            pyramid_pooling.reference.pyramid_pooling,
            pyramid_pooling.onnx_plugin_node,
            pyramid_pooling.PLUGIN_NAME,
            pyramid_pooling.PLUGIN_VERSION,
        ),
        CustomOp(
            torch.ops.edgestack.window_masked_attention.default,
            window_attention.decomposition,
            window_attention.onnx_plugin_node,
            window_attention.PLUGIN_NAME,
            window_attention.PLUGIN_VERSION,
        ),
    ]
