"""`torch.ops.edgestack.window_masked_attention`: the op MAT calls, and how it crosses into ONNX.

On CPU (and until the CUDA kernel is loaded) it runs the reference. For ONNX it is either decomposed
into `reference.window_masked_attention` (portable flavour) or written as one
`EdgeWindowMaskedAttention` node (plugins flavour, `onnx_plugin_node`).
"""

from __future__ import annotations

import torch

from edgestack.errors import EdgestackError
from edgestack.kernels import CustomOp, PluginSignature, loader
from edgestack.kernels.autograd import register_reference_autograd
from edgestack.kernels.window_attention import reference

PLUGIN = PluginSignature(
    name="EdgeWindowMaskedAttention",
    version="1",
    inputs=("q", "k", "v", "mask"),
    outputs=("out", "mask_out"),
    attributes={
        "num_heads": int,
        "window_size": int,
        "shift_size": int,
        "scale": float,
        "masked_bias": float,
        "plugin_version": str,
    },
)


def resolve_scale(channels: int, num_heads: int, scale: float) -> float:
    """scale <= 0 means the default head_dim^-0.5."""
    return scale if scale > 0 else (channels // num_heads) ** -0.5


def check_inputs(q, k, v, mask, num_heads: int, window_size: int, shift_size: int) -> None:
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise EdgestackError(
            "window_masked_attention: q, k, v must all be [B,H,W,C] of one shape, got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    b, h, w, c = q.shape
    if tuple(mask.shape) != (b, h, w, 1):
        raise EdgestackError(f"window_masked_attention: mask must be [{b},{h},{w},1], got {tuple(mask.shape)}")
    if not q.is_floating_point() or k.dtype != q.dtype or v.dtype != q.dtype:
        raise EdgestackError(
            "window_masked_attention: q, k, v must share one floating-point dtype (fp32 or fp16 for the CUDA "
            f"kernel), got {q.dtype}, {k.dtype}, {v.dtype}; cast all three with .float() or .half()"
        )
    # The contract's mask is float: a bool/int mask would change mask_out's dtype between the paths.
    if not mask.is_floating_point():
        raise EdgestackError(
            f"window_masked_attention: mask must be floating point (1 valid, 0 invalid), got {mask.dtype}; "
            "pass mask.to(q.dtype)"
        )
    # The CUDA kernel reads every tensor through raw pointers on q's device.
    for name, t in (("k", k), ("v", v), ("mask", mask)):
        if t.device != q.device:
            raise EdgestackError(
                f"window_masked_attention: {name} is on {t.device} but q is on {q.device}; move all inputs to one "
                "device"
            )
    if c < 1:
        raise EdgestackError("window_masked_attention: q, k, v have C=0 channels; give them num_heads or more")
    if num_heads < 1 or c % num_heads:
        raise EdgestackError(f"window_masked_attention: C={c} is not divisible by num_heads={num_heads}")
    if window_size < 1 or h % window_size or w % window_size:
        raise EdgestackError(
            f"window_masked_attention: H={h} and W={w} must be multiples of window_size={window_size}; pad the input"
        )
    if not 0 <= shift_size < window_size:
        raise EdgestackError(f"window_masked_attention: shift_size={shift_size} must be in [0, {window_size})")


@torch.library.custom_op("edgestack::window_masked_attention", mutates_args=())
def window_masked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    num_heads: int,
    window_size: int,
    shift_size: int,
    scale: float,
    masked_bias: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    check_inputs(q, k, v, mask, num_heads, window_size, shift_size)
    if _kernel_applies(q, num_heads, window_size, shift_size):
        return _kernel(q, k, v, mask, num_heads, window_size, shift_size, scale, masked_bias)
    return _reference(q, k, v, mask, num_heads, window_size, shift_size, scale, masked_bias)


def _kernel_applies(q, num_heads, window_size, shift_size) -> bool:
    """CUDA kernel for fp32/fp16 CUDA tensors within its limits (head_dim <= 64); else the reference."""
    if not (q.is_cuda and q.numel() and q.dtype in (torch.float32, torch.float16)) or not loader.available():
        return False
    b, h, w, c = q.shape
    return loader.library().edgestack_window_attention_check(b, h, w, c, num_heads, window_size, shift_size) == 0


def _kernel(q, k, v, mask, num_heads, window_size, shift_size, scale, masked_bias):
    q, k, v = (t.contiguous() for t in (q, k, v))
    mask_in = mask.to(q.dtype).contiguous()
    out, mask_out = torch.empty_like(q), torch.empty_like(mask_in)
    b, h, w, c = q.shape
    with torch.cuda.device(q.device):
        status = loader.library().edgestack_window_attention(
            q.data_ptr(),
            k.data_ptr(),
            v.data_ptr(),
            mask_in.data_ptr(),
            out.data_ptr(),
            mask_out.data_ptr(),
            loader.dtype_code(q.dtype),
            b,
            h,
            w,
            c,
            num_heads,
            window_size,
            shift_size,
            resolve_scale(c, num_heads, scale),
            masked_bias,
            torch.cuda.current_stream().cuda_stream,
        )
    loader.check(status, "window_masked_attention")
    return out, mask_out.to(mask.dtype)


@window_masked_attention.register_fake
def _(q, k, v, mask, num_heads, window_size, shift_size, scale, masked_bias):
    check_inputs(q, k, v, mask, num_heads, window_size, shift_size)
    # Contiguous, as every real path returns them: empty_like would keep a permuted q's strides, and
    # torch.compile then failed its stride assertion on the real output.
    return (torch.empty(q.shape, dtype=q.dtype, device=q.device),
            torch.empty(mask.shape, dtype=mask.dtype, device=mask.device))


def _reference(q, k, v, mask, num_heads, window_size, shift_size, scale, masked_bias):
    scale = resolve_scale(q.shape[-1], num_heads, scale)
    return reference.window_masked_attention(q, k, v, mask, num_heads, window_size, shift_size, scale, masked_bias)


register_reference_autograd(window_masked_attention, _reference, num_tensors=4)


def onnx_plugin_node(q, k, v, mask, num_heads, window_size, shift_size, scale, masked_bias):
    """Plugins ONNX: one custom node carrying the plugin's fields as attributes (scale resolved)."""
    from edgestack.export.onnx_ops import plugin_op

    return plugin_op(PLUGIN)(
        q,
        k,
        v,
        mask,
        num_heads=num_heads,
        window_size=window_size,
        shift_size=shift_size,
        scale=float(resolve_scale(_static_size(q.shape[-1]), num_heads, scale)),
        masked_bias=float(masked_bias),
        plugin_version=PLUGIN.version,
        _num_outputs=2,
    )


def _static_size(dim) -> int:
    return dim if isinstance(dim, int) else int(dim.value)


def run_plugin_node(q, k, v, mask, num_heads, window_size, shift_size, scale, masked_bias, plugin_version):
    tensors = (torch.from_numpy(t) for t in (q, k, v, mask))
    out, mask_out = _reference(*tensors, num_heads, window_size, shift_size, scale, masked_bias)
    return out.numpy(), mask_out.numpy()


CUSTOM_OP = CustomOp(
    torch.ops.edgestack.window_masked_attention.default,
    _reference,
    onnx_plugin_node,
    PLUGIN,
    run_plugin_node,
)
