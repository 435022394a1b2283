"""Whole models on CUDA with our kernels vs the PyTorch reference path (GPU machine only; skipped without CUDA).

Same model (random weights from a fixed seed), same fresh random inputs, the reference forced with
`loader.disabled()`. fp32 with TF32 off (both paths), so the comparison measures our kernels alone:
- MAT (mat-edge, mat-512; a free-form mask from example_inputs): ||out - ref|| / ||ref|| <= 1e-4.
- PSPNet (r18, r50 at 473x473 and 375x500): max |logit diff| <= 1e-3 * max |ref logit|, argmax agreement >= 99.9%.
fp16 (model.half(), inputs half) with our kernels: output finite everywhere.
Every case counts our kernel launches (the ops' `_kernel`), so a silent fall-back to the reference fails.
Achieved figures go to the junit xml as properties (pytest --junitxml).
"""

from __future__ import annotations

import copy

import pytest
import torch

from edgestack.kernels import loader
from edgestack.kernels.pyramid_pooling import op as pp_op
from edgestack.kernels.window_attention import op as wa_op
from edgestack.models import resolve

pytestmark = pytest.mark.gpu

MAT_REL_L2 = 1e-4
PSP_MAX_ABS_OVER_MAX = 1e-3
PSP_ARGMAX_AGREEMENT = 0.999


@pytest.fixture(scope="module", autouse=True)
def cuda_with_kernels():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    if not loader.available():
        pytest.skip(f"{loader.LIBRARY_NAME} not built (cmake -S . -B build && cmake --build build)")
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32


@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts launches of our CUDA kernels through the custom ops."""
    calls = {"window_attention": 0, "pyramid_pooling": 0}

    def counting(module, name):
        original = module._kernel

        def wrapper(*args):
            calls[name] += 1
            return original(*args)

        monkeypatch.setattr(module, "_kernel", wrapper)

    counting(wa_op, "window_attention")
    counting(pp_op, "pyramid_pooling")
    return calls


def build(name: str, seed: int = 0):
    spec, config = resolve(name)
    cfg = spec.configs[config]
    torch.manual_seed(seed)
    return spec, cfg, spec.build(cfg).cuda()


def run(model, inputs, dtype=torch.float32):
    with torch.no_grad():
        out = model(*(x.to(dtype) for x in inputs))
    torch.cuda.synchronize()
    return out


@pytest.mark.parametrize("name", ["mat-edge", "mat-512"])
def test_mat_kernels_match_reference(name, kernel_calls, record_property):
    spec, cfg, model = build(name)
    torch.manual_seed(1234)
    res = cfg["resolution"]
    inputs = [x.cuda() for x in spec.example_inputs(cfg, 1, res, res)]
    blocks = sum(cfg["depths"])

    with loader.disabled():
        ref = run(model, inputs)
    assert kernel_calls["window_attention"] == 0
    out = run(model, inputs)
    assert kernel_calls["window_attention"] == blocks, "every attention block must run our kernel"

    rel = ((out.double() - ref.double()).norm() / ref.double().norm()).item()
    record_property("rel_l2_fp32", rel)
    record_property("hole_ratio", 1 - inputs[1].mean().item())
    assert torch.isfinite(ref).all() and torch.isfinite(out).all()
    assert rel <= MAT_REL_L2, f"{name} fp32: relative L2 {rel:.3g} > {MAT_REL_L2}"

    half = copy.deepcopy(model).half()
    out16 = run(half, inputs, torch.float16)
    assert kernel_calls["window_attention"] == 2 * blocks
    rel16 = ((out16.double() - ref.double()).norm() / ref.double().norm()).item()
    record_property("rel_l2_fp16_vs_fp32_ref", rel16)
    assert torch.isfinite(out16).all(), f"{name} fp16: non-finite output"


@pytest.mark.parametrize("size", [(473, 473), (375, 500)])
@pytest.mark.parametrize("name", ["pspnet-r18", "pspnet-r50"])
def test_pspnet_kernels_match_reference(name, size, kernel_calls, record_property):
    spec, cfg, model = build(name)
    inputs = [x.cuda() for x in spec.example_inputs(cfg, 1, *size)]

    with loader.disabled():
        ref = run(model, inputs)
    assert kernel_calls["pyramid_pooling"] == 0
    out = run(model, inputs)
    assert kernel_calls["pyramid_pooling"] == 1

    max_abs = (out - ref).abs().max().item()
    scale = ref.abs().max().item()
    agreement = (out.argmax(1) == ref.argmax(1)).float().mean().item()
    record_property("max_abs_over_max_fp32", max_abs / scale)
    record_property("argmax_agreement_fp32", agreement)
    assert torch.isfinite(out).all()
    assert max_abs <= PSP_MAX_ABS_OVER_MAX * scale, f"max |diff| {max_abs:.3g} > {PSP_MAX_ABS_OVER_MAX} * {scale:.3g}"
    assert agreement >= PSP_ARGMAX_AGREEMENT, f"argmax agreement {agreement:.5f}"

    half = copy.deepcopy(model).half()
    out16 = run(half, inputs, torch.float16)
    assert kernel_calls["pyramid_pooling"] == 2
    record_property("argmax_agreement_fp16_vs_fp32_ref", (out16.argmax(1) == ref.argmax(1)).float().mean().item())
    assert torch.isfinite(out16).all(), f"{name} {size} fp16: non-finite logits"
