"""CUDA kernels vs their PyTorch references in float64 (GPU machine only; skipped without CUDA).

Outputs are poisoned with NaN before each launch so an unwritten element fails the test. Inputs are fresh
random draws per case. Tolerances (||out - ref|| / ||ref||): fp32 <= 1e-5, fp16 <= 5e-3.
"""

from __future__ import annotations

import ctypes

import pytest
import torch
from kernel_checks import TOLERANCE, make_mask, misaligned, rel_err

import edgestack.kernels.pyramid_pooling.op  # noqa: F401  (registers torch.ops.edgestack.pyramid_pooling)
import edgestack.kernels.window_attention.op  # noqa: F401  (registers the window attention op)
from edgestack.errors import EdgestackError
from edgestack.kernels import loader
from edgestack.kernels.pyramid_pooling import reference as pp_reference
from edgestack.kernels.window_attention import reference as wa_reference

pytestmark = pytest.mark.gpu

DTYPES = [torch.float32, torch.float16]


@pytest.fixture(scope="module")
def lib():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    if not loader.available():
        pytest.skip(f"{loader.LIBRARY_NAME} not built (cmake -S . -B build && cmake --build build)")
    return loader.library()


# (B, H, W, C, heads, window, shift): MAT's shapes (head dim 30) and others (head dims 4..48, windows 4..16).
WA_SHAPES = [
    (1, 64, 64, 180, 6, 8, 4),
    (2, 32, 32, 180, 6, 16, 8),
    (1, 16, 16, 180, 6, 16, 0),
    (2, 16, 24, 64, 4, 8, 0),
    (1, 14, 21, 96, 2, 7, 3),
    (3, 8, 8, 8, 2, 4, 2),
    (1, 16, 16, 42, 3, 16, 4),  # head dim 14, 256 tokens: fp16 tensor-core kernel, half2 loads
    (2, 8, 8, 15, 3, 8, 4),  # odd channels and head dim 5: tensor-core kernel with scalar loads
    (1, 24, 24, 96, 3, 12, 6),  # head dim 32, 144 tokens: last key tile partly beyond the window
]


def run_window_attention(lib, q, k, v, mask, heads, window, shift, scale=-1.0, masked_bias=-100.0):
    out = torch.full_like(q, float("nan"))
    mask_out = torch.full_like(mask, float("nan"))
    b, h, w, c = q.shape
    status = lib.edgestack_window_attention(
        q.data_ptr(), k.data_ptr(), v.data_ptr(), mask.data_ptr(), out.data_ptr(), mask_out.data_ptr(),
        loader.dtype_code(q.dtype), b, h, w, c, heads, window, shift, scale, masked_bias,
        torch.cuda.current_stream().cuda_stream,
    )  # fmt: skip
    loader.check(status, "window attention")
    torch.cuda.synchronize()
    return out, mask_out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mask_kind", ["valid", "invalid", "random"])
@pytest.mark.parametrize("shape", WA_SHAPES)
def test_window_attention_matches_reference(lib, shape, mask_kind, dtype):
    b, h, w, c, heads, window, shift = shape
    q, k, v = (torch.randn(b, h, w, c, device="cuda", dtype=dtype) for _ in range(3))
    mask = make_mask(mask_kind, b, h, w, dtype, "cuda")
    out, mask_out = run_window_attention(lib, q, k, v, mask, heads, window, shift)
    assert torch.isfinite(out).all() and torch.isfinite(mask_out).all(), "unwritten or non-finite outputs"
    scale = (c // heads) ** -0.5
    ref, ref_mask = wa_reference.window_masked_attention(
        q.double(), k.double(), v.double(), mask.double(), heads, window, shift, scale, -100.0
    )
    assert rel_err(out, ref) <= TOLERANCE[dtype]
    assert torch.equal(mask_out.double(), ref_mask)


def test_window_attention_custom_op_uses_kernel(lib):
    q, k, v = (torch.randn(2, 32, 32, 180, device="cuda", dtype=torch.float16) for _ in range(3))
    mask = make_mask("random", 2, 32, 32, torch.float32, "cuda")  # mask dtype may differ from q
    out, mask_out = torch.ops.edgestack.window_masked_attention(q, k, v, mask, 6, 8, 4, -1.0, -100.0)
    ref, ref_mask = wa_reference.window_masked_attention(
        q.double(), k.double(), v.double(), mask.double(), 6, 8, 4, 30**-0.5, -100.0
    )
    assert out.dtype == q.dtype and mask_out.dtype == mask.dtype
    assert rel_err(out, ref) <= TOLERANCE[torch.float16]
    assert torch.equal(mask_out.double(), ref_mask)


def test_window_attention_head_dim_beyond_kernel_falls_back(lib):
    q, k, v = (torch.randn(1, 8, 8, 160, device="cuda") for _ in range(3))
    mask = make_mask("random", 1, 8, 8, torch.float32, "cuda")
    out, _ = torch.ops.edgestack.window_masked_attention(q, k, v, mask, 2, 8, 0, -1.0, -100.0)
    ref, _ = wa_reference.window_masked_attention(q.double(), k.double(), v.double(), mask.double(), 2, 8, 0)
    assert rel_err(out, ref) <= 1e-5


# (B, C, H, W, R, bins, align_corners): PSPNet's, sizes no bin divides, bins larger than the map.
PP_SHAPES = [
    (1, 2048, 60, 60, 512, (1, 2, 3, 6), True),
    (2, 2048, 61, 47, 512, (1, 2, 3, 6), True),
    (2, 64, 13, 9, 16, (1, 2, 3, 6), False),
    (1, 32, 5, 4, 8, (1, 2, 3, 6), True),
    (3, 16, 7, 11, 4, (2, 4), False),
]


def run_pyramid_pooling(lib, x, weight, bias, bins, align_corners):
    b, c, h, w = x.shape
    nbins, reduced = weight.shape[:2]
    bins_c = (ctypes.c_int * nbins)(*bins)
    y = torch.full((b, c + nbins * reduced, h, w), float("nan"), device="cuda", dtype=x.dtype)
    size = lib.edgestack_pyramid_pooling_workspace_size(b, c, reduced, bins_c, nbins)
    workspace = torch.full((size,), 255, dtype=torch.uint8, device="cuda")  # NaN floats: no reliance on zeros
    status = lib.edgestack_pyramid_pooling(
        x.data_ptr(), weight.data_ptr(), bias.data_ptr(), y.data_ptr(), workspace.data_ptr(), size,
        loader.dtype_code(x.dtype), loader.dtype_code(weight.dtype), b, c, h, w, reduced, bins_c, nbins,
        int(align_corners), torch.cuda.current_stream().cuda_stream,
    )  # fmt: skip
    loader.check(status, "pyramid pooling")
    torch.cuda.synchronize()
    return y


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", PP_SHAPES)
def test_pyramid_pooling_matches_reference(lib, shape, dtype):
    b, c, h, w, reduced, bins, align_corners = shape
    x = torch.randn(b, c, h, w, device="cuda", dtype=dtype)
    weight = (torch.randn(len(bins), reduced, c, device="cuda") * c**-0.5).to(dtype)
    bias = (torch.randn(len(bins), reduced, device="cuda") * 0.1).to(dtype)
    y = run_pyramid_pooling(lib, x, weight, bias, bins, align_corners)
    assert torch.isfinite(y).all(), "unwritten or non-finite outputs"
    ref = pp_reference.pyramid_pooling(x.double(), weight.double(), bias.double(), bins, align_corners)
    assert torch.equal(y[:, :c], x), "the concat copy of x must be exact"
    assert rel_err(y, ref) <= TOLERANCE[dtype]
    assert rel_err(y[:, c:], ref[:, c:]) <= TOLERANCE[dtype]


def test_pyramid_pooling_custom_op_uses_kernel(lib):
    x = torch.randn(2, 256, 61, 47, device="cuda", dtype=torch.float16)
    weight = (torch.randn(4, 64, 256, device="cuda") / 16).half()
    bias = torch.randn(4, 64, device="cuda").half()
    y = torch.ops.edgestack.pyramid_pooling(x, weight, bias, [1, 2, 3, 6], True)
    ref = pp_reference.pyramid_pooling(x.double(), weight.double(), bias.double(), (1, 2, 3, 6), True)
    assert rel_err(y, ref) <= TOLERANCE[torch.float16]


@pytest.mark.parametrize("dtype", DTYPES)
def test_custom_ops_take_scalar_paths_for_misaligned_tensors(lib, dtype):
    """Contiguous views one element into larger tensors reach the kernels as they are: even channels, head dim
    and width would take the vector loads, which would fault on these addresses."""
    q, k, v = (misaligned(torch.randn(1, 16, 16, 60, device="cuda", dtype=dtype)) for _ in range(3))
    mask = misaligned(make_mask("random", 1, 16, 16, dtype, "cuda"))
    out, mask_out = torch.ops.edgestack.window_masked_attention(q, k, v, mask, 2, 8, 4, -1.0, -100.0)
    ref, ref_mask = wa_reference.window_masked_attention(
        q.double(), k.double(), v.double(), mask.double(), 2, 8, 4, 30**-0.5, -100.0
    )
    assert rel_err(out, ref) <= TOLERANCE[dtype]
    assert torch.equal(mask_out.double(), ref_mask)

    x = misaligned(torch.randn(2, 64, 10, 14, device="cuda", dtype=dtype))
    weight = misaligned((torch.randn(4, 12, 64, device="cuda") / 8).to(dtype))
    bias = misaligned((torch.randn(4, 12, device="cuda") * 0.1).to(dtype))
    y = torch.ops.edgestack.pyramid_pooling(x, weight, bias, [1, 2, 3, 6], True)
    ref = pp_reference.pyramid_pooling(x.double(), weight.double(), bias.double(), (1, 2, 3, 6), True)
    assert torch.equal(y[:, :64], x)
    assert rel_err(y, ref) <= TOLERANCE[dtype]


def test_pyramid_pooling_wider_than_shared_memory_falls_back(lib):
    """Column sums of a 60000-wide map exceed any device's shared memory: the check says so before any launch
    (the plugin refuses such a profile at build time), and the op runs the reference instead of raising."""
    bins = [1, 2, 3, 6]
    bins_c = (ctypes.c_int * 4)(*bins)
    assert lib.edgestack_pyramid_pooling_check(1, 4, 7, 60000, 2, bins_c, 4) == 4  # EDGESTACK_ERR_UNSUPPORTED
    assert lib.edgestack_pyramid_pooling_check(1, 4, 7, 600, 2, bins_c, 4) == 0
    x = torch.randn(1, 4, 7, 60000, device="cuda")
    weight, bias = torch.randn(4, 2, 4, device="cuda"), torch.randn(4, 2, device="cuda")
    y = torch.ops.edgestack.pyramid_pooling(x, weight, bias, bins, True)
    ref = pp_reference.pyramid_pooling(x.double(), weight.double(), bias.double(), bins, True)
    assert rel_err(y, ref) <= TOLERANCE[torch.float32]


def test_bad_shapes_raise(lib):
    q = torch.randn(1, 16, 16, 180, device="cuda")
    mask = torch.ones(1, 16, 16, 1, device="cuda")
    with pytest.raises(EdgestackError, match="divisible"):
        torch.ops.edgestack.window_masked_attention(q, q, q, mask, 7, 8, 0, -1.0, -100.0)
    with pytest.raises(EdgestackError, match="multiples"):
        torch.ops.edgestack.window_masked_attention(q, q, q, mask, 6, 5, 0, -1.0, -100.0)
    with pytest.raises(EdgestackError):
        torch.ops.edgestack.window_masked_attention(q, q[:, :8], q, mask, 6, 8, 0, -1.0, -100.0)
    x = torch.randn(1, 32, 9, 9, device="cuda")
    with pytest.raises(EdgestackError):
        torch.ops.edgestack.pyramid_pooling(x, torch.randn(4, 8, 31, device="cuda"), torch.randn(4, 8, device="cuda"),
                                            [1, 2, 3, 6], True)  # fmt: skip


def test_c_abi_rejects_bad_shapes(lib):
    """The library checks its own arguments: the status comes back as EdgestackError, nothing is launched."""
    q = torch.randn(1, 16, 16, 180, device="cuda")
    mask = torch.ones(1, 16, 16, 1, device="cuda")
    with pytest.raises(EdgestackError, match="contract"):
        run_window_attention(lib, q, q, q, mask, 7, 8, 0)
    with pytest.raises(EdgestackError, match="contract"):
        run_window_attention(lib, q, q, q, mask, 6, 8, 8)
    with pytest.raises(EdgestackError, match="null"):
        loader.check(lib.edgestack_window_attention(None, None, None, None, None, None, 0, 1, 8, 8, 8, 1, 8, 0,
                                                    -1.0, -100.0, None), "window attention")  # fmt: skip
    x = torch.randn(1, 8, 4, 4, device="cuda")
    with pytest.raises(EdgestackError, match="outside"):
        run_pyramid_pooling(lib, x, torch.randn(9, 2, 8, device="cuda"), torch.randn(9, 2, device="cuda"),
                            (1,) * 9, True)  # fmt: skip
    with pytest.raises(EdgestackError, match="workspace"):
        bins_c = (ctypes.c_int * 1)(1)
        y = torch.empty(1, 10, 4, 4, device="cuda")
        w = torch.randn(1, 2, 8, device="cuda")
        status = lib.edgestack_pyramid_pooling(
            x.data_ptr(), w.data_ptr(), w.data_ptr(), y.data_ptr(), None, 0, 0, 0, 1, 8, 4, 4, 2, bins_c, 1, 1, None
        )
        loader.check(status, "pyramid pooling")
