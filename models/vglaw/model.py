"""VG-LAW (Su et al., CVPR 2023): a ViT whose q/k/v projections are generated from the expression.

Language side: BERT-style encoder -> per-layer aggregation (learnable layer embedding e_i, softmax over
tokens within G channel groups, FC to d_l/r + GELU) -> Phi_i, an FC producing a d_w x d_w matrix,
zero-initialised so training starts from the static backbone.
Vision side: every block's fused qkv weight is W_i = W0_i + P Phi_i Q^T, with P (3d x d_w) and Q (d x d_w)
shared by all blocks. It is applied in factored form, x W_i^T = x W0_i^T + ((x Q) Phi_i^T) P^T, so a
batch of different prompts costs two thin matmuls per block and no per-sample weight is materialised.
Heads: language-adaptive pooling + 3-layer MLP + sigmoid -> box (cx, cy, w, h in 0..1); transposed convs
to stride 4, a dot product with the [CLS] feature, bilinear x4 -> mask logits.

The deployable split (`TextGraph`, `VisionGraph`) cuts exactly between the two sides: the text graph's
outputs (Phi for every block + the [CLS] feature) are all the vision graph needs from the prompt.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

NEG = -1e4  # additive mask for padding; finite so fp16 softmax over an all-padding row stays finite


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if bias is not None:
        scores = scores + bias
    return scores.softmax(-1) @ v


class TextLayer(nn.Module):
    """Post-LN transformer layer as in BERT."""

    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        x = self.norm1(x + self.proj(_attention(q, k, v, bias).transpose(1, 2).reshape(b, n, d)))
        return self.norm2(x + self.ffn(x))


class TextEncoder(nn.Module):
    def __init__(self, vocab: int, dim: int, depth: int, heads: int, max_length: int):
        super().__init__()
        self.tokens = nn.Embedding(vocab, dim)
        self.positions = nn.Parameter(torch.randn(1, max_length, dim) * 0.02)
        self.norm = nn.LayerNorm(dim)
        self.layers = nn.ModuleList(TextLayer(dim, heads, 4 * dim) for _ in range(depth))

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.tokens(ids) + self.positions[:, : ids.shape[1]])
        bias = (1 - attention_mask.to(x.dtype))[:, None, None, :] * NEG
        for layer in self.layers:
            x = layer(x, bias)
        return x


class WeightGenerator(nn.Module):
    """Language feature aggregation per vision block (e_i, G groups, FC to d_l/r, GELU) and Phi_i."""

    def __init__(self, text_dim: int, blocks: int, groups: int, reduction: int, rank: int):
        super().__init__()
        if text_dim % groups or text_dim % reduction:
            raise ValueError(f"text dim {text_dim} must be divisible by groups {groups} and reduction {reduction}")
        self.groups, self.rank = groups, rank
        hidden = text_dim // reduction
        self.layer_embed = nn.Parameter(torch.randn(blocks, text_dim) * 0.02)
        self.reduce_weight = nn.Parameter(torch.randn(blocks, text_dim, hidden) / math.sqrt(text_dim))
        self.reduce_bias = nn.Parameter(torch.zeros(blocks, hidden))
        # Phi starts at zero: W = W0 at initialisation, the language then learns to bend it.
        self.phi_weight = nn.Parameter(torch.zeros(blocks, hidden, rank * rank))
        self.phi_bias = nn.Parameter(torch.zeros(blocks, rank * rank))

    def forward(self, features: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        b, n, d = features.shape
        grouped = features.view(b, n, self.groups, d // self.groups)
        embed = self.layer_embed.view(-1, self.groups, d // self.groups)
        scores = torch.einsum("blgc,igc->bigl", grouped, embed)
        scores = scores + (1 - attention_mask.to(scores.dtype))[:, None, None, :] * NEG
        pooled = torch.einsum("bigl,blgc->bigc", scores.softmax(-1), grouped).reshape(b, -1, d)  # h0 per block
        h1 = F.gelu(torch.einsum("bid,idh->bih", pooled, self.reduce_weight) + self.reduce_bias)
        phi = torch.einsum("bih,ihk->bik", h1, self.phi_weight) + self.phi_bias
        return phi.view(b, -1, self.rank, self.rank)


class AdaptiveBlock(nn.Module):
    """Pre-LN ViT block whose fused qkv projection is W0 + P Phi Q^T (P, Q passed in: shared by all blocks)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)  # W0 and its bias
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, p: torch.Tensor, q: torch.Tensor, phi: torch.Tensor | None) -> torch.Tensor:
        b, n, d = x.shape
        h = self.norm1(x)
        qkv = self.qkv(h)
        if phi is not None:
            qkv = qkv + ((h @ q) @ phi.transpose(1, 2)) @ p.t()
        q_, k_, v_ = qkv.view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        x = x + self.proj(_attention(q_, k_, v_).transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.norm2(x))


class VGLaw(nn.Module):
    """Full model for training: (image, ids, attention_mask) -> (box cx,cy,w,h in 0..1, mask logits at HxW).

    `adaptive=False` disables Phi (static weights; the ablation the paper compares against): the prompt then
    reaches only the heads."""

    def __init__(self, vocab: int, image_size: int, patch: int, dim: int, depth: int, heads: int,
                 text_dim: int, text_depth: int, text_heads: int, max_length: int, groups: int, reduction: int,
                 rank: int, pool_dim: int, adaptive: bool = True):
        super().__init__()
        if image_size % patch or patch < 4 or patch & (patch - 1):
            raise ValueError(f"image size {image_size} must be a multiple of the patch {patch}, a power of two >= 4")
        self.image_size, self.patch, self.adaptive = image_size, patch, adaptive
        self.grid = image_size // patch
        self.text = TextEncoder(vocab, text_dim, text_depth, text_heads, max_length)
        self.weights = WeightGenerator(text_dim, depth, groups, reduction, rank)
        # Convolutional stem (stride-2 3x3 convs down to the patch stride) instead of one patchify conv, and fixed
        # 2-D sin-cos positions: both make a from-scratch ViT converge in far fewer steps (Xiao et al. 2021,
        # "Early convolutions help transformers see better"; MAE). The paper starts from a pretrained ViT-B instead.
        stem, channels = [], 3
        for i in range(int(math.log2(patch))):
            width = dim // 2 ** (int(math.log2(patch)) - 1 - i)
            stem += [nn.Conv2d(channels, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            channels = width
        stem.append(nn.Conv2d(channels, dim, 1))
        self.patch_embed = nn.Sequential(*stem)
        self.register_buffer("positions", sincos_positions(self.grid, dim), persistent=False)
        self.p = nn.Parameter(torch.randn(3 * dim, rank) / math.sqrt(rank))
        self.q = nn.Parameter(torch.randn(dim, rank) / math.sqrt(dim))
        self.blocks = nn.ModuleList(AdaptiveBlock(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        # REC: language-adaptive pooling + 3-layer MLP.
        self.pool_visual = nn.Linear(dim, pool_dim)
        self.pool_text = nn.Linear(text_dim, pool_dim)
        self.box_mlp = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim), nn.ReLU(),
                                     nn.Linear(dim, 4))
        # RES: transposed convs from stride `patch` to stride 4 (narrow: they run at the highest resolution),
        # then a 1x1 conv to text_dim channels for the dot product with the [CLS] feature.
        ups, channels = [], dim
        for _ in range(int(math.log2(patch // 4))):
            ups += [nn.ConvTranspose2d(channels, dim // 2, 2, 2), nn.GroupNorm(8, dim // 2), nn.GELU()]
            channels = dim // 2
        ups.append(nn.Conv2d(channels, text_dim, 1))
        self.upsample = nn.Sequential(*ups)

    def encode_text(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(Phi for every block [B, depth, rank, rank], [CLS] feature [B, text_dim])."""
        features = self.text(ids, attention_mask)
        return self.weights(features, attention_mask), features[:, 0]

    def ground(self, image: torch.Tensor, phi: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = image.shape[0]
        x = self.patch_embed(image).flatten(2).transpose(1, 2) + self.positions
        for i, block in enumerate(self.blocks):
            x = block(x, self.p, self.q, phi[:, i] if self.adaptive else None)
        x = self.norm(x)
        attention = torch.einsum("bnk,bk->bn", self.pool_visual(x), self.pool_text(text))
        pooled = torch.einsum("bn,bnd->bd", (attention / math.sqrt(self.pool_visual.out_features)).softmax(-1), x)
        box = self.box_mlp(pooled).sigmoid()
        fmap = self.upsample(x.transpose(1, 2).reshape(b, -1, self.grid, self.grid))
        logits = torch.einsum("bchw,bc->bhw", fmap, text)[:, None] / math.sqrt(text.shape[-1])
        return box, F.interpolate(logits, scale_factor=4, mode="bilinear", align_corners=False)

    def forward(self, image: torch.Tensor, ids: torch.Tensor, attention_mask: torch.Tensor):
        return self.ground(image, *self.encode_text(ids, attention_mask))


class TextGraph(nn.Module):
    """Deployable graph 1: (ids, attention_mask) -> (phi, text_feature). Run once per distinct prompt."""

    def __init__(self, model: VGLaw):
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.encode_text(ids, attention_mask)


class VisionGraph(nn.Module):
    """Deployable graph 2: (image, phi, text_feature) -> (box x1,y1,x2,y2 in input pixels, mask probability)."""

    def __init__(self, model: VGLaw):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, phi: torch.Tensor, text_feature: torch.Tensor):
        box, logits = self.model.ground(image, phi, text_feature)
        return box_to_corners(box) * self.model.image_size, logits.sigmoid()


def sincos_positions(grid: int, dim: int) -> torch.Tensor:
    """[1, grid*grid, dim] fixed 2-D sin-cos embedding: half the channels encode the row, half the column."""
    if dim % 4:
        raise ValueError(f"dim {dim} must be divisible by 4 for 2-D sin-cos positions")
    frequencies = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                                indexing="ij")
    angles = [axis.reshape(-1, 1) * frequencies for axis in (rows, cols)]
    table = torch.cat([f(a) for a in angles for f in (torch.sin, torch.cos)], dim=1)
    return table[None].float()


def box_to_corners(box: torch.Tensor) -> torch.Tensor:
    """(cx, cy, w, h) -> (x1, y1, x2, y2), same units."""
    cx, cy, w, h = box.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


def build(config: dict[str, Any]) -> VGLaw:
    return VGLaw(**config)
