"""Task-Balanced Distillation (TBD) for one-stage detectors: harmonious distillation (HD) + task-decoupled
feature distillation (TFD) with a task-collaborative weight generator (TWG).

Per FPN level l and location (i, j), for teacher (t) and student (s):
  p_c = spatial softmax over the level's H*W locations of the max class logit (no sigmoid)
  p_r = max IoU of the location's decoded box with the image's ground-truth boxes (0 without any)
  HS  = 1 - tanh(|p_r - p_c|)
  HD:  L_HD = sum_l sum_ij psi |HS_t - HS_s| / sum_ij psi,  psi = p_r_t * sqrt(1 + |p_c_t - p_c_s|)
  TFD: L_TFD = sum_l T0 * sum_ij p_c_t d_ij / sum_ij p_c_t + T1 * sum_ij p_r_t d_ij / sum_ij p_r_t,
       d_ij = mean over channels of (F_t - phi(F_s))^2, phi a 1x1 conv adaptation layer on the student,
       (T0, T1) = softmax(FC(ReLU(FC(AvgPool(concat(p_c_t, p_r_t, p_c_s, p_r_s)))))) per image and level.
  L = L_det + alpha * L_HD + beta * L_TFD.
Both sums are per image (then averaged over the batch); an image without boxes has p_r = 0 everywhere and
adds nothing to HD or TFD-r. psi, the masks and TWG's inputs are detached (weights, not targets); the
teacher is detached throughout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edgestack.models.detector.model import decode, points

EPS = 1e-9


@dataclass
class LevelOutputs:
    """One detector's outputs at one FPN level, as TBD needs them."""

    feature: torch.Tensor  # [B, C, H, W]
    logits: torch.Tensor  # [B, K, H, W]
    boxes: torch.Tensor  # [B, H*W, 4] decoded, in pixels


def level_outputs(raw: tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]) -> list[LevelOutputs]:
    """Split a detector's `raw` outputs into per-level features, logits and decoded boxes."""
    feats, logits, distances = raw
    sizes = [tuple(m.shape[-2:]) for m in logits]
    centres = points(sizes, logits[0].device).split([h * w for h, w in sizes])
    return [
        LevelOutputs(f, c, decode(p, d.flatten(2).transpose(1, 2)))
        for f, c, d, p in zip(feats, logits, distances, centres)
    ]


def cls_probability(logits: torch.Tensor) -> torch.Tensor:
    """[B, K, H, W] class logits -> p_c [B, H*W]: spatial softmax of the max class logit."""
    return logits.max(1).values.flatten(1).softmax(1)


def pairwise_iou(boxes: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """IoU of boxes [B, N, 4] with gt [B, G, 4] -> [B, N, G] (differentiable in `boxes`)."""
    lt = torch.maximum(boxes[:, :, None, :2], gt[:, None, :, :2])
    rb = torch.minimum(boxes[:, :, None, 2:], gt[:, None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_b = (boxes[..., 2:] - boxes[..., :2]).clamp(min=0).prod(-1)
    area_g = (gt[..., 2:] - gt[..., :2]).clamp(min=0).prod(-1)
    return inter / (area_b[:, :, None] + area_g[:, None, :] - inter).clamp(min=EPS)


def reg_probability(boxes: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """p_r [B, N]: max IoU of each decoded box [B, N, 4] with the valid ground truths gt [B, G, 4] (0 if none)."""
    if gt.shape[1] == 0:
        return boxes.new_zeros(boxes.shape[:2])
    iou = pairwise_iou(boxes, gt).masked_fill(~valid[:, None, :], 0.0)
    return iou.max(-1).values


def harmony_score(p_c: torch.Tensor, p_r: torch.Tensor) -> torch.Tensor:
    return 1 - torch.tanh((p_r - p_c).abs())


def hd_loss(pc_t: torch.Tensor, pr_t: torch.Tensor, pc_s: torch.Tensor, pr_s: torch.Tensor) -> torch.Tensor:
    """HD at one level; inputs [B, H*W]. Per image sum(psi |HS_t - HS_s|) / sum(psi), averaged over images."""
    psi = (pr_t * torch.sqrt(1 + (pc_t - pc_s).abs())).detach()
    gap = (harmony_score(pc_t, pr_t) - harmony_score(pc_s, pr_s)).abs()
    return ((psi * gap).sum(1) / (psi.sum(1) + EPS)).mean()


def tfd_loss(feat_t: torch.Tensor, feat_s: torch.Tensor, pc_t: torch.Tensor, pr_t: torch.Tensor,
             weights: torch.Tensor) -> torch.Tensor:
    """TFD at one level. feat_t and the adapted student feat_s [B, C, H, W]; masks [B, H*W]; weights [B, 2]."""
    d = (feat_t - feat_s).pow(2).mean(1).flatten(1)
    cls_term = (pc_t * d).sum(1) / (pc_t.sum(1) + EPS)
    reg_term = (pr_t * d).sum(1) / (pr_t.sum(1) + EPS)
    return (weights[:, 0] * cls_term + weights[:, 1] * reg_term).mean()


class TaskWeightGenerator(nn.Module):
    """TWG: concat(p_c_t, p_r_t, p_c_s, p_r_s) -> average pool -> FC -> FC -> softmax -> (T0, T1) per image."""

    def __init__(self, hidden: int = 16):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, hidden), nn.Linear(hidden, 2)

    def forward(self, masks: torch.Tensor) -> torch.Tensor:
        """masks [B, 4, H*W] -> weights [B, 2] summing to 1."""
        return self.fc2(F.relu(self.fc1(masks.mean(-1)))).softmax(-1)


class TBD(nn.Module):
    """The distillation losses and their trainable parts (adaptation layers phi, TWG)."""

    def __init__(self, student_channels: int, teacher_channels: int, levels: int, alpha: float = 1.0,
                 beta: float = 1.0):
        super().__init__()
        self.adapt = nn.ModuleList(nn.Conv2d(student_channels, teacher_channels, 1) for _ in range(levels))
        self.twg = TaskWeightGenerator()
        self.alpha, self.beta = alpha, beta

    def forward(self, teacher: list[LevelOutputs], student: list[LevelOutputs], gt: torch.Tensor,
                valid: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"hd", "tfd", "loss" = alpha*hd + beta*tfd}; gt [B, G, 4] padded, valid [B, G]."""
        hd = tfd = gt.new_zeros(())
        for t, s, adapt in zip(teacher, student, self.adapt):
            pc_t = cls_probability(t.logits).detach()
            pr_t = reg_probability(t.boxes, gt, valid).detach()
            pc_s, pr_s = cls_probability(s.logits), reg_probability(s.boxes, gt, valid)
            hd = hd + hd_loss(pc_t, pr_t, pc_s, pr_s)
            weights = self.twg(torch.stack([pc_t, pr_t, pc_s.detach(), pr_s.detach()], 1))
            tfd = tfd + tfd_loss(t.feature.detach(), adapt(s.feature), pc_t, pr_t, weights)
        return {"hd": hd, "tfd": tfd, "loss": self.alpha * hd + self.beta * tfd}
