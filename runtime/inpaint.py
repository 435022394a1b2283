"""Inpainting with a MAT bundle: any image size, a hole mask, seeded pluralistic results.

Mask convention (as the official MAT): white (255, or 1.0) = keep, black (0) = hole to fill. Pass
`invert_mask=True` (`--invert-mask`) for masks drawn the other way round (white = hole).

MAT runs at its fixed resolution R: each hole region is inpainted in an R x R window around it with context
on every side (regions that fit together share one; a region too large for one is inpainted in a window of its
own size, shrunk to R and back), the image padded by reflection where a window passes its edge. Pixels outside
the hole are always the input's own.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from edgestack import bundle as bundle_format
from edgestack.errors import EdgestackError, check_finite_output
from edgestack.runtime.engine import Engine, require_task
from edgestack.runtime.images import ImageLike, decode_file, read_image

MIN_SIDE = 32


def read_hole_mask(mask: ImageLike, shape: tuple[int, int], invert: bool = False) -> np.ndarray:
    """Boolean hole map (True = fill) from a mask file or array, validated against the image `shape`."""
    name = str(mask) if isinstance(mask, (str, Path)) else "mask array"
    if isinstance(mask, (str, Path)):
        path = Path(mask)
        if not path.is_file():
            raise EdgestackError(f"mask {path} does not exist; check the path")
        data = np.fromfile(str(path), np.uint8)
        mask = decode_file(data)
        if mask is None:
            raise EdgestackError(f"mask {path} could not be decoded; use a PNG with 0 = hole, 255 = keep")
        if mask.ndim == 3:
            if mask.shape[2] == 4 and np.ptp(mask[..., :3]) == 0 and np.ptp(mask[..., 3]) > 0:
                raise EdgestackError(f"mask {path} marks its hole in the alpha channel only; save it as a grayscale "
                                     "PNG with 0 = hole, 255 = keep")
            mask = mask[..., 0] if np.ptp(mask[..., :3].astype(int), axis=2).max() == 0 else None
            if mask is None:
                raise EdgestackError(f"mask {path} is a colour image; save it as a grayscale/black-and-white PNG")
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise EdgestackError(f"{name} must be HxW, got shape {mask.shape}")
    if mask.shape != shape:
        raise EdgestackError(f"{name} is {mask.shape[1]}x{mask.shape[0]} but the image is {shape[1]}x{shape[0]}; "
                             "they must match")
    if mask.dtype == np.uint8:
        # 0/1 label masks are binary already; JPEG'd 0/255 masks have in-between values.
        keep = mask.astype(bool) if mask.max() <= 1 else mask >= 128
    elif mask.dtype.kind in "fb":
        values = np.unique(mask)
        if not np.isin(values, (0, 1)).all():
            raise EdgestackError(f"{name} holds values {values[:8].tolist()}...; float masks must be 0 or 1 "
                                 "(uint8 masks 0..255)")
        keep = mask.astype(bool)
    else:
        raise EdgestackError(f"{name} has dtype {mask.dtype}; use uint8 0..255 or float 0/1")
    hole = keep if invert else ~keep
    if not hole.any():
        raise EdgestackError(f"{name} has no hole (nothing to fill); " + (
            "with --invert-mask white marks the hole: drop it if black does" if invert else
            "0 = hole, or pass --invert-mask if white marks the hole"))
    if hole.all():
        raise EdgestackError(f"{name} marks the whole image as hole; MAT needs some known pixels as context")
    return hole


def inpaint(
    engine: Engine, image: ImageLike, mask: ImageLike, invert_mask: bool = False, seed: int = 0,
    noise_mode: str = "const", gray_to_rgb: bool = False, bit_depth: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(input RGB uint8, inpainted RGB uint8, hole map) at the image's own size. A 16-bit image is read as
    8-bit (`bit_depth`: its camera's bits), so the result is 8-bit."""
    from safetensors import safe_open

    from edgestack.models.mat import noise_const_names, seeded_inputs

    require_task(engine, "inpainting")
    meta = engine.meta
    rgb = read_image(image, gray_to_rgb, bit_depth)
    height, width = rgb.shape[:2]
    name = str(image) if isinstance(image, (str, Path)) else "image array"
    if min(height, width) < MIN_SIDE:
        raise EdgestackError(f"{name} is {width}x{height}; inpainting needs at least {MIN_SIDE}x{MIN_SIDE}")
    hole = read_hole_mask(mask, (height, width), invert_mask)
    res = meta["default_size"][0]
    _, labels, stats, _ = cv2.connectedComponentsWithStats(hole.astype(np.uint8), connectivity=8)
    windows = hole_windows(stats[1:], res, res // 8, (height, width))
    # Padded by reflection so every window lies inside; the hole is mirrored with the image: what lies under a
    # hole at an edge is reflected into the padding, and must not be context there.
    top = max(0, -min(y for y, _, _, _ in windows))
    left = max(0, -min(x for _, x, _, _ in windows))
    bottom = max(0, max(y + side for y, _, side, _ in windows) - height)
    right = max(0, max(x + side for _, x, side, _ in windows) - width)
    padded = cv2.copyMakeBorder(rgb, top, bottom, left, right, cv2.BORDER_REFLECT_101)
    padded_hole = cv2.copyMakeBorder(hole.astype(np.uint8), top, bottom, left, right, cv2.BORDER_REFLECT_101) > 0
    padded_labels = cv2.copyMakeBorder(labels, top, bottom, left, right, cv2.BORDER_CONSTANT, value=0)
    settings = meta["model"]["settings"]
    with safe_open(str(engine.bundle / bundle_format.WEIGHTS), "numpy") as file:  # the noise maps, not 241 MB
        weights = {key: file.get_tensor(key) for key in noise_const_names(settings)}
    pre, post = meta["preprocess"], meta["postprocess"]
    batch = meta["axes"]["batch"]["max"]
    out = padded.copy()
    for start in range(0, len(windows), batch):
        group = [(y + top, x + left, side, members) for y, x, side, members in windows[start : start + batch]]
        crops, keeps = [], []
        for y, x, side, _ in group:
            crop, unknown = padded[y : y + side, x : x + side], padded_hole[y : y + side, x : x + side]
            if side != res:  # a hole wider than a window's context: its surroundings, shrunk to MAT's size
                crop = cv2.resize(crop, (res, res), interpolation=cv2.INTER_AREA)
                unknown = cv2.resize(unknown.astype(np.float32), (res, res), interpolation=cv2.INTER_AREA) > 0
            crops.append(crop)
            keeps.append(~unknown)
        # Each window's random inputs come from the seed and where it is: a region's fill does not depend on
        # holes elsewhere in the image, nor on which batch it shares.
        draws = [seeded_inputs(settings, weights, 1, window_seed(seed, y - top, x - left, side), noise_mode)
                 for y, x, side, _ in group]
        result = engine(
            image=(np.stack(crops).astype(np.float32) * pre["scale"] + pre["offset"]).transpose(0, 3, 1, 2),
            mask=np.stack(keeps).astype(np.float32)[:, None],
            **{key: torch.cat([draw[key] for draw in draws]).numpy() for key in draws[0]},
        )[post["output"]]
        check_finite_output(result, f"the inpainted windows of {name}")  # NaN would fill the holes with black
        result = np.clip(result.transpose(0, 2, 3, 1) * post["scale"] + post["offset"], *post["clip"])
        for (y, x, side, members), tile in zip(group, result):
            if side != res:
                tile = cv2.resize(tile, (side, side), interpolation=cv2.INTER_CUBIC)
            fill = np.isin(padded_labels[y : y + side, x : x + side], members)
            out[y : y + side, x : x + side][fill] = (np.clip(tile[fill], 0, 255) + 0.5).astype(np.uint8)
    return rgb, out[top : top + height, left : left + width], hole


def hole_windows(boxes: np.ndarray, res: int, margin: int,
                 shape: tuple[int, int]) -> list[tuple[int, int, int, list[int]]]:
    """(top, left, side, hole labels) of square windows around the hole regions (`boxes`: x, y, w, h per region,
    label = index + 1), each holding whole regions with `margin` px of context around them: regions that fit in one
    MAT window together share it, and a region too large for one gets a window of its own size, shrunk to MAT's.
    Windows stay inside the image (`shape`: height, width) where it is large enough, so their context is the
    image's own rather than its reflection. A grid of fixed tiles cut holes apart (a seam where the fills met) and
    fed a tile inside a hole no context."""
    groups: list[list] = []  # [x0, y0, x1, y1, labels]
    for label in np.argsort(-boxes[:, 4]) + 1:  # the largest regions first
        x, y, w, h = (int(v) for v in boxes[label - 1, :4])
        for group in groups:
            x0, y0, x1, y1 = min(group[0], x), min(group[1], y), max(group[2], x + w), max(group[3], y + h)
            if max(x1 - x0, y1 - y0) + 2 * margin <= res:
                group[:4] = [x0, y0, x1, y1]
                group[4].append(int(label))
                break
        else:
            groups.append([x, y, x + w, y + h, [int(label)]])
    def inside(start: int, side: int, size: int) -> int:  # or centred on the image, where it is smaller
        return min(max(start, 0), size - side) if size >= side else (size - side) // 2

    windows = []
    for x0, y0, x1, y1, members in groups:
        side = max(res, max(x1 - x0, y1 - y0) + 2 * margin)
        windows.append((inside((y0 + y1) // 2 - side // 2, side, shape[0]),
                        inside((x0 + x1) // 2 - side // 2, side, shape[1]), side, members))
    return windows


def window_seed(seed: int, top: int, left: int, side: int) -> int:
    return int(np.random.SeedSequence([seed, top % 2**32, left % 2**32, side]).generate_state(1)[0])


def side_by_side(image: np.ndarray, hole: np.ndarray, result: np.ndarray) -> np.ndarray:
    """Input with the hole greyed out | the mask (white = keep) | the result, in one RGB image."""
    shown = image.copy()
    shown[hole] = (shown[hole] * 0.3 + 128 * 0.7).astype(np.uint8)
    mask_rgb = np.repeat(np.where(hole, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    gap = np.full((image.shape[0], 8, 3), 255, np.uint8)
    return np.concatenate([shown, gap, mask_rgb, gap, result], axis=1)
