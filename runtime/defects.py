"""From a probability map to defects and an OK/NG verdict, by rules read from a small config file.

Rules file (JSON, or TOML on Python >= 3.11), every key optional:
    {"threshold": 0.5, "min_area_px": 16, "min_area_mm2": null, "min_score": 0.5, "max_count": 0,
     "mm_per_px": null, "rois": [[x0, y0, x1, y1], ...]}
A defect counts when its area and peak score reach the minimums and its box meets a region of interest
(no regions: the whole image). The item is NG when more than `max_count` defects count.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edgestack.errors import EdgestackError


@dataclass(frozen=True)
class Rules:
    threshold: float = 0.5
    min_area_px: int = 16
    min_area_mm2: float | None = None
    min_score: float = 0.5
    max_count: int = 0
    mm_per_px: float | None = None
    rois: list[list[int]] = field(default_factory=list)

    def __post_init__(self):
        if not 0.0 < self.threshold < 1.0 or not 0.0 <= self.min_score <= 1.0:
            raise EdgestackError(f"rules: threshold must be in (0,1) and min_score in [0,1], got {self}")
        if self.min_area_px < 1 or self.max_count < 0:
            raise EdgestackError("rules: min_area_px must be >= 1 and max_count >= 0")
        if self.min_area_mm2 is not None and not self.mm_per_px:
            raise EdgestackError("rules: min_area_mm2 needs mm_per_px (the image scale)")
        for roi in self.rois:
            if len(roi) != 4 or roi[0] >= roi[2] or roi[1] >= roi[3]:
                raise EdgestackError(f"rules: each roi is [x0, y0, x1, y1] with x0 < x1 and y0 < y1, got {roi}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_rules(path: str | Path | None) -> Rules:
    if path is None:
        return Rules()
    path = Path(path)
    if not path.is_file():
        raise EdgestackError(f"rules file {path} does not exist")
    try:
        if path.suffix == ".toml":
            import tomllib

            data = tomllib.loads(path.read_text())
        else:
            data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError and TOMLDecodeError are ValueErrors
        kind = "TOML" if path.suffix == ".toml" else "JSON"
        raise EdgestackError(f"rules file {path} is not valid {kind}: {exc}") from None
    known = {f.name for f in fields(Rules)}
    unknown = set(data) - known
    if unknown:
        raise EdgestackError(f"rules file {path}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
    try:
        return Rules(**data)
    except TypeError as exc:
        raise EdgestackError(f"rules file {path}: {exc}") from None


def find_defects(prob: np.ndarray, threshold: float, mm_per_px: float | None = None) -> list[dict[str, Any]]:
    """Connected components of prob >= threshold: box, area (px, mm^2), mean and max score, centroid; highest
    max score first."""
    binary = (prob >= threshold).astype(np.uint8)
    count, labels, stats, centroids = cv2.connectedComponentsWithStats(binary, connectivity=8)
    # Scores per component in one pass over the labelled pixels: a noisy map (an untrained model, a bad frame)
    # has thousands of components, and slicing each one out in Python took seconds per map.
    inside = labels > 0
    component, scores = labels[inside], prob[inside]
    score_sums = np.bincount(component, weights=scores, minlength=count)
    max_scores = np.full(count, -np.inf, dtype=scores.dtype)
    np.maximum.at(max_scores, component, scores)
    order = np.argsort(-max_scores[1:], kind="stable") + 1
    areas = stats[order, cv2.CC_STAT_AREA]
    # Whole columns to Python numbers at once: per-element conversion was most of the time on noisy maps.
    return [
        {"bbox": [x, y, x + w, y + h], "area_px": area, "area_mm2": area * mm_per_px**2 if mm_per_px else None,
         "mean_score": mean, "max_score": peak, "centroid": centroid}
        for (x, y, w, h, area), mean, peak, centroid in zip(
            stats[order].tolist(), (score_sums[order] / areas).tolist(), max_scores[order].tolist(),
            centroids[order].tolist())
    ]


def _in_roi(bbox: list[int], rois: list[list[int]]) -> bool:
    return not rois or any(bbox[0] < r[2] and r[0] < bbox[2] and bbox[1] < r[3] and r[1] < bbox[3] for r in rois)


def judge(defects: list[dict[str, Any]], rules: Rules) -> tuple[str, str | None]:
    """Mark each defect `counted` (or why not) and return (verdict, the rule that fired or None)."""
    counted = 0
    for d in defects:
        if d["area_px"] < rules.min_area_px:
            d["ignored"] = f"area {d['area_px']} px < min_area_px {rules.min_area_px}"
        elif rules.min_area_mm2 is not None and d["area_mm2"] < rules.min_area_mm2:
            d["ignored"] = f"area {d['area_mm2']:.3g} mm2 < min_area_mm2 {rules.min_area_mm2}"
        elif d["max_score"] < rules.min_score:
            d["ignored"] = f"score {d['max_score']:.3f} < min_score {rules.min_score}"
        elif not _in_roi(d["bbox"], rules.rois):
            d["ignored"] = "outside every region of interest"
        d["counted"] = "ignored" not in d
        counted += d["counted"]
    if counted > rules.max_count:
        return "NG", (f"{counted} defect(s) > max_count {rules.max_count} (threshold {rules.threshold}, "
                      f"min_area_px {rules.min_area_px}, min_score {rules.min_score})")
    return "OK", None
