"""Synthetic referring expressions for text-prompted defect grounding (VG-LAW), built on the defect generator.

Each sample is one surface with 2-4 separate defects and one expression that picks exactly one of them:
"the long scratch near the top left", "find the largest stain", "the dark spot on the right". Every defect
keeps its kind, mask, box, area, polarity and 3x3 position cell, so an expression is only emitted when the
attribute it uses singles the target out among the defects of its kind (or among all defects for
"the largest defect"). Defects are drawn about twice as strong as in the concealed-defect set: grounding is
about reading the sentence, and concealed-defect detection has its own model and benchmark (defectseg).
Deterministic by (seed, index); splits are separate seeds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from edgestack.train import synthetic

SPLIT_SEEDS = {"train": 100, "val": 101, "test": 102}
MIN_AREA, MAX_AREA = 0.003, 0.10  # per defect, fraction of the image
STRENGTH = 2.0  # amplitude multiplier over the concealed-defect generator

NOUNS = {
    "scratch": ("scratch", "scrape"),
    "crack": ("crack", "fracture"),
    "spot": ("spot", "dot", "speck"),
    "stain": ("stain", "smudge", "blotch"),
    "dent": ("dent", "dimple"),
}
ROWS, COLS = ("top", "middle", "bottom"), ("left", "center", "right")
LARGEST, SMALLEST = ("largest", "biggest"), ("smallest", "tiniest")
DARK, BRIGHT = ("dark", "darker"), ("bright", "light")
OPENERS = ("", "the ", "find the ", "locate the ", "where is the ", "show me the ", "segment the ", "mark the ")


@dataclass
class Defect:
    kind: str
    mask: np.ndarray  # bool HxW
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels (exclusive right/bottom edges)
    area: float  # fraction of the image
    polarity: float  # +1 brighter, -1 darker, 0 relief (dents)
    cell: tuple[int, int]  # (row, col) of the centroid in a 3x3 grid

    @property
    def length(self) -> float:
        x1, y1, x2, y2 = self.box
        return float(np.hypot(x2 - x1, y2 - y1))


@dataclass
class ReferringSample:
    image: np.ndarray  # RGB uint8
    defects: list[Defect]
    target: int
    expression: str
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def box(self) -> np.ndarray:
        return np.array(self.defects[self.target].box, np.float32)

    @property
    def mask(self) -> np.ndarray:
        return self.defects[self.target].mask


def _defect_record(kind: str, shape: np.ndarray, polarity: float) -> Defect:
    mask = shape >= 0.5
    ys, xs = np.nonzero(mask)
    size = mask.shape[0]
    row = min(2, int(ys.mean() * 3 // size))
    col = min(2, int(xs.mean() * 3 // size))
    box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
    return Defect(kind, mask, box, float(mask.mean()), polarity, (row, col))


def _position_phrase(rng: np.random.Generator, cell: tuple[int, int]) -> str:
    row, col = cell
    if cell == (1, 1):
        return str(rng.choice(["in the center", "in the middle"]))
    if row == 1:
        return str(rng.choice([f"on the {COLS[col]}", f"near the {COLS[col]} edge", f"at the {COLS[col]}"]))
    if col == 1:
        return str(rng.choice([f"at the {ROWS[row]}", f"near the {ROWS[row]} edge", f"on the {ROWS[row]}"]))
    corner = f"{ROWS[row]} {COLS[col]}"
    return str(rng.choice([f"near the {corner}", f"in the {corner} corner", f"at the {corner}"]))


def _unique(values: list, index: int) -> bool:
    return values.count(values[index]) == 1


def _extreme(values: list[float], index: int, largest: bool, margin: float = 1.5) -> bool:
    """True when values[index] is the largest (smallest) by at least `margin` times the runner-up."""
    others = [v for i, v in enumerate(values) if i != index]
    if not others:
        return False
    return values[index] >= margin * max(others) if largest else values[index] * margin <= min(others)


def describe(rng: np.random.Generator, defects: list[Defect], target: int) -> str | None:
    """An expression that singles out `defects[target]`, or None when no attribute does."""
    me = defects[target]
    same = [i for i, d in enumerate(defects) if d.kind == me.kind]
    local = same.index(target)
    noun = str(rng.choice(NOUNS[me.kind]))
    options: list[str] = []
    if len(same) == 1:
        options.append(noun)
        options.append(f"{noun} {_position_phrase(rng, me.cell)}")
        if me.kind in ("scratch", "crack"):
            options.append(f"long {noun}" if me.length > 0.3 * me.mask.shape[0] else noun)
    else:
        cells = [defects[i].cell for i in same]
        if _unique(cells, local):
            options.append(f"{noun} {_position_phrase(rng, me.cell)}")
        areas = [defects[i].area for i in same]
        for largest, words in ((True, LARGEST), (False, SMALLEST)):
            if _extreme(areas, local, largest):
                options.append(f"{rng.choice(words)} {noun}")
        if me.kind in ("scratch", "crack") and _extreme([defects[i].length for i in same], local, True, 1.4):
            options.append(f"longest {noun}" if rng.random() < 0.5 else f"long {noun}")
        polarities = [defects[i].polarity for i in same]
        if me.polarity and _unique(polarities, local):
            options.append(f"{rng.choice(DARK if me.polarity < 0 else BRIGHT)} {noun}")
    if _extreme([d.area for d in defects], target, True, 2.0):
        options.append(f"{rng.choice(LARGEST)} defect")
    if _unique([d.cell for d in defects], target):
        options.append(f"defect {_position_phrase(rng, me.cell)}")
    if not options:
        return None
    return f"{rng.choice(OPENERS)}{rng.choice(options)}".strip()


def make_referring(seed: int, index: int, size: int = 128) -> ReferringSample:
    """Sample `index` of the referring set `seed`; the same arguments always give the same sample."""
    rng = np.random.default_rng([seed, index, 7])
    for _ in range(100):
        gray, texture, contrast = synthetic.background(rng, size)
        count = int(rng.integers(2, 5))
        defects: list[Defect] = []
        taken = np.zeros((size, size), bool)
        for _ in range(count * 10):
            if len(defects) == count:
                break
            kind = str(rng.choice(synthetic.DEFECTS))
            shape, change, polarity = synthetic.draw_defect(rng, kind, size, contrast)
            record = _defect_record(kind, shape, polarity) if (shape >= 0.5).any() else None
            # Separate defects only: a 3-px gap keeps every box and mask its own.
            if record is None or not MIN_AREA <= record.area <= MAX_AREA or (cv2.dilate(
                    record.mask.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool) & taken).any():
                continue
            taken |= record.mask
            gray += STRENGTH * change
            defects.append(record)
        if len(defects) < 2:
            continue
        target = int(rng.integers(len(defects)))
        expression = describe(rng, defects, target)
        if expression is not None:
            image = synthetic.to_rgb(rng, gray)
            return ReferringSample(image, defects, target, expression,
                                   {"seed": seed, "index": index, "texture": texture})
    raise RuntimeError(f"referring sample {seed}/{index}: no describable layout in 100 draws")
