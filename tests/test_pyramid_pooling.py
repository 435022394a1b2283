"""The pyramid pooling op: reference vs PyTorch's own adaptive pooling/conv/interpolate, custom op, errors,
and the CUDA kernel's passes run on CPU threads (kernels/common/emulate.h) against the reference."""

import ctypes

import pytest
import torch
import torch.nn.functional as F
from kernel_checks import TOLERANCE, misaligned, rel_err

from edgestack.errors import EdgestackError
from edgestack.kernels import loader
from edgestack.kernels.pyramid_pooling import reference
from edgestack.kernels.pyramid_pooling.op import pyramid_pooling  # noqa: F401  (registers the op)


def native_pyramid_pooling(x, weight, bias, bins, align_corners):
    """The same math with PyTorch's adaptive_avg_pool2d / conv2d / interpolate, independent of our matrices."""
    branches = [x]
    for i, b in enumerate(bins):
        pooled = F.adaptive_avg_pool2d(x, b)
        reduced = F.relu(F.conv2d(pooled, weight[i][:, :, None, None], bias[i]))
        branches.append(F.interpolate(reduced, size=x.shape[-2:], mode="bilinear", align_corners=align_corners))
    return torch.cat(branches, 1)


@pytest.mark.parametrize("size", [(60, 60), (61, 47), (5, 7), (1, 1), (13, 100)])
@pytest.mark.parametrize("align_corners", [True, False])
def test_reference_matches_native_ops_for_any_size(size, align_corners):
    bins = (1, 2, 3, 6)
    x = torch.randn(2, 16, *size, dtype=torch.float64)
    weight = torch.randn(4, 4, 16, dtype=torch.float64)
    bias = torch.randn(4, 4, dtype=torch.float64)
    got = reference.pyramid_pooling(x, weight, bias, bins, align_corners)
    want = native_pyramid_pooling(x, weight, bias, bins, align_corners)
    assert got.shape == (2, 16 + 16, *size)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_pool_matrix_rows_follow_pytorch_windows():
    # H=7, b=3: windows [0,3), [2,5), [4,7) -- overlapping because 3 does not divide 7.
    m = reference.adaptive_pool_matrix(7, (3,), torch.float64, "cpu")
    assert (m > 0).int().tolist() == [[1, 1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1, 1]]
    torch.testing.assert_close(m.sum(1), torch.ones(3, dtype=torch.float64))


def test_custom_op_runs_the_reference_and_has_gradients():
    x = torch.randn(1, 8, 11, 9, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 2, 8, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    out = torch.ops.edgestack.pyramid_pooling(x, weight, bias, [1, 2, 3, 6], True)
    torch.testing.assert_close(out, reference.pyramid_pooling(x, weight, bias, (1, 2, 3, 6), True))
    # fast_mode: the analytic and numerical Jacobians compared along random directions, not entry by entry
    # (864 inputs would take ~1700 forward passes)
    assert torch.autograd.gradcheck(
        lambda a, w, b: torch.ops.edgestack.pyramid_pooling(a, w, b, [1, 2, 3, 6], True), (x, weight, bias),
        fast_mode=True,
    )


@pytest.mark.parametrize(
    "x_shape, w_shape, b_shape, bins, message",
    [
        ((1, 8, 9), (4, 2, 8), (4, 2), [1, 2, 3, 6], "x must be"),
        ((1, 8, 9, 9), (3, 2, 8), (3, 2), [1, 2, 3, 6], "weight must be"),
        ((1, 8, 9, 9), (4, 2, 7), (4, 2), [1, 2, 3, 6], "weight must be"),
        ((1, 8, 9, 9), (4, 2, 8), (4, 3), [1, 2, 3, 6], "bias must be"),
        ((1, 8, 9, 9), (4, 2, 8), (4, 2), [1, 0, 3, 6], "bins must be"),
        ((1, 8, 0, 9), (4, 2, 8), (4, 2), [1, 2, 3, 6], "H, W >= 1"),
        ((1, 8, 9, 0), (4, 2, 8), (4, 2), [1, 2, 3, 6], "H, W >= 1"),
    ],
)
def test_bad_shapes_raise_clear_errors(x_shape, w_shape, b_shape, bins, message):
    x, weight, bias = torch.randn(x_shape), torch.randn(w_shape), torch.randn(b_shape)
    with pytest.raises(EdgestackError, match=message):
        torch.ops.edgestack.pyramid_pooling(x, weight, bias, bins, True)


# A 'meta' tensor beside CPU ones stands in for a CPU tensor beside CUDA ones, whose address the kernel would
# read as a device pointer.
@pytest.mark.parametrize(
    "changes,message",
    [
        ({"x": torch.int64}, "must be floating point"),
        ({"bias": torch.bool}, "must be floating point"),
        ({"weight": "meta"}, "weight is on meta but x is on cpu"),
        ({"bias": "meta"}, "bias is on meta but x is on cpu"),
    ],
)
def test_bad_dtypes_and_devices_raise_clear_errors(changes, message):
    tensors = {"x": torch.randn(1, 8, 9, 9), "weight": torch.randn(4, 2, 8), "bias": torch.randn(4, 2)}
    tensors |= {name: tensors[name].to(target) for name, target in changes.items()}
    with pytest.raises(EdgestackError, match=message):
        torch.ops.edgestack.pyramid_pooling(*tensors.values(), [1, 2, 3, 6], True)


# fp32 folded weights with an fp16 model's x (as autocast gives them), or a wider bias: x's dtype out, on every
# path (the reference used to fail on the mix, or widen its output past what torch.compile's fake says).
@pytest.mark.parametrize("x_dtype, weight_dtype, bias_dtype", [(torch.bfloat16, torch.float32, torch.float32),
                                                               (torch.float32, torch.float32, torch.float64),
                                                               (torch.float32, torch.float16, torch.float16)])
def test_weights_of_another_float_dtype_give_xs_dtype(x_dtype, weight_dtype, bias_dtype):
    x = torch.randn(1, 8, 9, 9, dtype=x_dtype)
    weight, bias = torch.randn(4, 2, 8, dtype=weight_dtype), torch.randn(4, 2, dtype=bias_dtype)
    out = torch.ops.edgestack.pyramid_pooling(x, weight, bias, [1, 2, 3, 6], True)
    want = torch.ops.edgestack.pyramid_pooling(x, weight.to(x_dtype), bias.to(x_dtype), [1, 2, 3, 6], True)
    assert out.dtype == x_dtype and torch.equal(out, want)
    torch.library.opcheck(torch.ops.edgestack.pyramid_pooling, (x, weight, bias, [1, 2, 3, 6], True),
                          test_utils=("test_schema", "test_faketensor"))


def test_custom_op_passes_opcheck():
    x = torch.randn(1, 4, 7, 5, requires_grad=True)
    weight, bias = torch.randn(2, 2, 4), torch.randn(2, 2)
    torch.library.opcheck(torch.ops.edgestack.pyramid_pooling, (x, weight, bias, [1, 3], True))


@pytest.fixture(scope="module")
def emulated(emulated_kernels):
    return emulated_kernels("pyramid_pooling")


def run_emulated(lib, x, weight, bias, bins, align_corners, misalign=False):
    b, c, h, w = x.shape
    nbins, reduced = weight.shape[:2]
    y = torch.full((b, c + nbins * reduced, h, w), float("nan"), dtype=x.dtype)  # unwritten outputs stay NaN
    if misalign:
        x, weight, bias, y = map(misaligned, (x, weight, bias, y))
    status = lib.edgestack_pyramid_pooling_emulated(
        ctypes.c_void_p(x.data_ptr()), ctypes.c_void_p(weight.data_ptr()), ctypes.c_void_p(bias.data_ptr()),
        ctypes.c_void_p(y.data_ptr()), loader.dtype_code(x.dtype), loader.dtype_code(weight.dtype),
        b, c, h, w, reduced, (ctypes.c_int * nbins)(*bins), nbins, int(align_corners),
    )  # fmt: skip
    assert status == 0
    return y


# (B, C, H, W, R, bins, align_corners, x dtype, weight dtype). Even W takes the copy's and the upsample's
# column pairs, odd W single columns. C % 8 == 0 takes the conv pass's 16-byte loads, other C its scalar
# loads; C > 256 gives each lane two channel strides; R over 32 needs two row tiles and R not a multiple of 4
# idles part of a warp; bin 6 (36 cells) ends in a partial chunk of 8; no bin divides 13 x 11; bins larger
# than a 5 x 4 map; batch > 1 and mixed dtypes.
EMULATED_CASES = [
    (2, 264, 13, 11, 40, (1, 2, 3, 6), True, torch.float32, torch.float32),
    (1, 130, 7, 9, 6, (1, 2, 3, 6), False, torch.float32, torch.float32),
    (1, 40, 5, 17, 20, (2, 5), True, torch.float16, torch.float16),
    (2, 24, 9, 8, 9, (4,), False, torch.float16, torch.float32),
    (1, 64, 10, 14, 40, (1, 2, 3, 6), True, torch.float16, torch.float16),
    (1, 32, 5, 4, 8, (1, 2, 3, 6), False, torch.float32, torch.float16),
]


def check_against_reference(lib, case, misalign=False):
    b, c, h, w, reduced, bins, align_corners, dtype, weight_dtype = case
    x = torch.randn(b, c, h, w).to(dtype)
    weight = (torch.randn(len(bins), reduced, c) * c**-0.5).to(weight_dtype)
    bias = (torch.randn(len(bins), reduced) * 0.1).to(weight_dtype)
    y = run_emulated(lib, x, weight, bias, bins, align_corners, misalign)
    ref = reference.pyramid_pooling(x.double(), weight.double(), bias.double(), bins, align_corners)
    assert torch.equal(y[:, :c], x), "the concat copy of x must be exact"
    assert rel_err(y[:, c:], ref[:, c:]) <= TOLERANCE[dtype]


@pytest.mark.parametrize("case", EMULATED_CASES, ids=lambda case: f"C{case[1]}-R{case[4]}-{case[7]}-{case[8]}")
def test_kernel_passes_match_reference_on_cpu_threads(emulated, case):
    check_against_reference(emulated, case)


# Even W and C % 8 == 0 would take the copy's and the upsample's column pairs and the conv's 16-byte loads; with
# every tensor one element off an aligned address, the passes must fall back to single elements.
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_kernel_passes_take_scalar_paths_for_misaligned_tensors_on_cpu_threads(emulated, dtype):
    check_against_reference(emulated, (2, 64, 10, 14, 12, (1, 2, 3, 6), True, dtype, dtype), misalign=True)
