"""Window masked attention: the op and MAT's block vs a direct re-implementation of the official math, and the
CUDA kernels run on CPU threads (kernels/common/emulate.h) against the reference."""

import ctypes

import pytest
import torch
import torch.nn.functional as F
from kernel_checks import TOLERANCE, make_mask, misaligned, rel_err

import edgestack.kernels.window_attention.op  # noqa: F401
from edgestack.errors import EdgestackError
from edgestack.kernels import loader
from edgestack.kernels.window_attention import reference
from edgestack.models.mat.model import SwinTransformerBlock, region_bias


def _partition(x, win):
    b, h, w, c = x.shape
    x = x.view(b, h // win, win, w // win, win, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, win * win, c)


def _reverse(x, win, b, h, w):
    x = x.view(b, h // win, w // win, win, win, -1).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, -1)


def official_block(block: SwinTransformerBlock, x, mask, res):
    """fenglinglwb/MAT SwinTransformerBlock.forward + WindowAttention.forward, per window, written out."""
    attn = block.attn
    win, shift, heads = attn.window_size, attn.shift_size, attn.num_heads
    b, h, w, c = x.shape
    sx, sm = x, mask
    if shift:
        sx, sm = (torch.roll(t, (-shift, -shift), (1, 2)) for t in (x, mask))
    xw, mw = _partition(sx, win), _partition(sm, win)
    n = win * win
    norm = F.normalize(xw, p=2.0, dim=-1)
    q = attn.q(norm).reshape(-1, n, heads, c // heads).permute(0, 2, 1, 3)
    k = attn.k(norm).reshape(-1, n, heads, c // heads).permute(0, 2, 3, 1)
    v = attn.v(xw).reshape(-1, n, heads, c // heads).permute(0, 2, 1, 3)
    logits = (q @ k) * (c // heads) ** -0.5
    if shift:
        region = region_bias(res, win, shift)
        logits = (logits.view(b, -1, heads, n, n) + region[None, :, None]).view(-1, heads, n, n)
    am = mw.squeeze(-1)[:, None, None]
    logits = logits + am.masked_fill(am == 0, -100.0).masked_fill(am == 1, 0.0)
    mw = torch.clamp(mw.sum(dim=1, keepdim=True), 0, 1).repeat(1, n, 1)
    out = attn.proj((logits.softmax(-1) @ v).transpose(1, 2).reshape(-1, n, c))
    out, mask_out = _reverse(out, win, b, h, w), _reverse(mw, win, b, h, w)
    if shift:
        out, mask_out = (torch.roll(t, (shift, shift), (1, 2)) for t in (out, mask_out))
    return block.mlp(block.fuse(torch.cat([x, out], -1))), mask_out


@pytest.mark.parametrize("res,win,shift", [(16, 8, 0), (16, 8, 4), (32, 16, 8), (16, 16, 8)])
def test_block_matches_official_math(res, win, shift):
    block = SwinTransformerBlock(24, res, 6, win, shift, 2.0)
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.5)
    x = torch.randn(2, res, res, 24)
    mask = (torch.rand(2, res, res, 1) > 0.7).float()
    mask[1] = 0  # sample 1: one valid token, so most windows are fully invalid and must stay invalid
    mask[1, 0, 0] = 1
    with torch.no_grad():
        want, want_mask = official_block(block, x, mask, res)
        got, got_mask = block(x, mask)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert torch.equal(got_mask, want_mask)
    if block.attn.window_size < res:
        assert 0 < got_mask[1].mean() < 1
    else:  # one window covers the map: a single valid token validates everything
        assert torch.all(got_mask == 1)


def test_region_bias_buffer_is_the_official_mask():
    block = SwinTransformerBlock(12, 16, 6, 8, 4, 2.0)
    assert block.attn_mask.shape == (4, 64, 64)
    assert set(block.attn_mask.unique().tolist()) == {-100.0, 0.0}
    assert not hasattr(SwinTransformerBlock(12, 16, 6, 16, 8, 2.0), "attn_mask")  # one window: no shift


@pytest.mark.parametrize(
    "shapes,kwargs,message",
    [
        (((1, 8, 8, 12), (1, 8, 8, 12), (1, 8, 8, 6), (1, 8, 8, 1)), {}, "one shape"),
        (((1, 8, 8, 12),) * 3 + ((1, 8, 8, 2),), {}, "mask must be"),
        (((1, 8, 8, 12),) * 3 + ((1, 8, 8, 1),), {"num_heads": 5}, "not divisible"),
        (((1, 12, 8, 12),) * 3 + ((1, 12, 8, 1),), {}, "multiples of window_size"),
        (((1, 8, 8, 12),) * 3 + ((1, 8, 8, 1),), {"shift_size": 4, "window_size": 4}, "shift_size"),
        (((1, 8, 8, 0),) * 3 + ((1, 8, 8, 1),), {}, "C=0"),
    ],
)
def test_op_rejects_bad_shapes(shapes, kwargs, message):
    args = dict(num_heads=6, window_size=8, shift_size=0) | kwargs
    tensors = [torch.zeros(s) for s in shapes]
    with pytest.raises(EdgestackError, match=message):
        torch.ops.edgestack.window_masked_attention(
            *tensors, args["num_heads"], args["window_size"], args["shift_size"], 0.0, -100.0
        )


# A 'meta' tensor beside CPU ones stands in for a CPU tensor beside CUDA ones: the kernel would read its address
# as a device pointer.
@pytest.mark.parametrize(
    "changes,message",
    [
        ({"k": torch.float64}, "share one floating-point dtype"),
        ({"q": torch.int64, "k": torch.int64, "v": torch.int64}, "share one floating-point dtype"),
        ({"mask": torch.bool}, "mask must be floating point"),
        ({"mask": torch.int32}, "mask must be floating point"),
        ({"mask": "meta"}, "mask is on meta but q is on cpu"),
        ({"v": "meta"}, "v is on meta but q is on cpu"),
    ],
)
def test_op_rejects_bad_dtypes_and_devices(changes, message):
    tensors = {"q": torch.randn(1, 8, 8, 12), "k": torch.randn(1, 8, 8, 12), "v": torch.randn(1, 8, 8, 12)}
    tensors["mask"] = torch.ones(1, 8, 8, 1)
    tensors |= {name: tensors[name].to(target) for name, target in changes.items()}
    with pytest.raises(EdgestackError, match=message):
        torch.ops.edgestack.window_masked_attention(*tensors.values(), 3, 4, 2, 0.0, -100.0)


# The fake (torch.compile's view of the op) must give the real outputs' shapes and dtypes, mask_out in the mask's
# dtype, also for an empty batch with a shift. The AOT-compiled check takes ~15 s, so it runs for the first case.
@pytest.mark.parametrize(
    "batch,dtype,mask_dtype,compiled",
    [
        (1, torch.float32, torch.float32, True),
        (1, torch.float32, torch.float16, False),
        (1, torch.float64, torch.float32, False),
        (0, torch.float32, torch.float32, False),
    ],
)
def test_op_passes_opcheck(batch, dtype, mask_dtype, compiled):
    q, k, v = (torch.randn(batch, 8, 8, 12, dtype=dtype) for _ in range(3))
    mask = make_mask("random", batch, 8, 8, mask_dtype, "cpu")
    op = torch.ops.edgestack.window_masked_attention
    checks = ["test_schema", "test_autograd_registration", "test_faketensor"]
    if compiled:
        checks.append("test_aot_dispatch_dynamic")
    torch.library.opcheck(op, (q.requires_grad_(), k, v, mask, 3, 4, 2, 0.0, -100.0), test_utils=checks)
    out, mask_out = op(q, k, v, mask, 3, 4, 2, 0.0, -100.0)
    assert out.shape == q.shape and mask_out.dtype == mask_dtype


def test_a_kernels_library_built_from_other_sources_is_a_clear_error(tmp_path, monkeypatch):
    import subprocess

    from conftest import host_compiler

    if not host_compiler():
        pytest.skip("needs a C++ compiler to build a stand-in library")
    (tmp_path / "old.cpp").write_text('extern "C" int edgestack_window_attention_check() { return 0; }\n')
    stale = tmp_path / "libedgestack_kernels.so"
    subprocess.run([host_compiler(), "-shared", "-fPIC", str(tmp_path / "old.cpp"), "-o", str(stale)], check=True)
    monkeypatch.setenv(loader.ENV_VAR, str(stale))
    loader.library.cache_clear()
    try:
        with pytest.raises(EdgestackError, match="has no edgestack_.*built from other sources than these; rebuild"):
            loader.library()
    finally:
        monkeypatch.undo()
        loader.library.cache_clear()


def test_the_fake_of_a_permuted_query_has_the_real_outputs_strides():
    # q as an NCHW map seen as NHWC: the fake kept q's strides, every real path returns contiguous outputs, and
    # torch.compile failed its stride assertion on the real result.
    q = torch.randn(1, 12, 8, 8).permute(0, 2, 3, 1)
    k, v = torch.randn(1, 8, 8, 12), torch.randn(1, 8, 8, 12)
    mask = make_mask("random", 1, 8, 8, torch.float32, "cpu")
    assert not q.is_contiguous()
    torch.library.opcheck(torch.ops.edgestack.window_masked_attention, (q, k, v, mask, 3, 4, 2, 0.0, -100.0),
                          test_utils=["test_faketensor"])


@pytest.fixture(scope="module")
def emulated(emulated_kernels):
    return emulated_kernels("window_attention")


def run_emulated(lib, q, k, v, mask, heads, window, shift, tensor_cores, misalign=False, masked_bias=-100.0):
    out, mask_out = torch.full_like(q, float("nan")), torch.full_like(mask, float("nan"))  # unwritten stays NaN
    if misalign:
        q, k, v, mask, out, mask_out = map(misaligned, (q, k, v, mask, out, mask_out))
    b, h, w, c = q.shape
    status = lib.edgestack_window_attention_emulated(
        *(ctypes.c_void_p(t.data_ptr()) for t in (q, k, v, mask, out, mask_out)), loader.dtype_code(q.dtype),
        b, h, w, c, heads, window, shift, ctypes.c_float(-1.0), ctypes.c_float(masked_bias), int(tensor_cores),
    )  # fmt: skip
    assert status == 0
    return out, mask_out


# (B, H, W, C, heads, window, shift, mask): MAT's head dim 30 with win 8 / shift 4 and win 16 / shift 8 (256
# tokens: four query blocks per window), odd channels with head dim 5 (scalar loads), head dim 32 with 144
# tokens (the last key tile partly outside the window), head dim 64 (beyond the tensor-core kernel).
EMULATED_CASES = [
    (2, 16, 16, 60, 2, 8, 4, "random"),
    (1, 16, 16, 60, 2, 8, 0, "invalid"),
    (1, 16, 16, 30, 1, 16, 8, "random"),
    (2, 8, 8, 15, 3, 8, 4, "random"),
    (1, 12, 12, 32, 1, 12, 6, "valid"),
    (1, 8, 8, 128, 2, 4, 2, "random"),
]


def check_against_reference(lib, case, kernel, misalign=False):
    b, h, w, c, heads, window, shift, mask_kind = case
    dtype = torch.float32 if kernel == "fp32" else torch.float16
    q, k, v = (torch.randn(b, h, w, c).to(dtype) for _ in range(3))
    mask = make_mask(mask_kind, b, h, w, dtype, "cpu")
    out, mask_out = run_emulated(lib, q, k, v, mask, heads, window, shift, kernel == "fp16-tensor-cores", misalign)
    ref, ref_mask = reference.window_masked_attention(
        q.double(), k.double(), v.double(), mask.double(), heads, window, shift, (c // heads) ** -0.5, -100.0
    )
    assert rel_err(out, ref) <= TOLERANCE[dtype]
    assert torch.equal(mask_out.double(), ref_mask)


# fp32 runs the CUDA-core kernel; fp16 the tensor-core kernel (as on sm_80+, where the shape allows it) or the
# CUDA-core kernel (as on Jetson Xavier's sm_72).
@pytest.mark.parametrize("kernel", ["fp32", "fp16-tensor-cores", "fp16-cuda-cores"])
@pytest.mark.parametrize("case", EMULATED_CASES, ids=lambda case: "-".join(map(str, case)))
def test_kernels_match_reference_on_cpu_threads(emulated, case, kernel):
    check_against_reference(emulated, case, kernel)


# Even channels and head dim would move Q, K, V and out as pairs; one element off an aligned address they must
# move one by one.
@pytest.mark.parametrize("kernel", ["fp32", "fp16-tensor-cores", "fp16-cuda-cores"])
def test_kernels_take_scalar_paths_for_misaligned_tensors_on_cpu_threads(emulated, kernel):
    check_against_reference(emulated, (1, 16, 16, 60, 2, 8, 4, "random"), kernel, misalign=True)


# A masked_bias of -inf, or float32's lowest (its base-2 form overflowed to -inf): the tensor-core kernel gave NaN
# for every query of a window whose first key tile is all masked, valid keys elsewhere or not.
@pytest.mark.parametrize("kernel", ["fp32", "fp16-tensor-cores", "fp16-cuda-cores"])
@pytest.mark.parametrize("masked_bias", [float("-inf"), float(torch.finfo(torch.float32).min)])
def test_kernels_take_the_lowest_masked_bias_as_pytorch_does_on_cpu_threads(emulated, kernel, masked_bias):
    dtype = torch.float32 if kernel == "fp32" else torch.float16
    q, k, v = (torch.randn(1, 16, 32, 32).to(dtype) for _ in range(3))
    mask = torch.ones(1, 16, 32, 1, dtype=dtype)
    mask[:, :4, :16] = 0  # the left window's first 64 keys (a whole key tile) invalid, the rest valid
    if masked_bias > float("-inf"):
        mask[:, :, 16:] = 0  # and the right window wholly invalid: PyTorch averages its values
    out, _ = run_emulated(emulated, q, k, v, mask, 1, 16, 0, kernel == "fp16-tensor-cores", masked_bias=masked_bias)
    ref, _ = reference.window_masked_attention(q.double(), k.double(), v.double(), mask.double(), 1, 16, 0,
                                               32 ** -0.5, masked_bias)
    assert torch.isfinite(ref).all() and torch.isfinite(out).all()
    assert rel_err(out, ref) <= TOLERANCE[dtype]
