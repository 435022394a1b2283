"""Segmentation on a loaded engine: image in, class map (and colour overlay) out."""

from __future__ import annotations

import numpy as np

from edgestack.bundle import axis_problem
from edgestack.errors import EdgestackError, check_finite_output
from edgestack.runtime.engine import Engine, require_task
from edgestack.runtime.images import ImageLike, overlay, read_image, to_tensor


def segment(engine: Engine, image: ImageLike, gray_to_rgb: bool = False,
            bit_depth: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(RGB image, class map HxW) for one image; preprocessing comes from the bundle's meta.json."""
    require_task(engine, "segmentation")
    post = engine.meta["postprocess"]
    rgb = read_image(image, gray_to_rgb, bit_depth)
    name = str(image) if not isinstance(image, np.ndarray) else "image"
    x = to_tensor(rgb, engine.meta["preprocess"], name)  # refuses an image below the model's minimum size first
    for axis, size in zip(("height", "width"), rgb.shape[:2]):  # named by the image, not the graph's input
        problem = axis_problem(engine.meta, axis, size)
        if problem:
            raise EdgestackError(f"{name} is {rgb.shape[1]}x{rgb.shape[0]}: {problem}; resize or crop it to fit")
    logits = engine(x)[post["output"]]
    check_finite_output(logits, f"the class scores of {name}")  # NaN's argmax is a class, in silence
    class_map = logits[0].argmax(0).astype(np.int32)
    return rgb, class_map


def segmentation_overlay(engine: Engine, rgb: np.ndarray, class_map: np.ndarray) -> np.ndarray:
    return overlay(rgb, class_map, engine.meta["postprocess"]["num_classes"])
