"""Tiling, defect extraction and verdict rules of the inspection pipeline (no model needed)."""

import json

import cv2
import numpy as np
import pytest

from edgestack.errors import EdgestackError
from edgestack.runtime.defects import Rules, find_defects, judge, load_rules
from edgestack.runtime.tiling import run_tiled, tile_starts


@pytest.mark.parametrize("size, tile, overlap", [(4096, 352, 32), (3000, 352, 32), (353, 352, 32), (1000, 256, 64)])
def test_tiles_cover_the_axis_with_enough_overlap(size, tile, overlap):
    starts = tile_starts(size, tile, overlap)
    assert starts[0] == 0 and starts[-1] + tile == size
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))


def test_tiled_run_reassembles_a_pixelwise_model_exactly():
    rng = np.random.default_rng(0)
    image = rng.random((3, 1100, 1500), dtype=np.float32)
    calls = []

    def predict(tiles):
        calls.append(tiles.shape)
        return tiles[:, :1] * 0.5

    prob = run_tiled(image, predict, tile=(352, 352), overlap=32, batch=4, multiple=32)
    np.testing.assert_allclose(prob, image[0] * 0.5, rtol=1e-6)
    assert all(shape[0] <= 4 and shape[2:] == (352, 352) for shape in calls)


def test_tiled_run_blends_seams_between_disagreeing_tiles():
    # Each tile predicts its own constant: the blend must stay within the range and vary smoothly.
    counter = iter(range(1000))
    prob = run_tiled(np.zeros((3, 700, 700), np.float32),
                     lambda t: np.stack([np.full((1, *t.shape[2:]), next(counter) / 10.0) for _ in t]),
                     tile=(352, 352), overlap=64, batch=1)
    assert prob.min() >= 0.0 and prob.max() <= 0.8 + 1e-6  # 3x3 tiles predicting 0.0 .. 0.8
    assert np.abs(np.diff(prob, axis=1)).max() < 0.02  # no step at a seam


def test_small_images_run_whole_padded_to_the_multiple():
    shapes = []

    def predict(tiles):
        shapes.append(tiles.shape)
        return tiles[:, :1]

    image = np.random.default_rng(1).random((3, 50, 70), dtype=np.float32)
    prob = run_tiled(image, predict, tile=(352, 352), overlap=32, batch=4, multiple=32)
    assert shapes == [(1, 3, 64, 96)]
    np.testing.assert_array_equal(prob, image[0])


def blobs():
    prob = np.zeros((100, 200), np.float32)
    prob[10:20, 10:30] = 0.9  # 200 px, strong
    prob[50:53, 100:103] = 0.95  # 9 px, strong but tiny
    prob[70:90, 150:190] = 0.55  # 800 px, weak
    return prob


def test_find_defects_boxes_areas_and_scores():
    defects = find_defects(blobs(), threshold=0.5, mm_per_px=0.1)
    by_box = {tuple(d["bbox"]): d for d in defects}
    assert set(by_box) == {(10, 10, 30, 20), (100, 50, 103, 53), (150, 70, 190, 90)}
    big = by_box[(10, 10, 30, 20)]
    assert big["area_px"] == 200 and big["area_mm2"] == pytest.approx(2.0)
    assert big["max_score"] == pytest.approx(0.9) and big["mean_score"] == pytest.approx(0.9)
    assert defects[0]["max_score"] == pytest.approx(0.95)  # sorted by score


def components_one_by_one(prob, threshold):
    """Reference for find_defects: each component sliced out on its own."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats((prob >= threshold).astype(np.uint8), connectivity=8)
    found = []
    for label in range(1, count):
        x, y, w, h, area = (int(v) for v in stats[label])
        scores = prob[labels == label].astype(np.float64)
        found.append(([x, y, x + w, y + h], area, scores.mean(), scores.max()))
    return sorted(found, key=lambda c: c[3], reverse=True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_find_defects_matches_each_component_scored_on_its_own(dtype):
    rng = np.random.default_rng(7)
    ties = np.zeros((64, 64))
    ties[1::4, 1::4] = rng.choice([0.6, 0.7, 0.8], (16, 16))  # 256 one-pixel defects, 3 scores: ties by raster order
    for prob in (rng.random((97, 131)) ** 6, blobs(), ties, rng.random((40, 40)) * 0.4):  # noisy, few, none
        prob = prob.astype(dtype)
        for threshold in (0.3, 0.5):
            defects = find_defects(prob, threshold, mm_per_px=0.2)
            expected = components_one_by_one(prob, threshold)
            assert [d["bbox"] for d in defects] == [c[0] for c in expected]  # same order, ties included
            for d, (_, area, mean, peak) in zip(defects, expected):
                assert d["area_px"] == area and d["area_mm2"] == pytest.approx(area * 0.04)
                assert d["mean_score"] == pytest.approx(mean, rel=1e-6) and d["max_score"] == peak
                assert type(d["area_px"]) is int and type(d["max_score"]) is float  # JSON-ready


def test_rules_decide_ok_ng_and_say_why():
    defects = find_defects(blobs(), threshold=0.5)
    verdict, rule = judge(defects, Rules(min_area_px=16, min_score=0.6))
    assert verdict == "NG" and "1 defect(s) > max_count 0" in rule
    reasons = sorted(d.get("ignored", "counted") for d in defects)
    assert reasons[0] == "area 9 px < min_area_px 16" and reasons[-1].startswith("score 0.550 < min_score")

    assert judge(find_defects(blobs(), 0.5), Rules(min_area_px=16, min_score=0.6, max_count=1))[0] == "OK"
    roi_elsewhere = Rules(min_area_px=16, min_score=0.5, rois=[[0, 60, 120, 100]])
    assert judge(find_defects(blobs(), 0.5), roi_elsewhere)[0] == "OK"
    assert judge(find_defects(np.zeros((10, 10), np.float32), 0.5), Rules()) == ("OK", None)


def test_rules_file_and_its_errors(tmp_path):
    path = tmp_path / "rules.json"
    path.write_text(json.dumps({"threshold": 0.4, "min_area_px": 5, "rois": [[0, 0, 10, 10]]}))
    assert load_rules(path) == Rules(threshold=0.4, min_area_px=5, rois=[[0, 0, 10, 10]])
    toml = tmp_path / "rules.toml"
    toml.write_text("max_count = 2\nmm_per_px = 0.05\nmin_area_mm2 = 0.5\n")
    assert load_rules(toml).max_count == 2
    for content, message in [
        ({"thresh": 0.5}, "unknown keys"),
        ({"threshold": 1.5}, "threshold must be"),
        ({"min_area_mm2": 1.0}, "needs mm_per_px"),
        ({"rois": [[5, 5, 1, 1]]}, "x0 < x1"),
    ]:
        path.write_text(json.dumps(content))
        with pytest.raises(EdgestackError, match=message):
            load_rules(path)
    path.write_text("{not json")
    with pytest.raises(EdgestackError, match="not valid JSON"):
        load_rules(path)
    with pytest.raises(EdgestackError, match="does not exist"):
        load_rules(tmp_path / "nope.json")
