"""StyleGAN2-style layers as MAT uses them (the official networks/basic_module.py), in deployable form.

Parameter and buffer names match the official modules so its checkpoints load strictly. Differences are
in how the math is written, not what it computes:
- resampling (the [1,3,3,1] FIR filter of StyleGAN2's upfirdn2d) is done with plain pad/conv ops;
- modulated convs scale the input by the style, convolve with the constant weight, then demodulate the
  output, so no conv takes a per-sample weight (the official builds a grouped conv from the style).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LRELU_GAIN = math.sqrt(2.0)


def _blur_filter() -> torch.Tensor:
    """StyleGAN2's setup_filter([1,3,3,1]): the separable 4x4 binomial filter, normalized to sum 1."""
    f = torch.tensor([1.0, 3.0, 3.0, 1.0])
    f = f[:, None] * f[None, :]
    return f / f.sum()


def bias_act(x: torch.Tensor, bias: torch.Tensor | None, activation: str, dim: int = 1, gain: float = 1.0):
    """bias_act's 'linear' and 'lrelu' (slope 0.2, default gain sqrt 2) along `dim`."""
    if bias is not None:
        shape = [-1 if i == dim % x.dim() else 1 for i in range(x.dim())]
        x = x + bias.reshape(shape)
    if activation == "lrelu":
        return F.leaky_relu(x, 0.2) * (LRELU_GAIN * gain)
    return x * gain if gain != 1 else x


def fir(x: torch.Tensor, f: torch.Tensor, pad: tuple[int, int, int, int], gain: float = 1.0) -> torch.Tensor:
    """upfirdn2d's filtering step (pad, then depthwise 4x4 filter; the filter is symmetric, so no flip)."""
    c = x.shape[1]
    x = F.pad(x, pad)
    weight = (f * gain).to(x.dtype)[None, None].expand(c, 1, *f.shape)
    return F.conv2d(x, weight, groups=c)


def upsample2d(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """upfirdn2d.upsample2d(x, f, up=2): zero insertion, pad (2,1), filter with gain 4."""
    b, c, h, w = x.shape
    x = F.pad(x.reshape(b, c, h, 1, w, 1), (0, 1, 0, 0, 0, 1)).reshape(b, c, 2 * h, 2 * w)
    return fir(x, f, (2, 1, 2, 1), gain=4.0)


def conv2d_resample(x: torch.Tensor, w: torch.Tensor, f: torch.Tensor, up: int, down: int) -> torch.Tensor:
    """conv2d_resample for what MAT uses: plain 'same' conv, up=2 (transposed conv + FIR), down=2 (FIR + stride)."""
    k = w.shape[-1]
    if up == 1 and down == 1:
        return F.conv2d(x, w, padding=k // 2)
    if down == 2 and up == 1 and k == 3:
        return F.conv2d(fir(x, f, (2, 2, 2, 2)), w, stride=2)
    if up == 2 and down == 1 and k == 3:
        # Transposed conv with the flipped kernel, then pad 1 and blur with gain up^2.
        x = F.conv_transpose2d(x, w.transpose(0, 1).flip([2, 3]), stride=2)
        return fir(x, f, (1, 1, 1, 1), gain=4.0)
    raise NotImplementedError(f"conv2d_resample: kernel {k}, up {up}, down {down} is not used by MAT")


class FullyConnectedLayer(nn.Module):
    def __init__(self, in_features: int, out_features: int, activation: str = "linear", lr_multiplier: float = 1.0,
                 bias_init: float = 0.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init)))
        self.activation = activation
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.matmul((self.weight * self.weight_gain).t())
        bias = self.bias * self.bias_gain if self.bias_gain != 1 else self.bias
        return bias_act(x, bias, self.activation, dim=-1)


class Conv2dLayer(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, activation: str = "linear",
                 up: int = 1, down: int = 1) -> None:
        super().__init__()
        self.activation = activation
        self.up = up
        self.down = down
        self.register_buffer("resample_filter", _blur_filter())
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = conv2d_resample(x, self.weight * self.weight_gain, self.resample_filter, self.up, self.down)
        return bias_act(x, self.bias, self.activation)


class Conv2dLayerPartial(nn.Module):
    """Partial convolution: rescale by valid/window and mark an output valid if its window saw any valid input."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, activation: str = "linear",
                 up: int = 1, down: int = 1) -> None:
        super().__init__()
        self.conv = Conv2dLayer(in_channels, out_channels, kernel_size, activation, up, down)
        self.kernel_size = kernel_size
        self.stride = down

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None):
        x = self.conv(x)
        if mask is None:
            return x, None
        k = self.kernel_size
        # Valid counts in float32 whatever the model's dtype: the 1e-8 floor below is 0 in fp16 (0 / 0 = NaN).
        ones = torch.ones(1, 1, k, k, dtype=torch.float32, device=mask.device)
        valid = F.conv2d(mask.float(), ones, stride=self.stride, padding=k // 2)
        update = torch.clamp(valid, 0, 1)
        # The official k*k / (valid + 1e-8); a clamp instead of the add, which the ONNX optimizer drops
        # (turning 0 * 1/0 into NaN). Same value for any valid count above 1e-8.
        ratio = update * (k * k) / torch.clamp(valid, min=1e-8)
        return x * ratio.to(x.dtype), update.to(mask.dtype)


class ModulatedConv2d(nn.Module):
    """Style-modulated conv in constant-weight form: conv(x * s, W) * d, d = rsqrt(sum (W s)^2 + 1e-8)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, style_dim: int,
                 demodulate: bool = True, up: int = 1) -> None:
        super().__init__()
        self.demodulate = demodulate
        self.weight = nn.Parameter(torch.randn(1, out_channels, in_channels, kernel_size, kernel_size))
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)
        self.up = up
        self.register_buffer("resample_filter", _blur_filter())
        self.affine = FullyConnectedLayer(style_dim, in_channels, bias_init=1)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        s = self.affine(style)  # [B, in]
        w = self.weight[0] * self.weight_gain  # [out, in, k, k]
        x = conv2d_resample(x * s[:, :, None, None], w, self.resample_filter, self.up, 1)
        if self.demodulate:
            d = torch.rsqrt(s.square().matmul(w.square().sum(dim=[2, 3]).t()) + 1e-8)  # [B, out]
            x = x * d[:, :, None, None]
        return x


class StyleConv(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, style_dim: int, resolution: int, kernel_size: int = 3,
                 up: int = 1, use_noise: bool = True, activation: str = "lrelu", demodulate: bool = True) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, out_channels, kernel_size, style_dim, demodulate, up)
        self.use_noise = use_noise
        self.resolution = resolution
        if use_noise:
            self.register_buffer("noise_const", torch.randn(resolution, resolution))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.activation = activation

    def forward(self, x: torch.Tensor, style: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """noise: [B, 1, H, W] (the official's noise_mode is the caller's choice of this tensor)."""
        x = self.conv(x, style)
        if self.use_noise:
            x = x + noise * self.noise_strength
        return bias_act(x, self.bias, self.activation)


class ToRGB(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, style_dim: int) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, out_channels, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.register_buffer("resample_filter", _blur_filter())

    def forward(self, x: torch.Tensor, style: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        out = bias_act(self.conv(x, style), self.bias, "linear")
        if skip is not None:
            out = out + upsample2d(skip, self.resample_filter)
        return out


class MappingNet(nn.Module):
    """z -> w: 2nd-moment normalization, 8 lrelu FC layers at lr multiplier 0.01; truncation toward w_avg."""

    def __init__(self, z_dim: int, w_dim: int, num_layers: int = 8, lr_multiplier: float = 0.01) -> None:
        super().__init__()
        self.num_layers = num_layers
        features = [z_dim] + [w_dim] * num_layers
        for idx in range(num_layers):
            layer = FullyConnectedLayer(features[idx], features[idx + 1], "lrelu", lr_multiplier=lr_multiplier)
            setattr(self, f"fc{idx}", layer)
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0) -> torch.Tensor:
        x = z * (z.square().mean(dim=1, keepdim=True) + 1e-8).rsqrt()
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)
        if truncation_psi != 1:
            x = self.w_avg.lerp(x, truncation_psi)
        return x
