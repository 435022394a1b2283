"""MAT generator (fenglinglwb/MAT networks/mat.py `Generator`), restructured into a deterministic graph.

Module and parameter names follow the official code so G_ema checkpoints load strictly. What changed,
and why (none of it changes the function for the same random draws):
- Every random draw is an explicit input: z, the two noise-mixing masks (the official draws them with
  `F.dropout(0.5 * ones, training=True)`, i.e. Bernoulli(0.5) in {0, 1}, even at inference), and the
  per-layer noise of the second-stage decoder (packed into one `noise` tensor).
- Window attention runs through `torch.ops.edgestack.window_masked_attention` (roll, partition, region and
  key biases, softmax, attn @ v, reverse, mask update); projections stay here.
- The mapping network yields one w (the official broadcasts it to num_ws identical copies; with no
  truncation cutoff every copy is the same), so every style code is cat([w, gs]).
- Transformer features are kept as [B, H, W, C]; all per-token layers are unaffected by the layout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import edgestack.kernels.window_attention.op  # noqa: F401  (registers torch.ops.edgestack.window_masked_attention)
from edgestack.models.mat.layers import (
    Conv2dLayer,
    Conv2dLayerPartial,
    FullyConnectedLayer,
    MappingNet,
    StyleConv,
    ToRGB,
)

TOKEN_RES = 64  # the first stage always tokenizes to 64x64, whatever the image resolution (official `res = 64`)
MID_RES = 16  # both noise-mixing points work on a 16x16 map


@dataclass(frozen=True)
class MATConfig:
    resolution: int = 512
    dim: int = 180
    num_heads: int = 6
    depths: tuple[int, ...] = (2, 3, 4, 3, 2)
    window_sizes: tuple[int, ...] = (8, 16, 16, 16, 8)
    mlp_ratio: float = 2.0
    z_dim: int = 512
    w_dim: int = 512
    mapping_layers: int = 8
    channel_base: int = 32768  # second-stage channels nf(res) = min(channel_base // res, channel_max)
    channel_max: int = 512
    truncation_psi: float = 1.0

    def nf(self, res_log2: int) -> int:
        return min(self.channel_base >> res_log2, self.channel_max)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = FullyConnectedLayer(dim, hidden, "lrelu")
        self.fc2 = FullyConnectedLayer(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x))


class WindowAttention(nn.Module):
    """Multi-head contextual attention: q, k from L2-normalized tokens, v from raw tokens, masked keys."""

    def __init__(self, dim: int, num_heads: int, window_size: int, shift_size: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.window_size = window_size
        self.shift_size = shift_size
        self.scale = (dim // num_heads) ** -0.5
        self.q = FullyConnectedLayer(dim, dim)
        self.k = FullyConnectedLayer(dim, dim)
        self.v = FullyConnectedLayer(dim, dim)
        self.proj = FullyConnectedLayer(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, H, W, C], mask [B, H, W, 1] -> (out [B, H, W, C], updated mask)."""
        # In float32: F.normalize's eps (1e-12) is 0 in fp16, so an all-zero token (hole regions) gives 0 / 0 = NaN.
        normed = F.normalize(x.float(), p=2.0, dim=-1).to(x.dtype)
        out, mask = torch.ops.edgestack.window_masked_attention(
            self.q(normed), self.k(normed), self.v(x), mask,
            self.num_heads, self.window_size, self.shift_size, self.scale, -100.0,
        )
        return self.proj(out), mask


def region_bias(res: int, window: int, shift: int) -> torch.Tensor:
    """The official SwinTransformerBlock.calculate_mask: [nW, N, N] with 0 inside a region, -100 across regions."""
    img = torch.zeros(1, res, res, 1)
    cuts = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    for i, (h, w) in enumerate((h, w) for h in cuts for w in cuts):
        img[:, h, w, :] = i
    ids = img.reshape(res // window, window, res // window, window).permute(0, 2, 1, 3).reshape(-1, window * window)
    diff = ids[:, None, :] - ids[:, :, None]
    return torch.where(diff != 0, -100.0, 0.0)


class SwinTransformerBlock(nn.Module):
    """Adjusted block: no LayerNorm; fuse(cat[x, attn(x)]) then MLP, no residuals."""

    def __init__(self, dim: int, resolution: int, num_heads: int, window_size: int, shift_size: int,
                 mlp_ratio: float) -> None:
        super().__init__()
        if resolution <= window_size:  # one window covers the map: no partition, no shift (as the official)
            window_size, shift_size = resolution, 0
        self.attn = WindowAttention(dim, num_heads, window_size, shift_size)
        self.fuse = FullyConnectedLayer(dim * 2, dim, "lrelu")
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        if shift_size > 0:
            # Unused by the op (it builds the same bias itself); kept so official checkpoints load strictly.
            self.register_buffer("attn_mask", region_bias(resolution, window_size, shift_size))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, mask = self.attn(x, mask)
        return self.mlp(self.fuse(torch.cat([x, out], dim=-1))), mask


class PatchResample(nn.Module):
    """PatchMerging (down) / PatchUpsampling (up): one partial 3x3 conv, lrelu."""

    def __init__(self, dim: int, up: int = 1, down: int = 1) -> None:
        super().__init__()
        self.conv = Conv2dLayerPartial(dim, dim, 3, "lrelu", up=up, down=down)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None):
        return self.conv(x, mask)


def _nchw(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2)


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1)


class BasicLayer(nn.Module):
    """One transformer stage: optional resample, blocks (shift on odd ones), partial conv + global residual."""

    def __init__(self, dim: int, resolution: int, depth: int, num_heads: int, window_size: int, mlp_ratio: float,
                 downsample: PatchResample | None) -> None:
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(dim, resolution, num_heads, window_size, 0 if i % 2 == 0 else window_size // 2,
                                 mlp_ratio)
            for i in range(depth)
        )
        self.conv = Conv2dLayerPartial(dim, dim, 3, "lrelu")

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None):
        """x [B, C, H, W], mask [B, 1, H, W] or None (unmasked stages attend to every token)."""
        if self.downsample is not None:
            x, mask = self.downsample(x, mask)
        identity = x
        tokens = _nhwc(x)
        # Unmasked stages: an all-valid mask adds no key bias, which is exactly the official mask=None path.
        token_mask = _nhwc(mask) if mask is not None else torch.ones_like(tokens[..., :1])
        for block in self.blocks:
            tokens, token_mask = block(tokens, token_mask)
        x, mask = self.conv(_nchw(tokens), _nchw(token_mask) if mask is not None else None)
        return x + identity, mask


class DecStyleBlock(nn.Module):
    def __init__(self, res: int, in_channels: int, out_channels: int, style_dim: int, img_channels: int) -> None:
        super().__init__()
        self.conv0 = StyleConv(in_channels, out_channels, style_dim, 2**res, up=2, use_noise=False)
        self.conv1 = StyleConv(out_channels, out_channels, style_dim, 2**res, use_noise=False)
        self.toRGB = ToRGB(out_channels, img_channels, style_dim)

    def forward(self, x, img, style, skip):
        x = self.conv0(x, style) + skip
        x = self.conv1(x, style)
        return x, self.toRGB(x, style, skip=img)


class FirstStage(nn.Module):
    """Conv head (partial convs) -> five transformer stages -> style-modulated conv tail; a coarse image."""

    def __init__(self, cfg: MATConfig, img_channels: int = 3) -> None:
        super().__init__()
        dim = cfg.dim
        self.conv_first = Conv2dLayerPartial(img_channels + 1, dim, 3, "lrelu")
        down_time = int(math.log2(cfg.resolution // TOKEN_RES))
        self.enc_conv = nn.ModuleList(Conv2dLayerPartial(dim, dim, 3, "lrelu", down=2) for _ in range(down_time))
        ratios = (1, 0.5, 0.5, 2, 2)
        res = TOKEN_RES
        self.tran = nn.ModuleList()
        for depth, window, ratio in zip(cfg.depths, cfg.window_sizes, ratios):
            res = int(res * ratio)
            merge = PatchResample(dim, down=2) if ratio < 1 else PatchResample(dim, up=2) if ratio > 1 else None
            self.tran.append(BasicLayer(dim, res, depth, cfg.num_heads, window, cfg.mlp_ratio, merge))
        # Global style: 16x16 -> 1x1 by four stride-2 convs (index 4 is the official's AdaptiveAvgPool2d).
        self.down_conv = nn.Sequential(*(Conv2dLayer(dim, dim, 3, "lrelu", down=2) for _ in range(4)))
        self.to_style = FullyConnectedLayer(dim, dim * 2, "lrelu")
        self.ws_style = FullyConnectedLayer(cfg.w_dim, dim, "lrelu")
        self.to_square = FullyConnectedLayer(dim, MID_RES * MID_RES, "lrelu")
        self.dec_conv = nn.ModuleList(
            DecStyleBlock(int(math.log2(TOKEN_RES)) + 1 + i, dim, dim, dim * 3, img_channels) for i in range(down_time)
        )

    def forward(self, images: torch.Tensor, masks: torch.Tensor, w: torch.Tensor, mix: torch.Tensor) -> torch.Tensor:
        x, mask = self.conv_first(torch.cat([masks - 0.5, images * masks], dim=1), masks)
        skips = [x]
        for i, block in enumerate(self.enc_conv):
            x, mask = block(x, mask)
            if i != len(self.enc_conv) - 1:
                skips.append(x)
        # Stages 0, 1 carry the mask; 2 (middle), 3, 4 run unmasked (the official passes mask=None).
        x, mask = self.tran[0](x, mask)
        skip64 = x
        x, mask = self.tran[1](x, mask)
        skip32 = x
        x, _ = self.tran[2](x, None)

        ws = self.ws_style(w)
        add_n = self.to_square(ws).reshape(-1, 1, MID_RES, MID_RES)
        mix = mix.transpose(1, 2).reshape(x.shape)  # tokens [B, 256, C] -> [B, C, 16, 16]
        x = x * mix + add_n * (1 - mix)
        gs = self.to_style(self.down_conv(x).mean(dim=[2, 3]))
        style = torch.cat([gs, ws], dim=1)

        x = self.tran[3](x, None)[0] + skip32
        x = self.tran[4](x, None)[0] + skip64
        img = None
        for i, block in enumerate(self.dec_conv):
            x, img = block(x, img, style, skips[len(self.dec_conv) - i - 1])
        return img * (1 - masks) + images * masks


class EncFromRGB(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv0 = Conv2dLayer(in_channels, out_channels, 1, "lrelu")
        self.conv1 = Conv2dLayer(out_channels, out_channels, 3, "lrelu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1(self.conv0(x))


class ConvBlockDown(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv0 = Conv2dLayer(in_channels, out_channels, 3, "lrelu", down=2)
        self.conv1 = Conv2dLayer(out_channels, out_channels, 3, "lrelu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1(self.conv0(x))


class ToStyle(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(*(Conv2dLayer(in_channels, in_channels, 3, "lrelu", down=2) for _ in range(3)))
        self.fc = FullyConnectedLayer(in_channels, out_channels, "lrelu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean(dim=[2, 3]))


class DecBlockFirstV2(nn.Module):
    def __init__(self, res: int, in_channels: int, out_channels: int, style_dim: int, img_channels: int) -> None:
        super().__init__()
        self.conv0 = Conv2dLayer(in_channels, in_channels, 3, "lrelu")
        self.conv1 = StyleConv(in_channels, out_channels, style_dim, 2**res)
        self.toRGB = ToRGB(out_channels, img_channels, style_dim)

    def forward(self, x, skip, style, noises):
        x = self.conv1(self.conv0(x) + skip, style, noises[0])
        return x, self.toRGB(x, style)


class DecBlock(nn.Module):
    def __init__(self, res: int, in_channels: int, out_channels: int, style_dim: int, img_channels: int) -> None:
        super().__init__()
        self.conv0 = StyleConv(in_channels, out_channels, style_dim, 2**res, up=2)
        self.conv1 = StyleConv(out_channels, out_channels, style_dim, 2**res)
        self.toRGB = ToRGB(out_channels, img_channels, style_dim)

    def forward(self, x, img, skip, style, noises):
        x = self.conv0(x, style, noises[0]) + skip
        x = self.conv1(x, style, noises[1])
        return x, self.toRGB(x, style, skip=img)


class Encoder(nn.Module):
    def __init__(self, cfg: MATConfig, img_channels: int = 3) -> None:
        super().__init__()
        self.res_log2 = int(math.log2(cfg.resolution))
        for i in range(self.res_log2, 3, -1):
            block = EncFromRGB(img_channels * 2 + 1, cfg.nf(i)) if i == self.res_log2 else ConvBlockDown(
                cfg.nf(i + 1), cfg.nf(i))
            setattr(self, f"EncConv_Block_{2**i}x{2**i}", block)

    def forward(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        out = {}
        for i in range(self.res_log2, 3, -1):
            x = getattr(self, f"EncConv_Block_{2**i}x{2**i}")(x)
            out[i] = x
        return out


class Decoder(nn.Module):
    def __init__(self, cfg: MATConfig, style_dim: int, img_channels: int = 3) -> None:
        super().__init__()
        self.res_log2 = int(math.log2(cfg.resolution))
        self.Dec_16x16 = DecBlockFirstV2(4, cfg.nf(4), cfg.nf(4), style_dim, img_channels)
        for res in range(5, self.res_log2 + 1):
            setattr(self, f"Dec_{2**res}x{2**res}", DecBlock(res, cfg.nf(res - 1), cfg.nf(res), style_dim,
                                                             img_channels))

    def forward(self, x, style, features, noises: list[torch.Tensor]) -> torch.Tensor:
        x, img = self.Dec_16x16(x, features[4], style, noises[:1])
        for res in range(5, self.res_log2 + 1):
            n = 2 * (res - 5) + 1
            x, img = getattr(self, f"Dec_{2**res}x{2**res}")(x, img, features[res], style, noises[n:n + 2])
        return img


class SynthesisNet(nn.Module):
    def __init__(self, cfg: MATConfig, img_channels: int = 3) -> None:
        super().__init__()
        self.first_stage = FirstStage(cfg, img_channels)
        self.enc = Encoder(cfg, img_channels)
        self.to_square = FullyConnectedLayer(cfg.w_dim, MID_RES * MID_RES, "lrelu")
        self.to_style = ToStyle(cfg.nf(4), cfg.nf(2) * 2)
        self.dec = Decoder(cfg, cfg.w_dim + cfg.nf(2) * 2, img_channels)

    def forward(self, images, masks, w, mix1, mix2, noises: list[torch.Tensor]):
        out_stg1 = self.first_stage(images, masks, w, mix1)
        x = images * masks + out_stg1 * (1 - masks)
        features = self.enc(torch.cat([masks - 0.5, x, images * masks], dim=1))
        add_n = self.to_square(w).reshape(-1, 1, MID_RES, MID_RES)
        fea_16 = features[4] * mix2 + add_n * (1 - mix2)
        features[4] = fea_16
        style = torch.cat([w, self.to_style(fea_16)], dim=1)
        img = self.dec(fea_16, style, features, noises)
        return img * (1 - masks) + images * masks


def noise_resolutions(resolution: int) -> list[int]:
    """Side of each second-stage noise map, in the order they are packed: Dec_16x16.conv1, then conv0/conv1 per res."""
    return [MID_RES] + [2**r for r in range(5, int(math.log2(resolution)) + 1) for _ in range(2)]


class MAT(nn.Module):
    """Deployable MAT generator. Keys: `synthesis.*`, `mapping.*` as the official G_ema."""

    def __init__(self, cfg: MATConfig) -> None:
        super().__init__()
        if cfg.resolution < 128 or cfg.resolution & (cfg.resolution - 1):
            raise ValueError(f"MAT resolution must be a power of two >= 128, got {cfg.resolution}")
        self.cfg = cfg
        self.synthesis = SynthesisNet(cfg)
        self.mapping = MappingNet(cfg.z_dim, cfg.w_dim, cfg.mapping_layers)
        self.noise_sizes = noise_resolutions(cfg.resolution)

    def forward(self, image: torch.Tensor, mask: torch.Tensor, z: torch.Tensor, mix_stage1: torch.Tensor,
                mix_stage2: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """image [B,3,R,R] in [-1,1]; mask [B,1,R,R] 1 valid / 0 hole; z [B,z_dim]; mix_stage1 [B,256,dim] and
        mix_stage2 [B,nf16,16,16] in {0,1}; noise [B, sum r^2] packed per-layer noise. Returns image [B,3,R,R]."""
        w = self.mapping(z, self.cfg.truncation_psi)
        noises, start = [], 0
        for r in self.noise_sizes:
            noises.append(noise[:, start:start + r * r].reshape(-1, 1, r, r))
            start += r * r
        return self.synthesis(image, mask, w, mix_stage1, mix_stage2, noises)
