"""What the kernel tests share, on the GPU (test_kernels_gpu.py) and on CPU threads (the emulated tests in
test_window_attention.py / test_pyramid_pooling.py): tolerances against the float64 references, the error
they bound, and window attention's masks."""

from __future__ import annotations

import torch

TOLERANCE = {torch.float32: 1e-5, torch.float16: 5e-3}  # ||out - ref|| / ||ref||


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref).norm() / ref.norm()).item()


def make_mask(kind: str, b: int, h: int, w: int, dtype, device: str) -> torch.Tensor:
    if kind == "valid":
        return torch.ones(b, h, w, 1, device=device, dtype=dtype)
    if kind == "invalid":
        return torch.zeros(b, h, w, 1, device=device, dtype=dtype)
    # Random holes plus a solid invalid block, so some windows are fully invalid.
    mask = (torch.rand(b, h, w, 1, device=device) > 0.5).to(dtype)
    mask[:, : h // 2, : w // 2] = 0
    return mask


def misaligned(t: torch.Tensor) -> torch.Tensor:
    """A copy of `t` that starts one element past an aligned address, as a contiguous view into a larger tensor
    can: the kernels must see it and take their scalar paths (a vector access to it faults on a GPU)."""
    storage = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    out = storage[1:].view(t.shape).copy_(t)
    assert out.data_ptr() % (2 * t.element_size()) != 0
    return out
