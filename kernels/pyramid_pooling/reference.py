"""Pyramid pooling in plain PyTorch: the definition of the op and its portable ONNX decomposition.

Adaptive average pooling is written as two small matrix products (rows: one averaging window per bin
cell, PyTorch's start=floor(i*H/b), end=ceil((i+1)*H/b)), so it traces to MatMul and stays exact for
any H, W — including sizes a bin does not divide — with H and W dynamic in the exported graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DEFAULT_BINS = (1, 2, 3, 6)


def adaptive_pool_matrix(size: int, bins: tuple[int, ...], dtype: torch.dtype, device) -> torch.Tensor:
    """[sum(bins), size] matrix whose row j averages the input positions of bin cell j."""
    positions = torch.arange(size, device=device)
    rows = []
    for b in bins:
        cell = torch.arange(b, device=device)
        start = torch.div(cell * size, b, rounding_mode="floor")
        end = torch.div((cell + 1) * size + b - 1, b, rounding_mode="floor")
        inside = (positions[None, :] >= start[:, None]) & (positions[None, :] < end[:, None])
        rows.append(inside.to(dtype) / (end - start).to(dtype)[:, None])
    return torch.cat(rows, dim=0)


def pyramid_pooling(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    bins: tuple[int, ...] = DEFAULT_BINS,
    align_corners: bool = True,
) -> torch.Tensor:
    """x [B,C,H,W], weight [nbins,R,C], bias [nbins,R] -> [B, C + nbins*R, H, W]."""
    bins = tuple(int(b) for b in bins)
    _, _, height, width = x.shape
    pool_h = adaptive_pool_matrix(height, bins, x.dtype, x.device)  # [S, H]
    pool_w = adaptive_pool_matrix(width, bins, x.dtype, x.device)  # [S, W]
    pooled_all = pool_h @ (x @ pool_w.t())  # [B, C, S, S]: one pass over x for every bin
    branches = [x]
    offset = 0
    for index, b in enumerate(bins):
        pooled = pooled_all[:, :, offset : offset + b, offset : offset + b]
        offset += b
        reduced = torch.einsum("bchw,rc->brhw", pooled, weight[index]) + bias[index][None, :, None, None]
        reduced = torch.relu(reduced)
        branches.append(F.interpolate(reduced, size=(height, width), mode="bilinear", align_corners=align_corners))
    return torch.cat(branches, dim=1)
