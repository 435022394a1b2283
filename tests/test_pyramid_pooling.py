"""The pyramid pooling op: reference vs PyTorch's own adaptive pooling/conv/interpolate, custom op, errors."""

import pytest
import torch
import torch.nn.functional as F

from edgestack.errors import EdgestackError
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
    ],
)
def test_bad_shapes_raise_clear_errors(x_shape, w_shape, b_shape, bins, message):
    x, weight, bias = torch.randn(x_shape), torch.randn(w_shape), torch.randn(b_shape)
    with pytest.raises(EdgestackError, match=message):
        torch.ops.edgestack.pyramid_pooling(x, weight, bias, bins, True)
