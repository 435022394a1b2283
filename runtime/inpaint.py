"""Inpainting with a MAT bundle: any image size, a hole mask, seeded pluralistic results.

Mask convention (as the official MAT): white (255, or 1.0) = keep, black (0) = hole to fill. Pass
`invert_mask=True` (`--invert-mask`) for masks drawn the other way round (white = hole).

MAT runs at its fixed resolution R: the image is padded (by reflection) to multiples of R, every R x R
tile that holds a hole is inpainted, and the result is cropped back. Pixels outside the hole are always
the input's own.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edgestack import bundle as bundle_format
from edgestack.errors import EdgestackError
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
        raise EdgestackError(f"{name} has no hole (nothing to fill); 0 = hole, or pass --invert-mask if white "
                             "marks the hole")
    if hole.all():
        raise EdgestackError(f"{name} marks the whole image as hole; MAT needs some known pixels as context")
    return hole


def inpaint(
    engine: Engine, image: ImageLike, mask: ImageLike, invert_mask: bool = False, seed: int = 0,
    noise_mode: str = "const", gray_to_rgb: bool = False, bit_depth: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(input RGB uint8, inpainted RGB uint8, hole map) at the image's own size. A 16-bit image is read as
    8-bit (`bit_depth`: its camera's bits), so the result is 8-bit."""
    from safetensors.numpy import load_file

    from edgestack.models.mat import seeded_inputs

    require_task(engine, "inpainting")
    meta = engine.meta
    rgb = read_image(image, gray_to_rgb, bit_depth)
    height, width = rgb.shape[:2]
    if min(height, width) < MIN_SIDE:
        name = str(image) if isinstance(image, (str, Path)) else "image array"
        raise EdgestackError(f"{name} is {width}x{height}; inpainting needs at least {MIN_SIDE}x{MIN_SIDE}")
    hole = read_hole_mask(mask, (height, width), invert_mask)
    res = meta["default_size"][0]
    pad_h, pad_w = -height % res, -width % res
    padded = cv2.copyMakeBorder(rgb, 0, pad_h, 0, pad_w, cv2.BORDER_REFLECT_101)
    # The hole is mirrored with the image: what lies under a hole at the right or bottom edge is reflected into
    # the padding, and must not be context there.
    padded_hole = cv2.copyMakeBorder(hole.astype(np.uint8), 0, pad_h, 0, pad_w, cv2.BORDER_REFLECT_101) > 0
    tiles = [(y, x) for y in range(0, height + pad_h, res) for x in range(0, width + pad_w, res)
             if padded_hole[y : y + res, x : x + res].any()]
    weights = load_file(str(engine.bundle / bundle_format.WEIGHTS))
    settings = meta["model"]["settings"]
    pre, post = meta["preprocess"], meta["postprocess"]
    batch = meta["axes"]["batch"]["max"]
    out = padded.copy()
    for start in range(0, len(tiles), batch):
        group = tiles[start : start + batch]
        crops = np.stack([padded[y : y + res, x : x + res] for y, x in group]).astype(np.float32)
        keep = np.stack([~padded_hole[y : y + res, x : x + res] for y, x in group]).astype(np.float32)
        extras = seeded_inputs(settings, weights, len(group), seed, noise_mode)
        result = engine(
            image=(crops * pre["scale"] + pre["offset"]).transpose(0, 3, 1, 2),
            mask=keep[:, None],
            **{name: t.numpy() for name, t in extras.items()},
        )[post["output"]]
        result = np.clip(result.transpose(0, 2, 3, 1) * post["scale"] + post["offset"], *post["clip"])
        for (y, x), tile in zip(group, result):
            fill = padded_hole[y : y + res, x : x + res]
            out[y : y + res, x : x + res][fill] = (tile[fill] + 0.5).astype(np.uint8)
    return rgb, out[:height, :width], hole


def side_by_side(image: np.ndarray, hole: np.ndarray, result: np.ndarray) -> np.ndarray:
    """Input with the hole greyed out | the mask (white = keep) | the result, in one RGB image."""
    shown = image.copy()
    shown[hole] = (shown[hole] * 0.3 + 128 * 0.7).astype(np.uint8)
    mask_rgb = np.repeat(np.where(hole, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    gap = np.full((image.shape[0], 8, 3), 255, np.uint8)
    return np.concatenate([shown, gap, mask_rgb, gap, result], axis=1)
