"""PSPNet (Zhao et al., CVPR 2017): dilated ResNet (deep stem, output stride 8) + pyramid pooling module.

Training mode returns (logits, aux_logits) with the auxiliary head on stage 3; eval mode returns the
main logits only, and the pyramid pooling module runs as one `edgestack::pyramid_pooling` op with its
BatchNorms folded into the 1x1 convs, which is the graph that is exported.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgestack.kernels.pyramid_pooling import op as pyramid_pooling_op  # noqa: F401  (registers the op)


def conv_bn_relu(cin: int, cout: int, kernel: int = 3, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    padding = dilation * (kernel // 2)
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int, dilation: int, downsample: nn.Module | None):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 3, stride, dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int, dilation: int, downsample: nn.Module | None):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, width * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width * 4)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class DilatedResNet(nn.Module):
    """ResNet with a three-conv deep stem; stages 3 and 4 keep stride 8, dilated by `dilations` (2 and 4)."""

    def __init__(self, block: str, layers: tuple[int, int, int, int], stem_width: int,
                 dilations: tuple[int, int] = (2, 4)):
        super().__init__()
        block_cls = BLOCKS[block]
        self.stem = nn.Sequential(
            conv_bn_relu(3, stem_width, stride=2),
            conv_bn_relu(stem_width, stem_width),
            conv_bn_relu(stem_width, stem_width * 2),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        self.inplanes = stem_width * 2
        self.layer1 = self._make_layer(block_cls, 64, layers[0], stride=1, dilation=1)
        self.layer2 = self._make_layer(block_cls, 128, layers[1], stride=2, dilation=1)
        self.layer3 = self._make_layer(block_cls, 256, layers[2], stride=1, dilation=dilations[0])
        self.layer4 = self._make_layer(block_cls, 512, layers[3], stride=1, dilation=dilations[1])
        self.stage3_channels = 256 * block_cls.expansion
        self.out_channels = 512 * block_cls.expansion

    def _make_layer(self, block_cls, width: int, blocks: int, stride: int, dilation: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != width * block_cls.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, width * block_cls.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(width * block_cls.expansion),
            )
        # Every block of a dilated stage, its first included, uses the stage's dilation, as the official PSPNet
        # (hszhao/semseg) sets it: weights ported from there compute what they were trained to (torchvision's
        # DeepLab backbones halve it in the first block, with the same shapes, so a port would load and differ).
        layers = [block_cls(self.inplanes, width, stride, dilation, downsample)]
        self.inplanes = width * block_cls.expansion
        layers += [block_cls(self.inplanes, width, 1, dilation, None) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.layer2(self.layer1(self.stem(x)))
        stage3 = self.layer3(x)
        return stage3, self.layer4(stage3)


class PyramidPoolingModule(nn.Module):
    """Per bin: adaptive average pool -> 1x1 conv -> BN -> ReLU -> bilinear upsample; concat with the input."""

    def __init__(self, channels: int, reduction: int, bins: tuple[int, ...] = (1, 2, 3, 6)):
        super().__init__()
        self.bins = tuple(bins)
        self.convs = nn.ModuleList(nn.Conv2d(channels, reduction, 1, bias=False) for _ in bins)
        self.norms = nn.ModuleList(nn.BatchNorm2d(reduction) for _ in bins)
        self.out_channels = channels + len(bins) * reduction

    def folded_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """1x1 conv weights with the (eval-mode) BatchNorm folded in: [nbins, R, C] and [nbins, R]."""
        weights, biases = [], []
        for conv, norm in zip(self.convs, self.norms):
            scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
            weights.append(conv.weight[:, :, 0, 0] * scale[:, None])
            biases.append(norm.bias - norm.running_mean * scale)
        return torch.stack(weights), torch.stack(biases)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:  # BatchNorm needs batch statistics: run the branches unfused
            size = x.shape[-2:]
            branches = [x]
            for b, conv, norm in zip(self.bins, self.convs, self.norms):
                y = F.relu(norm(conv(F.adaptive_avg_pool2d(x, b))))
                branches.append(F.interpolate(y, size=size, mode="bilinear", align_corners=True))
            return torch.cat(branches, dim=1)
        weight, bias = self.folded_weights()
        return torch.ops.edgestack.pyramid_pooling(x, weight, bias, list(self.bins), True)


class PSPNet(nn.Module):
    def __init__(
        self,
        num_classes: int,
        block: str = "bottleneck",
        layers: tuple[int, int, int, int] = (3, 4, 6, 3),
        stem_width: int = 64,
        head_channels: int = 512,
        bins: tuple[int, ...] = (1, 2, 3, 6),
        dropout: float = 0.1,
        aux_weight: float = 0.4,
        dilations: tuple[int, int] = (2, 4),
    ):
        super().__init__()
        self.backbone = DilatedResNet(block, layers, stem_width, tuple(dilations))
        channels = self.backbone.out_channels
        self.ppm = PyramidPoolingModule(channels, channels // len(bins), bins)
        self.head = nn.Sequential(
            conv_bn_relu(self.ppm.out_channels, head_channels),
            nn.Dropout2d(dropout),
            nn.Conv2d(head_channels, num_classes, 1),
        )
        self.aux_head = nn.Sequential(
            conv_bn_relu(self.backbone.stage3_channels, head_channels // 2),
            nn.Dropout2d(dropout),
            nn.Conv2d(head_channels // 2, num_classes, 1),
        )
        self.aux_weight = aux_weight
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, image: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        size = image.shape[-2:]
        stage3, features = self.backbone(image)
        logits = F.interpolate(self.head(self.ppm(features)), size=size, mode="bilinear", align_corners=True)
        if not self.training:
            return logits
        aux = F.interpolate(self.aux_head(stage3), size=size, mode="bilinear", align_corners=True)
        return logits, aux

    def loss(self, outputs: tuple[torch.Tensor, torch.Tensor], target: torch.Tensor, ignore_index: int = 255):
        """Cross-entropy on the main logits plus `aux_weight` times the auxiliary head's (the paper's 0.4)."""
        logits, aux = outputs
        main = F.cross_entropy(logits, target, ignore_index=ignore_index)
        return main + self.aux_weight * F.cross_entropy(aux, target, ignore_index=ignore_index)
