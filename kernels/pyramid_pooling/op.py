"""`torch.ops.edgestack.pyramid_pooling`: the op models call, and how it crosses into ONNX.

On CPU (and until the CUDA kernel is loaded) it runs the reference. For ONNX it is either decomposed
into `reference.pyramid_pooling` (portable flavour) or written as one `EdgePyramidPooling` node
(plugins flavour, `onnx_plugin_node`).
"""

from __future__ import annotations

import ctypes

import torch

from edgestack.errors import EdgestackError
from edgestack.kernels import CustomOp, PluginSignature, loader
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
    if x.shape[2] < 1 or x.shape[3] < 1:
        raise EdgestackError(f"pyramid_pooling: x must have H, W >= 1 to upsample to, got shape {tuple(x.shape)}")
    # Floats only; weight and bias may be wider than x (fp32 folded weights of an fp16 model, autocast), the
    # output is x's dtype on every path.
    if not (x.is_floating_point() and weight.is_floating_point() and bias.is_floating_point()):
        raise EdgestackError(
            f"pyramid_pooling: x, weight and bias must be floating point, got {x.dtype}, {weight.dtype}, "
            f"{bias.dtype}; cast them with .float() or .half()"
        )
    # The CUDA kernel reads every tensor through raw pointers on x's device.
    for name, t in (("weight", weight), ("bias", bias)):
        if t.device != x.device:
            raise EdgestackError(
                f"pyramid_pooling: {name} is on {t.device} but x is on {x.device}; move all inputs to one device"
            )


@torch.library.custom_op("edgestack::pyramid_pooling", mutates_args=())
def pyramid_pooling(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, bins: list[int], align_corners: bool
) -> torch.Tensor:
    check_inputs(x, weight, bias, bins)
    if _kernel_applies(x, weight, bins):
        return _kernel(x, weight, bias, bins, align_corners)
    # In x's dtype, as the kernel and the fake give it (a wider weight would widen the reference's output).
    return reference.pyramid_pooling(x, weight.to(x.dtype), bias.to(x.dtype), bins, align_corners)


def _kernel_applies(x, weight, bins) -> bool:
    """CUDA kernel for fp32/fp16 CUDA tensors within its limits (see kernel.h); else the reference."""
    floats = (torch.float32, torch.float16)
    if not (x.is_cuda and x.numel() and x.dtype in floats and weight.dtype in floats) or not loader.available():
        return False
    b, c, h, w = x.shape
    bins_c = (ctypes.c_int * len(bins))(*bins)
    with torch.cuda.device(x.device):  # the shared-memory limit is x's device's
        return loader.library().edgestack_pyramid_pooling_check(b, c, h, w, weight.shape[1], bins_c, len(bins)) == 0


def _kernel(x, weight, bias, bins, align_corners):
    lib = loader.library()
    x, weight = x.contiguous(), weight.contiguous()
    bias = bias.to(weight.dtype).contiguous()  # the kernel reads bias in weight's dtype
    b, c, h, w = x.shape
    nbins, reduced = weight.shape[:2]
    bins_c = (ctypes.c_int * nbins)(*bins)
    y = x.new_empty((b, c + nbins * reduced, h, w))
    workspace_bytes = lib.edgestack_pyramid_pooling_workspace_size(b, c, reduced, bins_c, nbins)
    workspace = torch.empty(workspace_bytes, dtype=torch.uint8, device=x.device)
    with torch.cuda.device(x.device):
        status = lib.edgestack_pyramid_pooling(
            x.data_ptr(),
            weight.data_ptr(),
            bias.data_ptr(),
            y.data_ptr(),
            workspace.data_ptr(),
            workspace_bytes,
            loader.dtype_code(x.dtype),
            loader.dtype_code(weight.dtype),
            b,
            c,
            h,
            w,
            reduced,
            bins_c,
            nbins,
            int(align_corners),
            torch.cuda.current_stream().cuda_stream,
        )
    loader.check(status, "pyramid_pooling")
    return y


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
