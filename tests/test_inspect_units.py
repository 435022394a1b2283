"""Tiling, defect extraction and verdict rules of the inspection pipeline (no model needed)."""

import csv
import itertools
import json
import math
import os
import time
from dataclasses import fields, replace

import cv2
import numpy as np
import pytest

from edgestack.cli import RULES_HELP
from edgestack.errors import EdgestackError
from edgestack.runtime.defects import Rules, assess, check_not_blank, load_rules
from edgestack.runtime.inspect import RunWriter, error_result
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
    # exactly, seams included: a pixel at the threshold must be judged as on the whole image
    assert prob.dtype == np.float32
    np.testing.assert_array_equal(prob, image[0] * 0.5)
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


@pytest.mark.parametrize("height, width", [(64, 353), (96, 704), (353, 64), (200, 1000)])
def test_a_strip_runs_at_its_own_height_not_padded_to_a_whole_tile(height, width):
    """A line-scan strip or a crop: one row of tiles as high as the strip (to the multiple). Padded to a whole
    tile it was mostly its last row repeated, streaks the model took for defects (6 of 10 good 64x353 parts NG)."""
    shapes = []

    def predict(tiles):
        shapes.append(tiles.shape[2:])
        return tiles[:, :1]

    image = np.random.default_rng(2).random((3, height, width), dtype=np.float32)
    prob = run_tiled(image, predict, tile=(352, 352), overlap=32, batch=2, multiple=32)
    np.testing.assert_array_equal(prob, image[0])
    fitted = tuple(min(352, -(-side // 32) * 32) for side in (height, width))
    assert set(shapes) == {fitted}


def blobs():
    prob = np.zeros((100, 200), np.float32)
    prob[10:20, 10:30] = 0.9  # 200 px, strong
    prob[50:53, 100:103] = 0.95  # 9 px, strong but tiny
    prob[70:90, 150:190] = 0.55  # 800 px, weak
    return prob


def test_components_boxes_areas_and_scores():
    found = assess(blobs(), Rules(min_area_px=1, min_score=0.0, mm_per_px=0.1))
    assert found.components == found.counted == 3 and found.status == "NG"
    by_box = {tuple(d["bbox"]): d for d in found.defects}
    assert set(by_box) == {(10, 10, 30, 20), (100, 50, 103, 53), (150, 70, 190, 90)}
    big = by_box[(10, 10, 30, 20)]
    assert big["area_px"] == 200 and big["area_mm2"] == pytest.approx(2.0) and big["centroid"] == [19.5, 14.5]
    assert big["max_score"] == pytest.approx(0.9) and big["mean_score"] == pytest.approx(0.9)
    assert [d["max_score"] for d in found.defects] == sorted((d["max_score"] for d in found.defects), reverse=True)


def assess_one_by_one(prob, rules):
    """Reference for assess: each component sliced out and judged on its own; every record, in listing order
    (counted first, then strongest first, ties in raster order)."""
    binary = (prob >= rules.threshold).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    found = []
    for label in range(1, count):
        x, y, w, h, area = (int(v) for v in stats[label])
        scores = prob[labels == label].astype(np.float64)
        box = [x, y, x + w, y + h]
        mm2 = area * rules.mm_per_px**2 if rules.mm_per_px else None
        if area < rules.min_area_px:
            why = f"area {area} px < min_area_px {rules.min_area_px}"
        elif rules.min_area_mm2 is not None and mm2 < rules.min_area_mm2 and not math.isclose(mm2, rules.min_area_mm2):
            why = f"area {mm2:.6g} mm2 < min_area_mm2 {rules.min_area_mm2}"
        elif scores.max() < rules.min_score:
            why = f"score {scores.max():.3f} < min_score {rules.min_score}"
        elif rules.rois and not any(x < r[2] and r[0] < x + w and y < r[3] and r[1] < y + h for r in rules.rois):
            why = "outside every region of interest"
        else:
            why = None
        found.append({"bbox": box, "area_px": area, "area_mm2": mm2, "mean_score": scores.mean(),
                      "max_score": scores.max(), "counted": why is None} | ({"ignored": why} if why else {}))
    found.sort(key=lambda d: d["max_score"], reverse=True)
    return [d for d in found if d["counted"]] + [d for d in found if not d["counted"]]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_assess_matches_each_component_judged_on_its_own(dtype):
    rng = np.random.default_rng(7)
    ties = np.zeros((64, 64))
    ties[1::4, 1::4] = rng.choice([0.6, 0.7, 0.8], (16, 16))  # 256 one-pixel defects, 3 scores: ties by raster order
    rule_sets = [Rules(threshold=0.3, min_area_px=1, min_score=0.0, max_listed=10**6),
                 Rules(threshold=0.5, min_area_px=2, min_score=0.75, max_listed=10**6, mm_per_px=0.2,
                       min_area_mm2=0.1, rois=[[0, 0, 40, 30], [60, 50, 200, 100]])]
    for prob in (rng.random((97, 131)) ** 6, blobs(), ties, rng.random((40, 40)) * 0.4):  # noisy, few, none
        prob = prob.astype(dtype)
        for rules in rule_sets:
            found = assess(prob, rules)
            expected = assess_one_by_one(prob, rules)
            assert found.components == len(expected) == len(found.defects)
            assert found.counted == sum(d["counted"] for d in expected)
            assert [d["bbox"] for d in found.defects] == [d["bbox"] for d in expected]  # same order, ties included
            for d, e in zip(found.defects, expected):
                assert d["area_px"] == e["area_px"] and d["max_score"] == e["max_score"]
                assert d["mean_score"] == pytest.approx(e["mean_score"], rel=1e-6)
                assert d["area_mm2"] == pytest.approx(e["area_mm2"]) and d.get("ignored") == e.get("ignored")
                assert type(d["area_px"]) is int and type(d["max_score"]) is float  # JSON-ready


def test_a_defect_exactly_at_the_mm2_minimum_counts_and_the_verdict_names_every_rule_applied():
    prob = np.zeros((40, 40), np.float32)
    prob[5:7, 5:10] = 0.9  # 10 px at 0.3 mm/px: 0.9 mm2, which the float product makes 0.8999999999999999
    rules = Rules(mm_per_px=0.3, min_area_mm2=0.9, min_area_px=1, rois=[[0, 0, 20, 20]])
    found = assess(prob, rules)
    assert found.status == "NG" and found.counted == 1  # was OK: "area 0.9 mm2 < min_area_mm2 0.9"
    assert found.rule == ("1 defect(s) > max_count 0 (threshold 0.5, min_area_px 1, min_area_mm2 0.9 at 0.3 mm/px, "
                          "min_score 0.5, rois [[0, 0, 20, 20]])")
    prob[5, 5] = 0  # 9 px: 0.81 mm2, below by a pixel
    assert assess(prob, rules).defects[0]["ignored"] == "area 0.81 mm2 < min_area_mm2 0.9"


def test_a_noisy_map_lists_the_counted_defects_first_and_counts_every_component():
    prob = np.random.default_rng(3).random((300, 400)) ** 4
    rules = Rules(threshold=0.3, min_area_px=3, min_score=0.5, max_listed=7)
    found = assess(prob, rules)
    expected = assess_one_by_one(prob, replace(rules, max_listed=10**6))
    assert found.components == len(expected) > 1000 and 7 < found.counted < found.components
    assert [d["bbox"] for d in found.defects] == [d["bbox"] for d in expected[:7]]
    assert all(d["counted"] for d in found.defects)
    assert assess(prob, replace(rules, max_listed=0)).defects == []
    assert "defect(s) > max_count 0" in found.rule and found.status == "NG"


def test_rules_decide_ok_ng_and_say_why():
    found = assess(blobs(), Rules(min_area_px=16, min_score=0.6))
    assert found.status == "NG" and "1 defect(s) > max_count 0" in found.rule and found.counted == 1
    assert [d.get("ignored", "counted") for d in found.defects] == [
        "counted", "area 9 px < min_area_px 16", "score 0.550 < min_score 0.6"]

    assert assess(blobs(), Rules(min_area_px=16, min_score=0.6, max_count=1)).status == "OK"
    roi_elsewhere = Rules(min_area_px=16, min_score=0.5, rois=[[0, 60, 120, 100]])
    assert assess(blobs(), roi_elsewhere).status == "OK"
    empty = assess(np.zeros((10, 10), np.float32), Rules())
    assert (empty.status, empty.rule, empty.defects, empty.counted, empty.components) == ("OK", None, [], 0, 0)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_map_with_nan_or_inf_gets_no_verdict(bad):
    prob = np.zeros((10, 10), np.float32)  # would be OK: NaN compares below every threshold
    prob[3, 4] = bad
    with pytest.raises(EdgestackError, match="holds 1 NaN/Inf value.* of 100, so no result"):
        assess(prob, Rules())


def test_blank_frames_get_no_verdict_and_the_check_can_be_turned_off():
    rng = np.random.default_rng(0)
    black = np.zeros((480, 640, 3), np.uint8)
    nearly_flat = np.full((480, 640, 3), 200, np.uint8)
    nearly_flat[rng.random((480, 640)) < 0.05] = 201  # std about 0.22 in every channel
    with pytest.raises(EdgestackError, match=r"cam0/17 is a blank frame .* is 0.00, under min_frame_std 0.5"):
        check_not_blank(black, Rules(), "cam0/17")
    with pytest.raises(EdgestackError, match="blank frame"):
        check_not_blank(nearly_flat, Rules(), "part.png")
    check_not_blank(black, Rules(min_frame_std=0), "cam0/17")  # turned off
    sensor_noise = rng.normal(200, 1.0, (480, 640, 3)).round().astype(np.uint8)
    check_not_blank(sensor_noise, Rules(), "part.png")
    one_channel_lit = black.copy()
    one_channel_lit[:, 320:, 1] = 90  # a green-only edge is still a picture
    check_not_blank(one_channel_lit, Rules(), "part.png")
    with pytest.raises(EdgestackError, match="min_frame_std >= 0"):
        Rules(min_frame_std=-1)


def test_rules_file_and_its_errors(tmp_path, caplog):
    path = tmp_path / "rules.json"
    path.write_text(json.dumps({"threshold": 0.4, "min_area_px": 5, "rois": [[0, 0, 10, 10]]}))
    assert load_rules(path) == Rules(threshold=0.4, min_area_px=5, rois=[[0, 0, 10, 10]])
    toml = tmp_path / "rules.toml"
    toml.write_text("max_count = 2\nmm_per_px = 0.05\nmin_area_mm2 = 0.5\n")  # 200 px: the mm2 rule decides
    assert load_rules(toml).max_count == 2 and not caplog.records
    toml.write_text("mm_per_px = 0.5\nmin_area_mm2 = 0.5\n")  # 2 px, but the default 16 px still applies
    load_rules(toml)
    assert "min_area_mm2 0.5 is 2.0 px at 0.5 mm/px, below min_area_px 16, which decides" in caplog.text
    for content, message in [
        ({"thresh": 0.5}, "unknown keys"),
        ({"threshold": 1.5}, "threshold must be"),
        ({"min_area_mm2": 1.0}, "needs mm_per_px"),
        ({"rois": [[5, 5, 1, 1]]}, "x0 < x1"),
        ({"max_listed": -1}, "max_listed"),
        # NaN compares false: as a limit it would silently turn its check off
        ({"min_frame_std": float("nan")}, "min_frame_std must be a finite number, got nan"),
        ({"min_area_mm2": float("nan"), "mm_per_px": 0.1}, "min_area_mm2 must be a finite number"),
        ({"rois": [[0, 0, float("nan"), 100]]}, "each roi is"),
        ({"mm_per_px": "0.1"}, "mm_per_px must be a finite number, got '0.1'"),
        ({"mm_per_px": -0.1}, "mm_per_px .* must be > 0"),
        ({"max_listed": 1.5}, "max_listed must be a whole number"),
        ({"min_area_px": True}, "min_area_px must be a whole number"),
        ({"rois": "all"}, "rois must be a list"),
        (5, "holds a int; it must be one object"),
        (None, "holds a NoneType"),
    ]:
        path.write_text(json.dumps(content))
        with pytest.raises(EdgestackError, match=message):
            load_rules(path)
    path.write_text(json.dumps({"max_listed": 20.0, "min_area_px": 8.0}))
    assert load_rules(path).max_listed == 20 and isinstance(load_rules(path).min_area_px, int)
    path.write_text("{not json")
    with pytest.raises(EdgestackError, match="not valid JSON"):
        load_rules(path)
    with pytest.raises(EdgestackError, match="does not exist"):
        load_rules(tmp_path / "nope.json")
    assert all(f.name in RULES_HELP for f in fields(Rules))  # the CLI's --rules help names every key


SETUP = {"model": "defectseg-s", "weights_sha256": "ab12", "tile": [352, 352], "overlap": 32,
         "rules.threshold": 0.5, "rules.rois": [[0, 0, 10, 10]]}


def test_a_run_folder_keeps_verdicts_of_one_setup(tmp_path):
    def session(setup, item="a.png"):
        writer = RunWriter(tmp_path, "none", setup)
        writer.write({"id": item, "status": "OK", "rule": None, "defects": [], "defect_count": 0, "components": 0,
                      "max_score": 0.1, "width": 8, "height": 8, "latency_ms": 1.0, "time": "t"}, None, None)
        writer.finish()

    RunWriter(tmp_path, "none", SETUP | {"overlap": 0}).finish()  # no verdicts yet: any setup may start it
    only_errors = RunWriter(tmp_path, "none", SETUP | {"bit_depth": None})
    only_errors.write(error_result("a.png", "16-bit image: pass --bit-depth"), None, None)
    only_errors.finish()  # an ERROR is no verdict: the rerun its message asks for takes the new setup
    session(SETUP | {"bit_depth": 12})
    assert json.loads((tmp_path / "run.json").read_text())["setup"]["bit_depth"] == 12
    (tmp_path / "results.jsonl").unlink()
    session(SETUP)
    session(dict(SETUP), "b.png")  # the same setup resumes (rois read back from JSON as lists)
    other_rules = SETUP | {"rules.threshold": 0.4, "weights_sha256": "cd34"}
    with pytest.raises(EdgestackError, match=r"holds 2 verdicts judged with another setup \(weights_sha256 ab12 -> "
                                             r"cd34; rules.threshold 0.5 -> 0.4\).*its own run folder"):
        RunWriter(tmp_path, "none", other_rules)
    assert json.loads((tmp_path / "run.json").read_text())["setup"] == SETUP  # the record of the judge stays
    (tmp_path / "run.json").write_text("{not json")
    with pytest.raises(EdgestackError, match="run.json is not a run setup"):
        RunWriter(tmp_path, "none", SETUP)


def test_a_run_folder_from_before_defect_count_resumes(tmp_path):
    # Its records listed every component with `counted`: the rewritten CSV must still count them right.
    old = {"id": "a.png", "status": "NG", "rule": "1 defect(s) > max_count 0", "max_score": 0.9, "width": 8,
           "height": 8, "latency_ms": 1.0, "defects": [{"bbox": [0, 0, 2, 2], "counted": True},
                                                       {"bbox": [4, 4, 5, 5], "counted": False, "ignored": "area"}]}
    (tmp_path / "results.jsonl").write_text(json.dumps(old) + "\n")
    writer = RunWriter(tmp_path, "none", SETUP)
    assert writer.done == {"a.png": None}  # no file version recorded then
    writer.finish()
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert [(r["id"], r["defects"]) for r in rows] == [("a.png", "1")]


def test_regions_of_interest_that_all_miss_the_image_give_no_verdict():
    prob = np.zeros((64, 80), np.float32)
    prob[10:20, 10:20] = 0.9
    assert assess(prob, Rules(rois=[[0, 0, 40, 40], [500, 500, 600, 600]])).status == "NG"  # one meets it
    with pytest.raises(EdgestackError, match="no region of interest .* meets this 80x64 image"):
        assess(prob, Rules(rois=[[80, 0, 200, 64], [0, 64, 80, 100]]))  # touching the border is outside


def test_watch_refuses_nan_and_infinite_times():
    from edgestack.runtime.sources import Watch

    for bad in [dict(settle_s=float("nan")), dict(idle_exit_s=float("nan")), dict(settle_s=float("inf")),
                dict(idle_exit_s=0)]:
        with pytest.raises(EdgestackError, match="settle >= 0 s and idle exit > 0 s"):
            Watch(**bad)


def verdict(item, status="OK"):
    return {"id": item, "status": status, "rule": None, "defects": [], "defect_count": 0, "components": 0,
            "max_score": 0.1, "width": 8, "height": 8, "latency_ms": 1.0, "time": "t"}


def test_a_damaged_run_folder_is_refused_with_the_line_at_fault(tmp_path):
    jsonl = tmp_path / "results.jsonl"
    for content, message in [
        (b'{"id": "a.png", "status": "OK"}\n{"id": "b.png", "stat\n', "line 2 is not a result record"),
        (b'{"id": "a.png"}\n', "line 1 is not a result record: no id and status"),
        (b'["a.png", "OK"]\n', "line 1 is not a result record"),
        (b'{"id": "a\xff.png", "status": "OK"}\n', "line 1 is not a result record"),
    ]:
        jsonl.write_bytes(content)
        with pytest.raises(EdgestackError, match=f"results.jsonl is damaged \\({message}"):
            RunWriter(tmp_path, "none", SETUP)
    jsonl.write_text(json.dumps(verdict("a.png")) + "\n\n")  # a blank line added by hand is no damage
    RunWriter(tmp_path, "none", SETUP).finish()
    for setup in ("null", "[]", '"x"'):
        (tmp_path / "run.json").write_text(f'{{"setup": {setup}}}')
        with pytest.raises(EdgestackError, match="run.json is not a run setup"):
            RunWriter(tmp_path, "none", SETUP)


def test_a_run_folder_that_cannot_be_one_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("x")
    for out in (tmp_path / "file", tmp_path / "file" / "sub"):
        with pytest.raises(EdgestackError, match="cannot use .* as a run folder: .*give --out a writable folder"):
            RunWriter(out, "none", SETUP)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "results.jsonl").mkdir()
    with pytest.raises(EdgestackError, match="cannot use .* as a run folder: Is a directory"):
        RunWriter(tmp_path / "run", "none", SETUP)


def test_one_run_at_a_time_in_a_run_folder(tmp_path):
    first = RunWriter(tmp_path, "none", SETUP)
    with pytest.raises(EdgestackError, match="in use by another inspect or serve run"):
        RunWriter(tmp_path, "none", SETUP)  # two runs appending would record items twice
    first.write(verdict("a.png"), None, None)
    first.finish()
    second = RunWriter(tmp_path, "none", SETUP)  # free once the first ended
    assert second.done == {"a.png": None}
    second.finish()


def test_a_recorded_result_stays_recorded_when_its_table_or_summary_cannot_be_written(tmp_path, caplog):
    writer = RunWriter(tmp_path, "none", SETUP, summary_every_s=0)
    (tmp_path / "summary.json").mkdir()  # the summary cannot be written from now on
    writer.write(verdict("a.png", "NG"), None, None)  # no error: the result is in results.jsonl
    while writer.summary_thread is not None:  # the live summary is written beside the verdicts, not in their way
        time.sleep(0.01)
    assert "summary in" in caplog.text and writer.done == {"a.png": None}
    assert [json.loads(line)["id"] for line in (tmp_path / "results.jsonl").read_text().splitlines()] == ["a.png"]
    with pytest.raises(EdgestackError, match="results.jsonl holds every recorded result"):
        writer.finish()
    RunWriter(tmp_path, "none", SETUP).lock.close()  # finish() released the folder even so


def test_overlay_names_are_unique_and_fit_a_file_name():
    from edgestack.runtime.inspect import overlay_name

    ids = ["a.png", "a.bmp", "sub/x.png", "sub__x.png", "é" * 200, "\U00020000" * 100, "bad\udcff.png",
           "request-20261207-123506.891104-000001", "request-20261207-123506.891104-000002"]
    names = [overlay_name(i) for i in ids]
    assert len(set(names)) == len(ids)  # service ids differing only after a dot no longer share one overlay
    assert all(len(n.encode()) <= 255 and "/" not in n and n.endswith(".png") for n in names)
    assert names[0].startswith("a.png-") and names[2].startswith("sub_x.png-")  # still readable


def test_the_threshold_is_applied_to_float32_maps_exactly_as_written():
    below = np.float32(0.7)  # 0.699999988: float32 rounds 0.7 down
    assert float(below) < 0.7
    rules = Rules(threshold=0.7, min_score=0.7, min_area_px=1)
    assert assess(np.full((2, 2), below), rules).components == 0  # was a defect whose max_score was under 0.7
    above = np.nextafter(below, np.float32(1))
    found = assess(np.full((2, 2), above), rules)
    assert found.components == 1 and found.status == "NG" and found.defects[0]["max_score"] >= 0.7
    assert assess(np.full((2, 2), 0.7, np.float64), rules).status == "NG"  # float64 maps compare as they are


class FakeClock:
    """time.monotonic and time.sleep for the watch: polls run at once, and the test says how time passes."""

    def __init__(self, monkeypatch):
        from edgestack.runtime import sources

        self.now = 1000.0
        monkeypatch.setattr(sources.time, "monotonic", lambda: self.now)
        monkeypatch.setattr(sources.time, "sleep", self.sleep)

    def sleep(self, seconds):
        self.now += seconds


def arrivals(folder, failed=lambda item_id: False, settle_s=1.0, idle_exit_s=None, notes=None):
    from edgestack.runtime.sources import Watch, _arrivals

    note = (notes if notes is not None else []).append
    return _arrivals(folder, Watch(settle_s, idle_exit_s), False, None, note, failed)


def until_item(watch, polls=100):
    for _ in range(polls):
        item = next(watch)
        if item is not None:
            return item
    return None


def test_a_watch_times_a_file_from_when_it_was_seen_not_from_when_its_poll_began(tmp_path, monkeypatch):
    """A poll that handed out a backlog took as long as its inspections; the files it looked at afterwards were
    stamped with the poll's start, so the next poll took one still being written for settled."""
    clock = FakeClock(monkeypatch)
    (tmp_path / "a.png").write_bytes(b"a complete image")
    (tmp_path / "b.png").write_bytes(b"the first chunk")
    watch = arrivals(tmp_path)
    assert until_item(watch).id == "a.png"
    clock.now += 10  # a.png is being inspected, and the camera writes on
    with open(tmp_path / "b.png", "ab") as f:
        f.write(b", the second chunk")
    assert next(watch) is None  # the rest of that poll: b.png changed, seen now
    assert next(watch) is None  # a poll later b.png has not settled (its writer pauses shorter than settle_s)
    with open(tmp_path / "b.png", "ab") as f:
        f.write(b", the last chunk")
    item = until_item(watch)
    assert item.id == "b.png" and item.path.read_bytes().endswith(b"the last chunk")


def test_a_watch_forgets_a_file_renamed_before_it_settled_and_exits_when_idle(tmp_path, monkeypatch):
    """The camera writes frame.png and renames it to its serial number: frame.png stayed pending for ever, so
    --idle-exit never came."""
    FakeClock(monkeypatch)
    (tmp_path / "frame.png").write_bytes(b"an image")
    watch = arrivals(tmp_path, idle_exit_s=5.0)
    assert next(watch) is None
    (tmp_path / "frame.png").rename(tmp_path / "SN123.png")
    assert until_item(watch).id == "SN123.png"
    polls = list(itertools.islice(watch, 1000))  # the watch ends after 5 s without an arrival: ~20 polls
    assert len(polls) < 1000 and set(polls) == {None}


def test_a_watched_file_read_before_it_was_whole_is_judged_again_once_it_settles(tmp_path, monkeypatch):
    """A copy that sets a file's size first and its time on close looks settled while its bytes arrive: read too
    early it gets an ERROR, and it was then never judged in that session."""
    clock = FakeClock(monkeypatch)
    failed, notes = set(), []
    (tmp_path / "SN1.png").write_bytes(b"\0" * 16)  # the size is there, the bytes are not
    (tmp_path / "SN2.png").write_bytes(b"judged")
    watch = arrivals(tmp_path, failed=failed.__contains__, notes=notes)
    first = [until_item(watch).id, until_item(watch).id]
    assert first == ["SN1.png", "SN2.png"]
    failed.add("SN1.png")  # its ERROR is recorded; SN2.png got a verdict
    (tmp_path / "SN1.png").write_bytes(b"a whole image..")
    (tmp_path / "SN2.png").write_bytes(b"another part under a used name")
    clock.now += 10
    retry = until_item(watch)
    assert retry.id == "SN1.png" and retry.retry
    assert notes == [f"{tmp_path / 'SN2.png'}: rewritten after it was inspected, so this image was NOT inspected; "
                     "a line must write each image under a new file name"]
    for _ in range(50):  # each rewrite is noted once, not at every recheck
        next(watch)
        clock.now += 1
    assert len(notes) == 1


def test_a_rewritten_file_whose_result_is_not_known_yet_waits_for_it(tmp_path, monkeypatch):
    """With a slow engine the first result was still queued at the recheck: the file was taken for rewritten after
    a verdict, noted, and never judged again, though its result then was an ERROR."""
    clock = FakeClock(monkeypatch)
    results, notes = {}, []
    (tmp_path / "SN1.png").write_bytes(b"\0" * 16)
    watch = arrivals(tmp_path, failed=lambda item_id: results.get(item_id), notes=notes)
    assert until_item(watch).id == "SN1.png"
    (tmp_path / "SN1.png").write_bytes(b"a whole image..")
    clock.now += 10
    for _ in range(30):  # rechecks while its result is not known: nothing decided, nothing noted
        assert next(watch) is None
        clock.now += 1
    assert notes == []
    results["SN1.png"] = True  # its ERROR is recorded
    clock.now += 10
    assert until_item(watch).retry and notes == []


def test_folders_that_cannot_be_listed_are_reported_and_a_watched_share_that_goes_is_an_error(tmp_path,
                                                                                            monkeypatch):
    from edgestack.runtime import sources

    (tmp_path / "lot1").mkdir()
    (tmp_path / "lot1" / "a.png").write_bytes(b"x")
    (tmp_path / "lot2").mkdir()
    walk = os.walk

    def lot2_failing(error):  # os.walk, with lot2's listing failing as `error` does
        def failing_walk(top, onerror=None):
            for folder, folders, names in walk(top, onerror=onerror):
                if os.path.basename(folder) == "lot2":
                    onerror(error(folder))
                    continue
                yield folder, folders, names
        return failing_walk

    monkeypatch.setattr(sources.os, "walk", lot2_failing(lambda folder: PermissionError(13, "Permission denied",
                                                                                          folder)))
    notes = []
    items = sources.open_source(tmp_path, note=notes.append)
    assert [item.id for item in items] == ["lot1/a.png"]
    assert notes == [f"{tmp_path / 'lot2'}: a folder that cannot be listed (Permission denied), so its images were "
                     "NOT inspected"]

    # A camera's batch folder deleted between its parent's listing and its own: no failure, no note.
    monkeypatch.setattr(sources.os, "walk", lot2_failing(lambda folder: FileNotFoundError(2, "No such file", folder)))
    notes.clear()
    assert [item.id for item in sources.open_source(tmp_path, note=notes.append)] == ["lot1/a.png"] and notes == []
    monkeypatch.undo()
    FakeClock(monkeypatch)
    watch = arrivals(tmp_path)
    assert next(watch) is None
    device = os.stat(tmp_path).st_dev
    stat = os.stat

    class Unmounted:  # the empty mount point a share leaves behind: another device
        def __getattr__(self, name):
            return getattr(self.real, name)

    def unmounted(path, *args, **kwargs):
        result = stat(path, *args, **kwargs)
        if os.fspath(path) == os.fspath(tmp_path):
            shadow = Unmounted()
            shadow.real, shadow.st_dev = result, device + 1
            return shadow
        return result

    monkeypatch.setattr(sources.Path, "stat", lambda self, **kwargs: unmounted(self, **kwargs))
    with pytest.raises(EdgestackError, match="is gone \\(deleted, or its share unmounted\\)"):
        next(watch)


def test_a_video_that_ends_before_its_announced_frames_is_reported(tmp_path):
    from edgestack.runtime.sources import _frames

    class Capture:  # a damaged video: 10 frames announced, 4 decoded
        frames = 4

        def get(self, prop):
            return 10

        def read(self):
            self.frames -= 1
            return (True, np.zeros((8, 8, 3), np.uint8)) if self.frames >= 0 else (False, None)

        def release(self):
            pass

    notes = []
    video = tmp_path / "lot.avi"
    video.write_bytes(b"x")
    assert len(list(_frames(Capture(), video, None, notes.append))) == 4
    assert notes == [f"{video}: 4 frames decoded of the 10 its header announces (damaged?); frames from the first "
                     "one lost on were NOT inspected, and ids count decoded frames"]
    notes.clear()
    assert len(list(_frames(Capture(), video, 3, notes.append))) == 3 and notes == []  # --max-frames: not a loss
