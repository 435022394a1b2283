"""From a probability map to defects and an OK/NG verdict, by rules read from a small config file.

Rules file (JSON, or TOML on Python >= 3.11), every key optional:
    {"threshold": 0.5, "min_area_px": 16, "min_area_mm2": null, "min_score": 0.5, "max_count": 0,
     "mm_per_px": null, "rois": [[x0, y0, x1, y1], ...], "max_listed": 100, "min_frame_std": 0.5}
A defect counts when its area and peak score reach the minimums and its box meets a region of interest
(no regions: the whole image). The item is NG when more than `max_count` defects count. A result lists at
most `max_listed` components, counted ones first: a bad frame or a wrong model can give 10^5 components,
whose records would cost seconds and megabytes per item; the counts always cover all of them.
A frame whose every channel has a standard deviation under `min_frame_std` gray levels (of 255) is blank
(a covered or unlit camera, a dropped frame): it gets no verdict, since "no defect found" on it is no
inspection; 0 turns this check off.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edgestack.errors import EdgestackError, check_finite_output

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rules:
    threshold: float = 0.5
    min_area_px: int = 16
    min_area_mm2: float | None = None
    min_score: float = 0.5
    max_count: int = 0
    mm_per_px: float | None = None
    rois: list[list[int]] = field(default_factory=list)
    max_listed: int = 100
    min_frame_std: float = 0.5

    def __post_init__(self):
        # A rules file is hand-edited: a NaN, a string or a fraction where a count belongs must be refused here,
        # since NaN compares false everywhere and would quietly turn checks off (defective parts passed as OK).
        for name in ("threshold", "min_score", "min_frame_std", "min_area_px", "max_count", "max_listed",
                     "mm_per_px", "min_area_mm2"):
            value = getattr(self, name)
            if value is None and name in ("mm_per_px", "min_area_mm2"):
                continue
            whole = name in ("min_area_px", "max_count", "max_listed")
            if not _is_number(value) or (whole and value != int(value)):
                raise EdgestackError(f"rules: {name} must be a {'whole' if whole else 'finite'} number, got {value!r}")
            if whole:
                object.__setattr__(self, name, int(value))
        if not 0.0 < self.threshold < 1.0 or not 0.0 <= self.min_score <= 1.0:
            raise EdgestackError(f"rules: threshold must be in (0,1) and min_score in [0,1], got {self}")
        if self.min_area_px < 1 or self.max_count < 0 or self.max_listed < 0 or self.min_frame_std < 0:
            raise EdgestackError("rules: min_area_px must be >= 1, max_count, max_listed and min_frame_std >= 0")
        if self.mm_per_px is not None and self.mm_per_px <= 0:
            raise EdgestackError(f"rules: mm_per_px (the image scale) must be > 0, got {self.mm_per_px}")
        if self.min_area_mm2 is not None and (self.mm_per_px is None or self.min_area_mm2 < 0):
            raise EdgestackError("rules: min_area_mm2 must be >= 0 and needs mm_per_px (the image scale)")
        if not isinstance(self.rois, (list, tuple)):
            raise EdgestackError(f"rules: rois must be a list of [x0, y0, x1, y1] boxes, got {self.rois!r}")
        for roi in self.rois:
            if not isinstance(roi, (list, tuple)) or len(roi) != 4 or not all(map(_is_number, roi)) \
                    or roi[0] >= roi[2] or roi[1] >= roi[3]:
                raise EdgestackError(f"rules: each roi is [x0, y0, x1, y1] (numbers, pixels) with x0 < x1 and "
                                     f"y0 < y1, got {roi!r}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def load_rules(path: str | Path | None) -> Rules:
    if path is None:
        return Rules()
    path = Path(path)
    if not path.is_file():
        raise EdgestackError(f"rules file {path} does not exist")
    try:
        if path.suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10 (JetPack 6): the same parser, as tomli
                import tomli as tomllib

            data = tomllib.loads(path.read_text())
        else:
            data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError and TOMLDecodeError are ValueErrors
        kind = "TOML" if path.suffix == ".toml" else "JSON"
        raise EdgestackError(f"rules file {path} is not valid {kind}: {exc}") from None
    if not isinstance(data, dict):
        raise EdgestackError(f"rules file {path} holds a {type(data).__name__}; it must be one object of rules, "
                             'e.g. {"threshold": 0.5, "min_area_px": 16}')
    known = {f.name for f in fields(Rules)}
    unknown = set(data) - known
    if unknown:
        raise EdgestackError(f"rules file {path}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
    try:
        rules = Rules(**data)
    except TypeError as exc:
        raise EdgestackError(f"rules file {path}: {exc}") from None
    if rules.min_area_mm2 is not None and rules.min_area_mm2 / rules.mm_per_px**2 < rules.min_area_px:
        # Both minimums apply: a file written in mm2 alone still has the 16 px default, which may be the larger.
        log.warning("rules file %s: min_area_mm2 %g is %.1f px at %g mm/px, below min_area_px %d, which decides; "
                    "set min_area_px too if smaller defects must count", path, rules.min_area_mm2,
                    rules.min_area_mm2 / rules.mm_per_px**2, rules.mm_per_px, rules.min_area_px)
    return rules


@dataclass
class Assessment:
    status: str  # "OK" or "NG"
    rule: str | None  # the rule that fired for NG
    defects: list[dict[str, Any]]  # the listed components: counted first, then ignored (with why), strongest first
    counted: int  # components that count under the rules, listed or not
    components: int  # connected components of prob >= threshold


def check_not_blank(rgb: np.ndarray, rules: Rules, name: str) -> None:
    """Refuse a blank frame (see the module's docstring): every channel's std under rules.min_frame_std."""
    if not rules.min_frame_std:
        return
    spread = float(np.max(cv2.meanStdDev(rgb)[1]))
    if spread < rules.min_frame_std:
        raise EdgestackError(
            f"{name} is a blank frame (the standard deviation of its gray levels is {spread:.2f}, under "
            f"min_frame_std {rules.min_frame_std}), so no verdict: check the camera, its lens and the lighting; "
            "`min_frame_std` in the rules file sets this check (0 turns it off)")


def at_or_above(prob: np.ndarray, threshold: float) -> np.ndarray:
    """prob >= threshold, compared as the rule's float64 value: numpy compares a float32 map in float32, where a
    pixel at float32(0.7) would count as >= 0.7 though it is below it. Eval's calibration uses it too, so the rule
    it writes gives inspect the verdicts it reported."""
    if prob.dtype == np.float32:
        bound = np.float32(threshold)
        if float(bound) < threshold:
            bound = np.nextafter(bound, np.float32(np.inf))
        return prob >= bound
    return prob >= threshold


def assess(prob: np.ndarray, rules: Rules) -> Assessment:
    """Connected components of prob >= rules.threshold, which of them count as defects, and the verdict.

    Each listed component: box [x0, y0, x1, y1], area (px, mm^2), mean and max score, centroid, `counted`, and
    for an ignored one the first rule it fails. Everything is computed over whole arrays, so a noisy map costs
    about one labelling pass whatever its component count. A map holding NaN or Inf is refused: NaN compares
    below every threshold, so it would pass as OK, a missed defect. So are rules
    whose regions of interest all miss the image: nothing could ever count there."""
    check_finite_output(prob, "the defect probability map")
    height, width = prob.shape
    if rules.rois and not any(x0 < width and y0 < height and x1 > 0 and y1 > 0 for x0, y0, x1, y1 in rules.rois):
        raise EdgestackError(
            f"no region of interest of the rules ({rules.rois}) meets this {width}x{height} image, so no defect "
            "could count: fix the rules' rois (pixels of this camera's images)")
    count, labels, stats, centroids = cv2.connectedComponentsWithStats(
        at_or_above(prob, rules.threshold).astype(np.uint8), connectivity=8)
    inside = labels > 0
    component, scores = labels[inside], prob[inside]
    means = (np.bincount(component, weights=scores, minlength=count) / np.maximum(stats[:, cv2.CC_STAT_AREA], 1))[1:]
    peaks = np.full(count, -np.inf, dtype=scores.dtype)
    np.maximum.at(peaks, component, scores)
    peaks = peaks[1:].astype(np.float64)  # compared with the rules as the Python floats the records hold
    x0, y0, w, h, areas = stats[1:].T
    x1, y1 = x0 + w, y0 + h
    areas_mm2 = areas * rules.mm_per_px**2 if rules.mm_per_px else np.full(count - 1, None)
    in_roi = np.ones(count - 1, bool)
    if rules.rois:
        r = np.asarray(rules.rois)[:, :, None]
        in_roi = ((x0 < r[:, 2]) & (r[:, 0] < x1) & (y0 < r[:, 3]) & (r[:, 1] < y1)).any(axis=0)
    # The first rule each component fails, in the order above (-1: it counts).
    # A defect exactly at a minimum counts: px * mm_per_px**2 rounds (10 px at 0.3 mm/px is 0.8999... mm2), so
    # mm2 is compared with a relative margin far below one pixel's share; scores as at_or_above compares them.
    failed = np.select([areas < rules.min_area_px,
                        areas_mm2 < rules.min_area_mm2 * (1 - 1e-9) if rules.min_area_mm2 is not None else False,
                        ~at_or_above(peaks, rules.min_score), ~in_roi], [0, 1, 2, 3], default=-1)
    counts = failed < 0
    strongest = np.argsort(-peaks, kind="stable")  # ties keep raster order
    listed = np.concatenate([strongest[counts[strongest]], strongest[~counts[strongest]]])[:rules.max_listed]

    def why(i: int) -> str:
        if failed[i] == 0:
            return f"area {areas[i]} px < min_area_px {rules.min_area_px}"
        if failed[i] == 1:
            return f"area {areas_mm2[i]:.6g} mm2 < min_area_mm2 {rules.min_area_mm2}"
        if failed[i] == 2:
            return f"score {peaks[i]:.3f} < min_score {rules.min_score}"
        return "outside every region of interest"

    # Whole columns to Python numbers at once: per-element conversion dominated on noisy maps.
    defects = []
    for i, box, area, area_mm2, mean, peak, centroid in zip(
            listed.tolist(), np.stack([x0, y0, x1, y1], 1)[listed].tolist(), areas[listed].tolist(),
            areas_mm2[listed].tolist(), means[listed].tolist(), peaks[listed].tolist(), centroids[1:][listed].tolist()):
        defect = {"bbox": box, "area_px": area, "area_mm2": area_mm2, "mean_score": mean, "max_score": peak,
                  "centroid": centroid, "counted": bool(counts[i])}
        if not counts[i]:
            defect["ignored"] = why(i)
        defects.append(defect)
    counted = int(counts.sum())
    if counted > rules.max_count:
        applied = [f"threshold {rules.threshold}", f"min_area_px {rules.min_area_px}"] + (
            [f"min_area_mm2 {rules.min_area_mm2} at {rules.mm_per_px} mm/px"] if rules.min_area_mm2 is not None
            else []) + [f"min_score {rules.min_score}"] + ([f"rois {rules.rois}"] if rules.rois else [])
        return Assessment("NG", f"{counted} defect(s) > max_count {rules.max_count} ({', '.join(applied)})",
                          defects, counted, count - 1)
    return Assessment("OK", None, defects, counted, count - 1)
