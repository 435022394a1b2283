"""Free-form inpainting masks: rectangles + brush strokes, as in MAT's supplement (after DeepFill v2).

Same sampling as the official datasets/mask_generator_512.py (large-mask setting: up to 5 half-size and
3 full-size rectangles, up to 9 strokes of 4-18 vertices, width 12-48 at 512 px; the 'small' setting
uses up to 3 / 2 / 4), drawn with numpy and a seeded generator. Returned masks are 1 = valid, 0 = hole.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from edgestack.errors import EdgestackError

SETTINGS = {"large": (5, 3, 9), "small": (3, 2, 4)}  # max half-size rects, full-size rects, strokes (exclusive)


def _stroke(hole: np.ndarray, points: list[tuple[float, float]], width: float) -> None:
    """Mark pixels within width/2 of the polyline (segments with round caps, like PIL's line + end discs)."""
    s = hole.shape[0]
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    radius = width / 2
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
        dx, dy = x1 - x0, y1 - y0
        t = np.clip(((xx - x0) * dx + (yy - y0) * dy) / max(dx * dx + dy * dy, 1e-6), 0, 1)
        hole |= (xx - x0 - t * dx) ** 2 + (yy - y0 - t * dy) ** 2 <= radius * radius


def _brush(rng: np.random.Generator, s: int, max_tries: int) -> np.ndarray:
    hole = np.zeros((s, s), bool)
    scale = s / 512  # the official widths are for 512 px
    average_radius = math.sqrt(2 * s * s) / 8
    mean_angle, angle_range = 2 * math.pi / 5, 2 * math.pi / 15
    for _ in range(rng.integers(max_tries) if max_tries > 0 else 0):
        num_vertex = int(rng.integers(4, 18))
        angle_min = mean_angle - rng.uniform(0, angle_range)
        angle_max = mean_angle + rng.uniform(0, angle_range)
        points = [(float(rng.integers(0, s)), float(rng.integers(0, s)))]
        for i in range(num_vertex):
            angle = rng.uniform(angle_min, angle_max)
            angle = 2 * math.pi - angle if i % 2 == 0 else angle
            r = float(np.clip(rng.normal(average_radius, average_radius // 2), 0, 2 * average_radius))
            x = float(np.clip(points[-1][0] + r * math.cos(angle), 0, s))
            y = float(np.clip(points[-1][1] + r * math.sin(angle), 0, s))
            points.append((x, y))
        _stroke(hole, points, rng.uniform(12, 48) * scale)
    if rng.random() > 0.5:
        hole = hole[::-1]
    if rng.random() > 0.5:
        hole = hole[:, ::-1]
    return hole


def random_mask(size: int, seed: int = 0, setting: str = "large",
                hole_range: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
    """One [1, size, size] float mask (1 valid, 0 hole) whose hole ratio lies strictly inside `hole_range`."""
    if setting not in SETTINGS:
        raise EdgestackError(f"unknown mask setting {setting!r}; choose one of {', '.join(SETTINGS)}")
    if not 0 <= hole_range[0] < hole_range[1] <= 1:
        raise EdgestackError(f"hole_range must satisfy 0 <= low < high <= 1, got {hole_range}")
    half_rects, full_rects, strokes = SETTINGS[setting]
    coef = min(hole_range[0] + hole_range[1], 1.0)
    rng = np.random.default_rng(seed)
    for _ in range(1000):
        valid = np.ones((size, size), bool)
        for tries, max_size in ((int(half_rects * coef), size // 2), (int(full_rects * coef), size)):
            for _ in range(rng.integers(tries) if tries > 0 else 0):
                w, h = int(rng.integers(max_size)), int(rng.integers(max_size))
                x = int(rng.integers(-(w // 2), size - w + w // 2))
                y = int(rng.integers(-(h // 2), size - h + h // 2))
                valid[max(y, 0):min(y + h, size), max(x, 0):min(x + w, size)] = False
        valid &= ~_brush(rng, size, int(strokes * coef))
        hole_ratio = 1 - valid.mean()
        if hole_range[0] < hole_ratio < hole_range[1]:
            return torch.from_numpy(valid.astype(np.float32))[None]
    raise EdgestackError(f"could not draw a mask with hole ratio in {hole_range} in 1000 tries; widen the range")


def random_masks(batch: int, size: int, seed: int = 0, setting: str = "large",
                 hole_range: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
    """[batch, 1, size, size]; sample i uses seed `seed + i`, so batches are reproducible and extendable."""
    return torch.stack([random_mask(size, seed + i, setting, hole_range) for i in range(batch)])
