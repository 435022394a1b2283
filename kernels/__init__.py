"""Our custom ops: one folder each (reference, torch op, CUDA kernel, TensorRT plugin)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PluginSignature:
    """A plugin node as it appears in ONNX and to TensorRT: op_type = plugin name, fields = attributes."""

    name: str
    version: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attributes: dict[str, type]


@dataclass(frozen=True)
class CustomOp:
    """How one op crosses into ONNX: decomposed (portable) or as a plugin node (plugins flavour)."""

    torch_op: Any
    decomposition: Callable
    onnx_plugin_node: Callable
    plugin: PluginSignature
    run_plugin_node: Callable
    """(numpy inputs..., **node attributes) -> numpy outputs: executes a plugin node with the reference."""


def custom_ops() -> list[CustomOp]:
    from edgestack.kernels.pyramid_pooling import op as pyramid_pooling
    from edgestack.kernels.window_attention import op as window_attention

    return [module.CUSTOM_OP for module in (pyramid_pooling, window_attention)]
