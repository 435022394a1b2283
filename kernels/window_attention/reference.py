"""Windowed masked attention in plain PyTorch (MAT's multi-head contextual attention).

The definition of the op and its portable ONNX decomposition. Projections stay outside: q and k come
from the channel-L2-normalized tokens, v from the raw tokens. Shapes are [B, H, W, C] throughout.
"""

from __future__ import annotations

import torch


def _partition(t: torch.Tensor, window: int) -> torch.Tensor:
    """[B, H, W, C] -> [B * nW, window*window, C], windows in row-major order."""
    b, h, w, c = t.shape
    t = t.reshape(b, h // window, window, w // window, window, c)
    return t.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, c)


def _reverse(t: torch.Tensor, window: int, b: int, h: int, w: int) -> torch.Tensor:
    """[B * nW, window*window, C] -> [B, H, W, C]."""
    c = t.shape[-1]
    t = t.reshape(b, h // window, w // window, window, window, c)
    return t.permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)


def region_ids(size: int, window: int, shift: int, device) -> torch.Tensor:
    """Swin's shifted-window regions along one axis: 0, 1, 2 for [0, size-window), [size-window, size-shift), rest."""
    pos = torch.arange(size, device=device)
    return (pos >= size - window).long() + (pos >= size - shift).long()


def window_masked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    num_heads: int,
    window_size: int,
    shift_size: int = 0,
    scale: float | None = None,
    masked_bias: float = -100.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k, v [B,H,W,C], mask [B,H,W,1] (1 valid, 0 invalid) -> (out [B,H,W,C], mask_out [B,H,W,1])."""
    b, h, w, c = q.shape
    head_dim = c // num_heads
    if scale is None:
        scale = head_dim**-0.5
    if shift_size > 0:
        q, k, v, mask = (torch.roll(t, shifts=(-shift_size, -shift_size), dims=(1, 2)) for t in (q, k, v, mask))

    tokens = window_size * window_size
    qw, kw, vw = (
        _partition(t, window_size).reshape(-1, tokens, num_heads, head_dim).transpose(1, 2) for t in (q, k, v)
    )
    mask_windows = _partition(mask, window_size)  # [B*nW, N, 1]

    logits = (qw @ kw.transpose(-2, -1)) * scale  # [B*nW, heads, N, N]
    if shift_size > 0:
        rows = region_ids(h, window_size, shift_size, q.device)
        cols = region_ids(w, window_size, shift_size, q.device)
        region = (rows[:, None] * 3 + cols[None, :])[None, :, :, None]
        region = _partition(region, window_size).squeeze(-1)  # [nW, N]
        region_bias = (region[:, :, None] != region[:, None, :]).to(q.dtype) * masked_bias  # [nW, N, N]
        # Window count spelled out: with B = 0, -1 would be ambiguous.
        logits = logits.reshape(b, region.shape[0], num_heads, tokens, tokens) + region_bias[None, :, None]
        logits = logits.reshape(-1, num_heads, tokens, tokens)
    key_bias = torch.where(mask_windows == 0, masked_bias, 0.0).to(q.dtype)  # [B*nW, N, 1]
    logits = logits + key_bias.transpose(1, 2)[:, None]
    attn = torch.softmax(logits, dim=-1)
    out = (attn @ vw).transpose(1, 2).reshape(-1, tokens, c)

    window_valid = torch.clamp(mask_windows.sum(dim=1, keepdim=True), 0, 1).expand(-1, tokens, 1)
    out = _reverse(out, window_size, b, h, w)
    mask_out = _reverse(window_valid, window_size, b, h, w)
    if shift_size > 0:
        out, mask_out = (torch.roll(t, shifts=(shift_size, shift_size), dims=(1, 2)) for t in (out, mask_out))
    return out, mask_out
