"""Detection on a loaded engine: image in, boxes out (and an image with them drawn)."""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from edgestack.errors import EdgestackError, check_finite_output
from edgestack.runtime.engine import Engine, require_task
from edgestack.runtime.images import ImageLike, palette, read_image, to_tensor

MIN_BOX_SIDE = 1.0  # px; as training's: a thinner box is no defect one can see


def detect(engine: Engine, image: ImageLike, gray_to_rgb: bool = False, min_score: float = 0.0,
           bit_depth: int | None = None) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """(RGB image, detections) for one image; each detection: box (x1, y1, x2, y2 pixels), score, class, label.

    The image is zero-padded (after normalization) at the bottom and right to the multiples the model needs,
    so boxes stay in the image's own pixel coordinates."""
    require_task(engine, "detection")
    try:  # a number of any kind (a numpy or torch scalar too), not a string
        least = math.nan if isinstance(min_score, (str, bytes)) else float(min_score)
    except (TypeError, ValueError):
        least = math.nan
    if not 0 <= least <= 1:  # NaN or 7 would drop every detection without a word
        raise EdgestackError(f"min_score must be a number from 0 to 1, got {min_score!r}")
    post = engine.meta["postprocess"]
    rgb = read_image(image, gray_to_rgb, bit_depth)
    name = str(image) if not isinstance(image, np.ndarray) else "image"
    x = to_tensor(rgb, engine.meta["preprocess"], name)
    height, width = x.shape[2:]
    multiple = {axis: engine.axes[axis]["multiple_of"] for axis in ("height", "width")}
    largest = {axis: engine.axes[axis]["max"] for axis in ("height", "width")}
    if height > largest["height"] or width > largest["width"]:  # before padding, which would name other sizes
        raise EdgestackError(f"{name} is {width}x{height}; this detector takes at most {largest['width']}x"
                             f"{largest['height']}: downscale or crop the image")
    padded = np.zeros((1, 3, -(-height // multiple["height"]) * multiple["height"],
                       -(-width // multiple["width"]) * multiple["width"]), np.float32)
    padded[:, :, :height, :width] = x
    out = engine(padded)
    count = int(out[post["count"]][0])
    for key in ("boxes", "scores"):  # a NaN box or score is dropped below: a missed detection, in silence
        check_finite_output(out[post[key]][0, :count], f"the detected {key} of {name}")
    boxes, inside = clip_to_image(out[post["boxes"]][0, :count], height, width)
    detections = [
        {"box": [round(float(v), 1) for v in box], "score": float(score), "class": int(cls),
         "label": post["classes"][int(cls)]}
        for box, score, cls, keep in zip(boxes, out[post["scores"]][0, :count], out[post["labels"]][0, :count],
                                         inside)
        if keep and score >= least
    ]
    return rgb, detections


def clip_to_image(boxes: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(boxes [N, 4] x1 y1 x2 y2 clipped to the image, which of them are still a box in it). A box in the padding
    (or off the image) clips to a sliver on its edge: no detection in the image."""
    boxes = np.array(boxes, np.float32).reshape(-1, 4)
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
    return boxes, (boxes[:, 2] - boxes[:, 0] >= MIN_BOX_SIDE) & (boxes[:, 3] - boxes[:, 1] >= MIN_BOX_SIDE)


def draw_detections(rgb: np.ndarray, detections: list[dict[str, Any]], num_classes: int) -> np.ndarray:
    """A copy of `rgb` with every detection's box and "label score" drawn in its class colour."""
    canvas = rgb.copy()
    colours = palette(num_classes)
    for det in detections:
        x1, y1, x2, y2 = (int(round(v)) for v in det["box"])
        colour = tuple(int(c) for c in colours[det["class"]])
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, 1)
        cv2.putText(canvas, f"{det['label']} {det['score']:.2f}", (x1, max(8, y1 - 2)), cv2.FONT_HERSHEY_PLAIN, 0.7,
                    colour, 1, cv2.LINE_AA)
    return canvas
