"""`torch.ops.edgestack.pyramid_pooling`: the op models call, and how it crosses into ONNX.

On CPU (and until the CUDA kernel is loaded) it runs the reference. For ONNX it is either decomposed
into `reference.pyramid_pooling` (portable flavour) or written as one `EdgePyramidPooling` node
(plugins flavour, `onnx_plugin_node`).
"""

from __future__ import annotations

import torch

from edgestack.errors import EdgestackError
from edgestack.kernels import CustomOp, PluginSignature
from edgestack.kernels.autograd import register_reference_autograd
from edgestack.kernels.pyramid_pooling import reference

PLUGIN = PluginSignature(
    name="EdgePyramidPooling",
    version="1",
    inputs=("x", "weight", "bias"),
    outputs=("y",),
    attributes={"bins": list, "align_corners": int, "plugin_version": str},
)


def check_inputs(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, bins: list[int]) -> None:
    if x.dim() != 4:
        raise EdgestackError(f"pyramid_pooling: x must be [B,C,H,W], got shape {tuple(x.shape)}")
    nbins = len(bins)
    if nbins == 0 or any(int(b) < 1 for b in bins):
        raise EdgestackError(f"pyramid_pooling: bins must be positive integers, got {list(bins)}")
    if weight.dim() != 3 or weight.shape[0] != nbins or weight.shape[2] != x.shape[1]:
        raise EdgestackError(
            f"pyramid_pooling: weight must be [nbins={nbins}, R, C={x.shape[1]}], got {tuple(weight.shape)}"
        )
    if tuple(bias.shape) != tuple(weight.shape[:2]):
        raise EdgestackError(f"pyramid_pooling: bias must be [{nbins}, {weight.shape[1]}], got {tuple(bias.shape)}")


@torch.library.custom_op("edgestack::pyramid_pooling", mutates_args=())
def pyramid_pooling(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, bins: list[int], align_corners: bool
) -> torch.Tensor:
    check_inputs(x, weight, bias, bins)
    return reference.pyramid_pooling(x, weight, bias, bins, align_corners)


@pyramid_pooling.register_fake
def _(x, weight, bias, bins, align_corners):
    check_inputs(x, weight, bias, bins)
    b, c, h, w = x.shape
    return x.new_empty((b, c + weight.shape[0] * weight.shape[1], h, w))


register_reference_autograd(pyramid_pooling, reference.pyramid_pooling, num_tensors=3)


def onnx_plugin_node(x, weight, bias, bins, align_corners):
    """Plugins ONNX: one custom node carrying the plugin's fields as attributes."""
    from edgestack.export.onnx_ops import plugin_op

    return plugin_op(PLUGIN)(
        x, weight, bias, bins=list(bins), align_corners=int(align_corners), plugin_version=PLUGIN.version
    )


def run_plugin_node(x, weight, bias, bins, align_corners, plugin_version):
    tensors = (torch.from_numpy(t) for t in (x, weight, bias))
    return reference.pyramid_pooling(*tensors, tuple(bins), bool(align_corners)).numpy()


CUSTOM_OP = CustomOp(
    torch.ops.edgestack.pyramid_pooling.default,
    reference.pyramid_pooling,
    onnx_plugin_node,
    PLUGIN,
    run_plugin_node,
)
