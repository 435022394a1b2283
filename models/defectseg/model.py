"""DefectSeg: a small encoder-decoder for concealed (low-contrast) defect segmentation.

Encoder: a narrow ResNet (two 3x3 convs per basic block; plain convs are what oneDNN and TensorRT run
fastest at these widths) down to stride 32. Global context: a pyramid pooling module on the stride-32
features, run as one `edgestack::pyramid_pooling` op with BatchNorm folded in eval mode (the exported
graph) and unfused in training. Decoder: top-down fusion of strides 32/16/8/4, every level upsampled to
stride 4 and fused (multi-scale), then refined at stride 2 with the stem's features so thin scratches
and cracks survive, and upsampled to the input size.

Training mode returns (logits, aux_logits) — aux from the context level, deep supervision as in COD
practice; eval mode returns the per-pixel defect probability (sigmoid inside the graph).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgestack.models.pspnet.model import BasicBlock, PyramidPoolingModule, conv_bn_relu

STRIDE = 32  # the encoder's output stride: input sizes are multiples of it


def _stage(cin: int, cout: int, blocks: int) -> nn.Sequential:
    """Stride-2 3x3 conv into the stage, then `blocks` basic residual blocks."""
    blocks_ = (BasicBlock(cout, cout, 1, 1, None) for _ in range(blocks))
    return nn.Sequential(conv_bn_relu(cin, cout, stride=2), *blocks_)


def _up(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


class DefectSeg(nn.Module):
    def __init__(
        self,
        stem: int = 16,
        widths: tuple[int, int, int, int] = (24, 48, 96, 192),
        blocks: tuple[int, int, int, int] = (2, 2, 2, 2),
        decoder: int = 64,
        bins: tuple[int, ...] = (1, 2, 3, 6),
        aux_weight: float = 0.4,
    ):
        super().__init__()
        self.stem = nn.Sequential(conv_bn_relu(3, stem, stride=2), conv_bn_relu(stem, stem))
        cins = (stem, *widths[:-1])
        self.stages = nn.ModuleList(_stage(cin, cout, n) for cin, cout, n in zip(cins, widths, blocks))
        self.ppm = PyramidPoolingModule(widths[-1], widths[-1] // len(bins), bins)
        self.context = conv_bn_relu(self.ppm.out_channels, decoder, kernel=1)
        self.laterals = nn.ModuleList(conv_bn_relu(w, decoder, kernel=1) for w in widths[:-1])
        self.smooth = nn.ModuleList(conv_bn_relu(decoder, decoder) for _ in widths[:-1])
        self.fuse = nn.Sequential(
            conv_bn_relu(decoder * len(widths), decoder, kernel=1), conv_bn_relu(decoder, decoder)
        )
        fine = decoder // 4
        self.reduce = conv_bn_relu(decoder, fine, kernel=1)
        self.refine = nn.Sequential(conv_bn_relu(fine + stem, fine), nn.Conv2d(fine, 1, 1))
        self.aux_head = nn.Conv2d(decoder, 1, 1)
        self.aux_weight = aux_weight
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # Defects are rare pixels: start the heads at a low prior so early training is not swamped by negatives.
        for head in (self.refine[-1], self.aux_head):
            nn.init.normal_(head.weight, std=0.01)
            nn.init.constant_(head.bias, -4.0)

    def forward(self, image: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        stem = self.stem(image)
        features = []
        x = stem
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        top = self.context(self.ppm(features[-1]))
        levels = [top]
        for feature, lateral, smooth in zip(features[-2::-1], self.laterals[::-1], self.smooth[::-1]):
            top = smooth(lateral(feature) + _up(top, feature))
            levels.append(top)
        stride4 = levels[-1]
        fused = self.fuse(torch.cat([stride4] + [_up(level, stride4) for level in levels[:-1]], dim=1))
        fine = self.refine(torch.cat([_up(self.reduce(fused), stem), stem], dim=1))
        logits = _up(fine, image)
        if not self.training:
            return torch.sigmoid(logits)
        return logits, _up(self.aux_head(levels[0]), image)
