"""The CDS2K benchmark protocol (pysodmetrics) on positives, and image-level OK/NG figures.

Pixel metrics: S-measure, weighted F-measure, MAE, and E-measure and F-measure each as adaptive / mean /
max over the 256 thresholds — computed by `py_sod_metrics` on uint8 predictions and 0/255 masks, positives
only (an empty mask has no structure to measure), as the CDS2K benchmark does.

Image-level verdict: the inspection line's own rule (edgestack.runtime.defects with its defaults): an image
is NG when the probability map has a connected area (8-connectivity) of pixels with prob >= 0.5 that is at
least `min_area` = 16 pixels at the image's own resolution; otherwise OK. NG is the positive class for
precision and recall. Operating points: the same rule at each threshold of OPERATING_THRESHOLDS, so a line can
read off the recall it buys with more false rejects before it sets `threshold` in its rules file.
Calibration: the threshold (of SWEEP_THRESHOLDS) and min area that reach a target recall with the fewest false
rejects, for a rules file; the trade-off table calibrates for each of RECALL_TARGETS.

By defect size: recall and S-measure of positives grouped by the defect's share of the image (CDS2K's positives
are mostly < 10%), so a line can read off the smallest defect the model still finds. By defect contrast (when
the images are given): the same grouped by how far the defect's mean gray level stands from its surroundings',
in standard deviations of those surroundings (`defect_contrast`): concealed defects sit low on that scale.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import cv2
import numpy as np

from edgestack.errors import EdgestackError
from edgestack.runtime.defects import Rules, assess, at_or_above

THRESHOLD = Rules.threshold
MIN_AREA = Rules.min_area_px
AREA_EDGES = (0.0, 0.005, 0.02, 0.05)  # defect pixels / image pixels: lower bucket edges, the last open-ended
CONTRAST_EDGES = (0.0, 0.5, 1.0, 2.0)  # defect_contrast: lower bucket edges, the last open-ended
SURROUND_PX = 7  # defect_contrast's surroundings: the pixels within this distance of the defect
SWEEP_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 0.05 .. 0.95, for calibration
OPERATING_THRESHOLDS = SWEEP_THRESHOLDS[1::2]  # 0.1 .. 0.9, the table in results.md
RECALL_TARGETS = (0.8, 0.9, 0.95, 0.99, 1.0)  # the trade-off table: false rejects each recall costs


def area_rule(threshold: float = THRESHOLD, min_area: int = MIN_AREA) -> Rules:
    """The image-level rule above as inspect's Rules."""
    # min_score = threshold: every defect pixel already reaches it, so only the area decides, as stated above.
    return Rules(threshold=threshold, min_area_px=min_area, min_score=threshold, max_listed=0)


def is_ng(prob: np.ndarray, threshold: float = THRESHOLD, min_area: int = MIN_AREA) -> bool:
    """The image-level rule above, for one HxW probability map."""
    return assess(prob, area_rule(threshold, min_area)).status == "NG"


def largest_area(prob: np.ndarray, threshold: float) -> int:
    """Pixels in the largest connected area (8-connectivity) of prob >= threshold; 0 if there is none. The rule
    above says NG exactly when this reaches min_area, whatever min_area is."""
    count, _, stats, _ = cv2.connectedComponentsWithStats(at_or_above(prob, threshold).astype(np.uint8),
                                                          connectivity=8)
    return int(stats[1:, cv2.CC_STAT_AREA].max()) if count > 1 else 0


def defect_contrast(image: np.ndarray, mask: np.ndarray) -> float | None:
    """|mean gray level in the defect - mean in its surroundings| / std in the surroundings (at least 1 gray
    level, so a flat background does not make every defect infinitely clear). Surroundings: the pixels within
    SURROUND_PX of the mask, outside it. None when the mask leaves no surroundings (it covers the image).
    image: HxWx3 RGB or HxW, uint8; mask: HxW, nonzero on the defect."""
    gray = (cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image).astype(np.float32)
    inside = mask > 0
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * SURROUND_PX + 1, 2 * SURROUND_PX + 1))
    around = cv2.dilate(inside.astype(np.uint8), kernel).astype(bool) & ~inside
    if not around.any() or not inside.any():
        return None
    return float(abs(gray[inside].mean() - gray[around].mean()) / max(float(gray[around].std()), 1.0))


def verdict_figures(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Accuracy, precision, recall and the confusion counts of boolean image verdicts (NG = positive class)."""
    tp, fp = int((truth & pred).sum()), int((~truth & pred).sum())
    fn, tn = int((truth & ~pred).sum()), int((~truth & ~pred).sum())
    return {"accuracy": (tp + tn) / max(1, len(truth)), "precision": tp / max(1, tp + fp),
            "recall": tp / max(1, tp + fn), "tp": tp, "fp": fp, "fn": fn, "tn": tn}


def positives_figures(positives: list[dict[str, Any]]) -> dict[str, Any]:
    """Count, image-level recall and mean S-measure of a group of positive per-image records (S None if empty)."""
    return {"positives": len(positives), "recall": sum(r["predicted_ng"] for r in positives) / max(1, len(positives)),
            "S": float(np.mean([r["S"] for r in positives])) if positives else None}


class DefectMetrics:
    """Accumulate one image at a time; `results()` gives the benchmark figures and image-level figures."""

    def __init__(self, threshold: float = THRESHOLD, min_area: int = MIN_AREA, sweep_thresholds: bool = False,
                 rules: Rules | None = None):
        """`sweep_thresholds`: also measure each image at SWEEP_THRESHOLDS, for `operating_points()` and
        `calibrate()`; off in training's per-epoch validation, where it would only cost time. `rules`: judge each
        image by a line's whole rules file (regions, min score, mm², max count) as inspect does, instead of the
        rule above; its threshold and min area stand in for `threshold` and `min_area`."""
        import py_sod_metrics as sod

        self.from_file = rules is not None
        self.rules = rules if self.from_file else area_rule(threshold, min_area)
        self.sweep_thresholds = sweep_thresholds
        self.sm, self.wfm, self.mae = sod.Smeasure(), sod.WeightedFmeasure(), sod.MAE()
        with warnings.catch_warnings():  # classic Fmeasure is the benchmark's; its deprecation note is noise here
            warnings.simplefilter("ignore", UserWarning)
            self.em, self.fm = sod.Emeasure(), sod.Fmeasure()
        self.per_image: list[dict[str, Any]] = []

    def update(self, prob: np.ndarray, mask: np.ndarray | None, name: str = "",
               image: np.ndarray | None = None) -> dict[str, Any]:
        """prob: HxW float 0..1; mask: HxW uint8 0/255 at the same size, or None for a negative; image: the
        image itself (uint8), for its defect's contrast in `by_contrast()`."""
        predicted_ng = assess(prob, self.rules).status == "NG"
        positive = mask is not None and bool(mask.any())
        record: dict[str, Any] = {"name": name, "positive": positive, "predicted_ng": predicted_ng,
                                  "max_prob": float(prob.max())}
        if self.sweep_thresholds:  # one number per threshold gives the verdict there for every min area
            record["largest_area"] = [largest_area(prob, t) for t in SWEEP_THRESHOLDS]
        if positive:
            pred = (np.clip(prob, 0, 1) * 255).round().astype(np.uint8)
            for metric in (self.sm, self.wfm, self.mae, self.em, self.fm):
                metric.step(pred=pred, gt=mask)
            record |= {"S": float(self.sm.sms[-1]), "MAE": float(self.mae.maes[-1]), "area": float((mask > 0).mean())}
            if image is not None:
                record["contrast"] = defect_contrast(image, mask)
        self.per_image.append(record)
        return record

    def results(self) -> dict[str, float]:
        truth = np.array([r["positive"] for r in self.per_image], bool)
        pred = np.array([r["predicted_ng"] for r in self.per_image], bool)
        out: dict[str, float] = {"positives": int(truth.sum()), "negatives": int((~truth).sum())}
        if truth.any():
            em, fm = self.em.get_results()["em"], self.fm.get_results()["fm"]
            out |= {
                "S": float(self.sm.get_results()["sm"]),
                "wF": float(self.wfm.get_results()["wfm"]),
                "MAE": float(self.mae.get_results()["mae"]),
                "E_adp": float(em["adp"]), "E_mean": float(np.mean(em["curve"])), "E_max": float(np.max(em["curve"])),
                "F_adp": float(fm["adp"]), "F_mean": float(np.mean(fm["curve"])), "F_max": float(np.max(fm["curve"])),
            }
        rule = {"threshold": self.rules.threshold, "min_area": self.rules.min_area_px}
        if self.from_file:
            rule["rules"] = self.rules.as_dict()
        return out | verdict_figures(truth, pred) | rule

    def _largest_areas(self) -> tuple[np.ndarray, np.ndarray]:
        """(truth [images], largest areas [images, SWEEP_THRESHOLDS])."""
        if not self.sweep_thresholds:
            raise ValueError("operating points and calibration need DefectMetrics(sweep_thresholds=True)")
        truth = np.array([r["positive"] for r in self.per_image], bool)
        areas = np.array([r["largest_area"] for r in self.per_image], np.int64).reshape(len(truth), -1)
        return truth, areas

    def operating_points(self) -> list[dict[str, Any]]:
        """Image-level figures with the NG rule at each of OPERATING_THRESHOLDS (min_area unchanged)."""
        truth, areas = self._largest_areas()
        return [{"threshold": t} | verdict_figures(truth, areas[:, SWEEP_THRESHOLDS.index(t)] >= self.rules.min_area_px)
                for t in OPERATING_THRESHOLDS]

    def calibrate(self, target_recall: float) -> dict[str, Any]:
        """The threshold and min area (px) whose NG rule finds at least `target_recall` of the positives with the
        fewest false rejects; ties go to the higher recall, then the wider margin, then the higher threshold.

        At each threshold every min area that still finds k = ceil(target * positives) of them is tried: each
        positive's largest area up to the k-th largest (a smaller min area can find more positives at no cost in
        false rejects, when the good parts' specks are smaller still). The best of them stands for a gap: every min
        area above the largest good-part speck (or missed positive) below it and up to its own defect scores the
        same here. The rule takes the gap's geometric middle, not its top, where a defect a pixel smaller than the
        smallest one calibrated on would pass; the margin is the gap's top over its bottom. Returns the chosen rule
        with its figures, `reachable` False (and the best recall any threshold gives at min area 1) when no
        threshold finds k."""
        truth, areas = self._largest_areas()
        if not truth.any():
            raise EdgestackError("calibration needs defective (positive) images with masks; this data has none")
        needed = math.ceil(target_recall * truth.sum() - 1e-9)  # a float target like 0.95 * 20 stays 19
        best = None
        for column, threshold in enumerate(SWEEP_THRESHOLDS):
            positives, negatives = np.sort(areas[truth, column]), np.sort(areas[~truth, column])
            candidates = np.unique(positives[positives >= 1])
            found = len(positives) - np.searchsorted(positives, candidates)  # positives NG at each min area
            candidates, found = candidates[found >= needed], found[found >= needed]
            if not len(candidates):  # fewer than k positives show any area at this threshold
                continue
            rejected = len(negatives) - np.searchsorted(negatives, candidates)
            top = int(candidates[np.lexsort((candidates, found, -rejected))[-1]])  # fewest false rejects, most found
            below = np.concatenate([[0], positives[positives < top], negatives[negatives < top]])
            bottom = int(below.max()) + 1
            min_area, margin = min(max(round(math.sqrt(bottom * top)), bottom), top), top / bottom
            figures = verdict_figures(truth, areas[:, column] >= min_area)
            key = (-figures["fp"], figures["recall"], margin, threshold)
            if best is None or key > best[0]:
                best = (key, {"threshold": threshold, "min_area_px": min_area, "margin": round(margin, 2)} | figures)
        if best is None:
            found = max(float((areas[truth, column] >= 1).mean()) for column in range(len(SWEEP_THRESHOLDS)))
            return {"target_recall": target_recall, "reachable": False, "best_recall": found}
        return {"target_recall": target_recall, "reachable": True} | best[1]

    def by_area(self) -> list[dict[str, Any]]:
        """Positives per AREA_EDGES bucket: count, recall (image-level NG), mean S-measure; empty ones omitted."""
        return self._by_bucket("area", AREA_EDGES)

    def by_contrast(self) -> list[dict[str, Any]]:
        """Positives per CONTRAST_EDGES bucket of defect_contrast, as by_area; only images updated with `image`."""
        return self._by_bucket("contrast", CONTRAST_EDGES)

    def _by_bucket(self, key: str, edges: tuple[float, ...]) -> list[dict[str, Any]]:
        rows = []
        for low, high in zip(edges, edges[1:] + (None,)):
            group = [r for r in self.per_image if r["positive"] and r.get(key) is not None
                     and low <= r[key] and (high is None or r[key] < high)]
            if group:
                rows.append({f"{key}_from": low, f"{key}_to": high} | positives_figures(group))
        return rows
