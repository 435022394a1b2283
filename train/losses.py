"""Losses for binary defect segmentation."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def structure_loss(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Weighted BCE + weighted soft IoU (the F3Net/PraNet/SINet-v2 "structure loss" of COD practice).

    Pixels near mask boundaries get up to 6x weight (1 + 5 |local mean of the mask - mask|, 31x31 window),
    so thin and small defects are not drowned by the background. `mask` is float 0/1, [B,1,H,W].
    """
    weight = 1 + 5 * torch.abs(F.avg_pool2d(mask, kernel_size=31, stride=1, padding=15) - mask)
    bce = F.binary_cross_entropy_with_logits(logits, mask, reduction="none")
    wbce = (weight * bce).sum(dim=(2, 3)) / weight.sum(dim=(2, 3))
    prob = torch.sigmoid(logits)
    inter = (prob * mask * weight).sum(dim=(2, 3))
    union = ((prob + mask) * weight).sum(dim=(2, 3))
    wiou = 1 - (inter + 1) / (union - inter + 1)
    return (wbce + wiou).mean()
