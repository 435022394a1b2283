"""Run a dense model over an image of any size at its native scale: overlapping tiles, blended back.

Tiles are the model's native size; neighbours overlap and are blended with weights that fall off
linearly towards tile edges, so seams vanish. Along an axis no longer than a tile the image runs
whole (padded by reflection to the model's size multiple): a small image in one pass, a strip as
one row or column of tiles.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets covering [0, size) with tiles of `tile`, neighbours overlapping by >= `overlap`."""
    if size <= tile:
        return [0]
    count = math.ceil((size - overlap) / (tile - overlap))
    return [round(i * (size - tile) / (count - 1)) for i in range(count)]


def blend_weights(tile_h: int, tile_w: int, overlap: int) -> np.ndarray:
    def ramp(n: int) -> np.ndarray:
        edge = np.minimum(np.arange(n) + 1, np.arange(n)[::-1] + 1).astype(np.float32)
        return np.clip(edge / max(overlap, 1), 1e-3, 1.0)

    return ramp(tile_h)[:, None] * ramp(tile_w)[None, :]


def _pad_to(chw: np.ndarray, height: int, width: int) -> np.ndarray:
    pad_h, pad_w = height - chw.shape[1], width - chw.shape[2]
    if pad_h == 0 and pad_w == 0:
        return chw
    mode = "reflect" if pad_h < chw.shape[1] and pad_w < chw.shape[2] else "edge"
    return np.pad(chw, ((0, 0), (0, pad_h), (0, pad_w)), mode=mode)


def run_tiled(
    chw: np.ndarray,
    predict: Callable[[np.ndarray], np.ndarray],
    tile: tuple[int, int],
    overlap: int,
    batch: int,
    multiple: int = 1,
) -> np.ndarray:
    """Probability map [H, W] for a normalized image [C, H, W]; `predict` maps [N,C,h,w] -> [N,1,h,w]."""
    _, height, width = chw.shape
    # Along an axis the image fits in one tile, the tile is the image, padded to the model's multiple only: a strip
    # padded to a whole tile was mostly its own last row repeated, and the model saw those streaks as defects.
    tile_h = min(tile[0], math.ceil(height / multiple) * multiple)
    tile_w = min(tile[1], math.ceil(width / multiple) * multiple)
    padded = _pad_to(chw, max(height, tile_h), max(width, tile_w))
    full_h, full_w = padded.shape[1:]
    boxes = [(y, x) for y in tile_starts(full_h, tile_h, overlap) for x in tile_starts(full_w, tile_w, overlap)]
    weights = blend_weights(tile_h, tile_w, overlap).astype(np.float64)
    # float64 sums: where the tiles agree (and where only one covers a pixel) the blend gives back the model's
    # own float32 value exactly, so a pixel at the threshold is judged as the whole image would judge it.
    acc = np.zeros((full_h, full_w), np.float64)
    total = np.zeros((full_h, full_w), np.float64)
    for i in range(0, len(boxes), batch):
        group = boxes[i : i + batch]
        probs = predict(np.stack([padded[:, y : y + tile_h, x : x + tile_w] for y, x in group]))
        for (y, x), prob in zip(group, probs):
            acc[y : y + tile_h, x : x + tile_w] += prob[0] * weights
            total[y : y + tile_h, x : x + tile_w] += weights
    return (acc / total)[:height, :width].astype(np.float32)
