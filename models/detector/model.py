"""Anchor-free one-stage detector: small ResNet-style backbone, FPN (strides 8/16/32), FCOS/GFL-style head.

The head has a classification and a box-regression tower in parallel (shared over the pyramid levels);
each location predicts per-class logits and its distances (left, top, right, bottom) to the box edges.
`raw` gives what training and distillation need (FPN features, logits, distances); `predict` the decoded
pre-NMS boxes and scores; `forward` (the deploy graph) ends in `edgestack::detection_nms`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgestack.models.detector import nms  # noqa: F401  (registers torch.ops.edgestack.detection_nms)

STRIDES = (8, 16, 32)
PRIOR_PROB = 0.01  # initial foreground probability of the classifier (RetinaNet/FCOS)


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Block(nn.Module):
    """ResNet basic block."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = conv_bn_relu(cin, cout, stride)
        self.conv2 = nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.skip = (
            nn.Identity() if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(self.conv1(x)) + self.skip(x))


class Backbone(nn.Module):
    """Stem (stride 2) + four stages (strides 4, 8, 16, 32); returns the stride 8, 16, 32 maps."""

    def __init__(self, stem: int, widths: tuple[int, int, int, int], blocks: tuple[int, int, int, int]):
        super().__init__()
        self.stem = conv_bn_relu(3, stem, 2)
        stages, cin = [], stem
        for width, count in zip(widths, blocks):
            stages.append(nn.Sequential(Block(cin, width, 2), *(Block(width, width, 1) for _ in range(count - 1))))
            cin = width
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs[1:]


class FPN(nn.Module):
    def __init__(self, in_channels: tuple[int, ...], channels: int):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.output = nn.ModuleList(conv_bn_relu(channels, channels) for _ in in_channels)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        laterals = [conv(f) for conv, f in zip(self.lateral, feats)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:],
                                                              mode="nearest")
        return [conv(x) for conv, x in zip(self.output, laterals)]


class Head(nn.Module):
    """Parallel classification and regression towers shared over levels; GroupNorm since levels differ."""

    def __init__(self, channels: int, convs: int, num_classes: int):
        super().__init__()

        def tower() -> nn.Sequential:
            layers: list[nn.Module] = []
            for _ in range(convs):
                layers += [nn.Conv2d(channels, channels, 3, 1, 1, bias=False), nn.GroupNorm(8, channels), nn.ReLU()]
            return nn.Sequential(*layers)

        self.cls_tower, self.reg_tower = tower(), tower()
        self.cls_out = nn.Conv2d(channels, num_classes, 3, 1, 1)
        self.reg_out = nn.Conv2d(channels, 4, 3, 1, 1)
        self.scales = nn.Parameter(torch.ones(len(STRIDES)))
        nn.init.constant_(self.cls_out.bias, -float(torch.log(torch.tensor((1 - PRIOR_PROB) / PRIOR_PROB))))

    def forward(self, feats: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        logits, distances = [], []
        for level, (x, stride) in enumerate(zip(feats, STRIDES)):
            logits.append(self.cls_out(self.cls_tower(x)))
            # softplus keeps distances positive without exp's overflow early in training
            distances.append(F.softplus(self.scales[level] * self.reg_out(self.reg_tower(x))) * stride)
        return logits, distances


def points(sizes: list[tuple[int, int]], device: torch.device | None = None) -> torch.Tensor:
    """Centres (x, y) in pixels of every location of every level, level-major then row-major: [N, 2]."""
    out = []
    for (h, w), stride in zip(sizes, STRIDES):
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * stride
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * stride
        out.append(torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(-1, 2))
    return torch.cat(out)


def flatten(maps: list[torch.Tensor]) -> torch.Tensor:
    """[B, C, H, W] per level -> [B, N, C]."""
    return torch.cat([m.flatten(2).transpose(1, 2) for m in maps], 1)


def decode(centres: torch.Tensor, distances: torch.Tensor) -> torch.Tensor:
    """(x, y) centres [..., 2] and (l, t, r, b) distances [..., 4] -> boxes (x1, y1, x2, y2)."""
    return torch.cat([centres - distances[..., :2], centres + distances[..., 2:]], -1)


class Detector(nn.Module):
    def __init__(
        self,
        num_classes: int,
        stem: int,
        widths: tuple[int, int, int, int],
        blocks: tuple[int, int, int, int],
        fpn: int,
        head_convs: int,
        max_detections: int = 100,
        iou_threshold: float = 0.6,
        score_threshold: float = 0.05,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.fpn_channels = fpn
        self.backbone = Backbone(stem, widths, blocks)
        self.fpn = FPN(tuple(widths[1:]), fpn)
        self.head = Head(fpn, head_convs, num_classes)
        self.max_detections, self.iou_threshold, self.score_threshold = max_detections, iou_threshold, score_threshold
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m is not self.head.cls_out:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def raw(self, image: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """(FPN features, class logits [B,C,H,W], distances in pixels [B,4,H,W]) per level."""
        feats = self.fpn(self.backbone(image))
        logits, distances = self.head(feats)
        return feats, logits, distances

    def predict(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre-NMS boxes [B, N, 4] (x1, y1, x2, y2 in input pixels) and class scores [B, N, C] in 0..1."""
        _, logits, distances = self.raw(image)
        centres = points([tuple(m.shape[-2:]) for m in logits], image.device)
        return decode(centres, flatten(distances)), flatten(logits).sigmoid()

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(boxes [B,K,4], scores [B,K], classes [B,K] int64, num_detections [B] int64), padded to K."""
        boxes, scores = self.predict(image)
        return torch.ops.edgestack.detection_nms(
            boxes, scores, self.max_detections, self.iou_threshold, self.score_threshold
        )
