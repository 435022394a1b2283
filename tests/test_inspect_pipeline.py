"""The inspection pipeline and service on a real defectseg-s bundle (shipped weights)."""

import csv
import errno
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from datetime import datetime, timezone

import cv2
import httpx
import numpy as np
import pytest

from edgestack import bundle as bundle_format
from edgestack.errors import EdgestackError
from edgestack.runtime import sources
from edgestack.runtime.defects import Rules
from edgestack.runtime.images import read_image
from edgestack.runtime.inspect import Inspector, RunWriter
from edgestack.train.synthetic import make_sample

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bundle(defectseg_bundle):
    return defectseg_bundle


@pytest.fixture(scope="module")
def inspector(bundle):
    return Inspector(bundle, Rules(), backend="onnxruntime")


def synthetic_images(count, size, seed=0):
    return [make_sample(seed + 100, i, size) for i in range(count)]  # seeds the model was not trained on


def write_folder(folder, count, size=256, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    samples = synthetic_images(count, size, seed)
    for i, sample in enumerate(samples):
        cv2.imwrite(str(folder / f"part{i:03d}.png"), cv2.cvtColor(sample.image, cv2.COLOR_RGB2BGR))
    return samples


def plain_frame(height, width, level=100, seed=0):
    """A featureless part with sensor noise (a constant image is a blank frame, refused)."""
    return np.random.default_rng(seed).integers(level - 8, level + 8, (height, width, 3), dtype=np.uint8)


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]


def test_folder_run_writes_every_result_file(inspector, tmp_path):
    write_folder(tmp_path / "in", 6)
    (tmp_path / "in" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (tmp_path / "in" / "notes.txt").write_text("operator notes")
    results = list(inspector.run(tmp_path / "in", tmp_path / "run", overlay="all"))
    assert len(results) == 7
    by_id = {r["id"]: r for r in results}
    assert by_id["corrupt.png"]["status"] == "ERROR" and "could not be decoded" in by_id["corrupt.png"]["error"]
    assert {r["status"] for r in results} <= {"OK", "NG", "ERROR"}
    run = tmp_path / "run"
    assert [r["id"] for r in records(run)] == [r["id"] for r in results]
    csv_rows = (run / "results.csv").read_text().splitlines()
    assert csv_rows[0].startswith("id,status") and csv_rows[0].endswith(",time") and len(csv_rows) == 8
    made = [datetime.fromisoformat(r["time"]) for r in results]  # UTC, to match the line's own logs
    assert all(abs((datetime.now(timezone.utc) - t).total_seconds()) < 600 for t in made) and made == sorted(made)
    counts = {r["id"]: int(r["defects"]) for r in csv.DictReader(csv_rows)}
    assert counts == {r["id"]: r["defect_count"] for r in results}
    assert all(r["defect_count"] == sum(d["counted"] for d in r["defects"]) for r in results)  # few components
    assert len(list((run / "overlays").glob("*.png"))) == 6
    summary = json.loads((run / "summary.json").read_text())
    assert summary["items"] == 7 and summary["counts"]["ERROR"] == 1
    assert "notes.txt: not an image file" in (run / "skipped.txt").read_text()
    assert (run / "scores.png").read_bytes()[:4] == b"\x89PNG"


def test_shipped_model_localizes_synthetic_defects(inspector):
    # Through the whole pipeline (tiling, preprocessing from meta.json): the probability is far higher on
    # the defect pixels of fresh samples than around them, and the verdict of most positives is NG.
    positives = [s for s in synthetic_images(24, 256, seed=123) if s.mask.any()]
    inside, outside, ng = [], [], 0
    for sample in positives:
        result, prob = inspector.inspect(sample.image)
        inside.append(prob[sample.mask > 0].mean())
        outside.append(prob[sample.mask == 0].mean())
        ng += result["status"] == "NG"
    assert np.mean(inside) > 4 * np.mean(outside)
    assert ng >= 0.75 * len(positives)


def test_large_frame_is_tiled_and_tiny_frame_runs(inspector):
    big = np.random.default_rng(0).integers(90, 110, (3000, 4096, 3), dtype=np.uint8)
    big[1500:1504, 1000:1400] = 40  # a dark scratch
    result, prob = inspector.inspect(big)
    assert prob.shape == (3000, 4096) and result["width"] == 4096
    tiny = plain_frame(40, 50, 128)
    with pytest.raises(EdgestackError, match="at least"):
        inspector.inspect(tiny)


def test_iterator_source_and_error_items(inspector, tmp_path):
    arrays = [plain_frame(128, 128, 120), np.zeros((5,), np.uint8), plain_frame(128, 128, 90)]
    results = list(inspector.run(iter(arrays), tmp_path / "run"))
    assert [r["status"] == "ERROR" for r in results] == [False, True, False]
    session = results[0]["id"][: -len("000000")]
    assert session.startswith("item-") and [r["id"] for r in results] == [f"{session}{i:06d}" for i in range(3)]
    # A second batch into the same run folder is inspected, not taken for the first (ids carry the session);
    # (id, array) pairs keep the caller's ids, such as part serial numbers.
    again = list(inspector.run([("SN-1", arrays[0]), ("SN-2", arrays[2])], tmp_path / "run"))
    assert [r["id"] for r in again] == ["SN-1", "SN-2"] and len(records(tmp_path / "run")) == 5
    with pytest.raises(EdgestackError, match=r"one array of shape \(128, 128, 3\): inspect one image with"):
        list(inspector.run(arrays[0]))  # not 128 rows of an image


def test_part_ids_given_with_arrays_are_checked_and_never_judged_twice_in_a_run(inspector, tmp_path):
    # A repeated id was inspected or dropped depending on how far the reader had run ahead of the writer: now
    # the second item is never inspected and is reported, wherever it comes.
    good = plain_frame(128, 128, 120)
    for gap in (1, 10):
        run = tmp_path / f"gap{gap}"
        items = [(f"SN-{i}", good) for i in range(12)]
        items.insert(gap, ("SN-0", plain_frame(128, 128, 90)))
        assert [r["id"] for r in inspector.run(items, run)] == [f"SN-{i}" for i in range(12)]
        assert len(records(run)) == 12 and records(run)[0]["id"] == "SN-0"
        assert (run / "skipped.txt").read_text().count("SN-0: a second item with this id in one run") == 1
    # A serial number as an int keeps its digits; an empty or other id is that item's error, naming it.
    results = list(inspector.run([(4711, good), ("", good), (None, good), (np.int64(4712), good)]))
    assert [r["id"] for r in results[::3]] == ["4711", "4712"] and results[0]["status"] != "ERROR"
    assert [r["status"] for r in results[1:3]] == ["ERROR", "ERROR"]
    assert "the id '' (str) of (id, image) pair number 1 is not a non-empty string or an int" in results[1]["error"]
    assert "the id None (NoneType) of (id, image) pair number 2" in results[2]["error"]


def test_arrays_are_judged_as_yielded_and_a_recapture_under_a_judged_id_is_reported(inspector, tmp_path):
    # A camera SDK fills one buffer for every frame it yields: the reader ran ahead of the engine, so frames were
    # judged with a later frame's pixels under their own ids. An (id, array) sent again with another image got
    # no result and no word.
    frames = [plain_frame(128, 128, 120, seed=i) for i in range(6)]
    frames[1][40:80, 40:80] = 250  # a bright blotch: a defect
    alone = [inspector.inspect(frame)[0]["max_score"] for frame in frames]
    buffer = np.empty_like(frames[0])

    def camera():
        for i, frame in enumerate(frames):
            buffer[...] = frame
            yield f"SN-{i}", buffer

    run = tmp_path / "run"
    assert [r["max_score"] for r in inspector.run(camera(), run)] == pytest.approx(alone)
    assert list(inspector.run([("SN-0", frames[0].copy())], run)) == []  # the same image: a resume, in silence
    assert list(inspector.run([("SN-0", np.zeros(5, np.uint8))], run)) == []  # unreadable: no other image shown
    assert "SN-0" not in (run / "skipped.txt").read_text()
    assert list(inspector.run([("SN-0", frames[1])], run)) == []
    assert "SN-0: has a verdict in this run folder for another image, so this one was NOT inspected" in (
        run / "skipped.txt").read_text()
    assert records(run)[0]["pixels_sha256"] == sources.pixels_sha256(frames[0])


def test_a_run_ends_at_once_when_stopped_and_a_failing_source_is_never_taken_for_an_ended_one(inspector, tmp_path):
    # Stopping a run waited until the source yielded again (a camera waiting for its next trigger: for ever); a
    # source ending with a BaseException (asyncio's CancelledError) ended the run as if it had no more parts.
    import asyncio

    import torch

    trigger = threading.Event()

    def camera():
        yield plain_frame(128, 128, 120)
        trigger.wait(60)  # the line stopped: no trigger comes
        yield plain_frame(128, 128, 120)

    results = inspector.run(camera(), tmp_path / "run")
    started = time.monotonic()
    assert next(results)["status"] == "OK"
    results.close()
    assert time.monotonic() - started < 10
    trigger.set()
    assert bundle_format.exclusive_lock(tmp_path / "run" / "run.lock") is not None  # the run folder is free

    def cancelled():
        yield plain_frame(128, 128, 120)
        raise asyncio.CancelledError()

    with pytest.raises(EdgestackError, match="reading the source failed: CancelledError"):
        list(inspector.run(cancelled()))
    with pytest.raises(EdgestackError, match=r"one array of shape \(128, 128, 3\): inspect one image with"):
        list(inspector.run(torch.from_numpy(plain_frame(128, 128))))  # not 128 items, one per row


def test_a_long_run_without_a_run_folder_keeps_no_record_of_its_camera_frames(inspector, monkeypatch):
    # Every anonymous or camera id was kept, though no other item can have it: ~190 B a frame, for ever.
    import tracemalloc

    monkeypatch.setattr(inspector, "inspect", lambda image, item_id=None: ({"status": "OK"}, None))
    frame = plain_frame(8, 8)
    list(inspector.run(frame for _ in range(500)))  # warmed up
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        list(inspector.run(frame for _ in range(5000)))
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 100_000


def test_inspector_options_are_checked_when_made_not_at_the_first_image(bundle, tmp_path):
    # batch=2.5 failed every inspect() with a TypeError; prefetch=0 made the read-ahead queue unbounded.
    for option, value in (("batch", 2.5), ("batch", 0), ("prefetch", 0), ("prefetch", -1), ("overlap", 1.5),
                          ("batch", True)):
        with pytest.raises(EdgestackError, match=f"{option} must be a whole number of at least"):
            Inspector(bundle, backend="onnxruntime", **{option: value})
    numpy_ints = Inspector(bundle, backend="onnxruntime", batch=np.int64(2), prefetch=1, overlap=np.int32(16))
    assert numpy_ints.batch == 2 and json.dumps(numpy_ints.setup())  # run.json takes them
    with pytest.raises(EdgestackError, match="is a folder; pass one image file"):
        read_image(tmp_path)
    # A rules file's path failed at every item with an AttributeError; a dict of rules was judged by the defaults.
    (tmp_path / "rules.json").write_text(json.dumps({"threshold": 0.7}))
    assert Inspector(bundle, tmp_path / "rules.json", backend="onnxruntime").rules.threshold == 0.7
    with pytest.raises(EdgestackError, match="rules must be a rules file's path or Rules .*got dict"):
        Inspector(bundle, {"threshold": 0.7}, backend="onnxruntime")


def test_inspect_checks_an_array_as_run_does(inspector):
    frame = plain_frame(128, 128, 120)
    assert inspector.inspect(frame.astype(np.float32) / 255)[0]["status"] == "OK"  # float 0..1, not "blank"
    assert inspector.inspect(np.dstack([frame, np.full((128, 128), 255, np.uint8)]))[0]["width"] == 128  # RGBA
    for bad, message in [(frame.astype(np.int32), "has dtype int32"), (frame[..., :2], r"shape \(128, 128, 2\)"),
                         (frame[..., 0], "grayscale"), (np.zeros((0, 0, 3), np.uint8), "is empty"),
                         (plain_frame(1, 1), "at least")]:  # too small, not a "blank frame"
        with pytest.raises(EdgestackError, match=message):
            inspector.inspect(bad)


def test_blank_frames_are_errors_among_good_parts(inspector, tmp_path):
    write_folder(tmp_path / "in", 2)
    cv2.imwrite(str(tmp_path / "in" / "cap-on.png"), np.zeros((256, 256, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "in" / "dropped.png"), np.full((256, 256, 3), 128, np.uint8))
    results = {r["id"]: r for r in inspector.run(tmp_path / "in", tmp_path / "run")}
    assert {i for i, r in results.items() if r["status"] == "ERROR"} == {"cap-on.png", "dropped.png"}
    assert len(results) == 4
    assert "cap-on.png is a blank frame" in results["cap-on.png"]["error"]
    unchecked = Inspector(inspector.engine, Rules(min_frame_std=0))
    assert unchecked.inspect(np.zeros((256, 256, 3), np.uint8))[0]["status"] in ("OK", "NG")


def test_a_run_folder_refuses_verdicts_of_other_rules(inspector, tmp_path):
    write_folder(tmp_path / "in", 2)
    list(inspector.run(tmp_path / "in", tmp_path / "run"))
    setup = json.loads((tmp_path / "run" / "run.json").read_text())["setup"]
    assert setup["model"] == "defectseg-s" and len(setup["weights_sha256"]) == 64 and setup["rules.threshold"] == 0.5
    stricter = Inspector(inspector.engine, Rules(threshold=0.7))
    with pytest.raises(EdgestackError, match=r"holds 2 verdicts judged with another setup \(rules.threshold 0.5"):
        list(stricter.run(tmp_path / "in", tmp_path / "run"))
    write_folder(tmp_path / "in", 3)  # one more part: the same setup resumes and inspects only it
    assert [r["id"] for r in inspector.run(tmp_path / "in", tmp_path / "run")] == ["part002.png"]


def test_a_run_folder_refuses_verdicts_of_an_int8_model_or_of_another_calibration(bundle, inspector, tmp_path):
    """int8 verdicts are not fp32's within parity: a run that fp32 started is not resumed with the int8 model,
    nor an int8 run after `edgestack quantize` calibrated the model anew."""
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    meta = bundle_format.read_meta(copy)
    # Stand-ins for calibrated models (what matters here is which file judged): the fp32 graph, then a copy of it
    # that differs in one byte of its producer's name.
    first = (copy / bundle_format.PORTABLE_ONNX).read_bytes()
    bundle_format.replace_files(copy, meta, {bundle_format.INT8_ONNX: first})
    write_folder(tmp_path / "in", 2)
    list(Inspector(copy, backend="onnxruntime").run(tmp_path / "in", tmp_path / "fp32"))
    int8 = Inspector(copy, backend="onnxruntime-int8")
    assert int8.setup()["int8_sha256"] == bundle_format.read_meta(copy)["files"][bundle_format.INT8_ONNX]
    with pytest.raises(EdgestackError, match=r"holds 2 verdicts judged with another setup \(int8_sha256 None -> "):
        list(int8.run(tmp_path / "in", tmp_path / "fp32"))
    list(int8.run(tmp_path / "in", tmp_path / "int8"))
    recalibrated = first.replace(b"pytorch", b"Pytorch", 1)
    assert recalibrated != first
    bundle_format.replace_files(copy, bundle_format.read_meta(copy), {bundle_format.INT8_ONNX: recalibrated})
    with pytest.raises(EdgestackError, match=r"another setup \(int8_sha256 [0-9a-f]{64} -> [0-9a-f]{64}"):
        list(Inspector(copy, backend="onnxruntime-int8").run(tmp_path / "in", tmp_path / "int8"))
    assert inspector.setup()["int8_sha256"] is None


def write_video(path, count, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 128))
    for sample in synthetic_images(count, 128, seed):
        writer.write(cv2.resize(cv2.cvtColor(sample.image, cv2.COLOR_RGB2BGR), (160, 128)))
    writer.release()
    return path


def test_video_source(inspector, tmp_path):
    path = write_video(tmp_path / "line.avi", 4)
    results = list(inspector.run(path, max_frames=3))
    assert [r["id"] for r in results] == ["line.avi/frame-000000", "line.avi/frame-000001", "line.avi/frame-000002"]


def test_another_video_under_an_inspected_name_is_reported_not_taken_for_it(inspector, tmp_path):
    run = tmp_path / "run"
    day1 = write_video(tmp_path / "day1" / "capture.avi", 2)  # a camera PC's recording, under the same name daily
    day2 = write_video(tmp_path / "day2" / "capture.avi", 3, seed=5)
    assert [r["file"]["size"] for r in inspector.run(day1, run)] == [day1.stat().st_size] * 2
    assert list(inspector.run(day1, run)) == []  # the same video resumed: nothing twice, nothing reported
    assert (run / "skipped.txt").read_text() == ""
    assert list(inspector.run(day2, run)) == []  # its frame ids have day1's verdicts: not one frame taken for them
    assert (run / "skipped.txt").read_text() == (  # and said once, not once a frame
        f"{day2}: changed since its verdict was recorded (another file under that name?), so it was NOT inspected; a "
        "line must write each image or video under a new file name\n")
    assert len(records(run)) == 2


def test_a_folder_named_with_digits_is_a_folder_not_a_camera(inspector, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_folder(tmp_path / "20240105", 1, size=128)  # lines name folders by date
    assert [r["id"] for r in inspector.run("20240105", "run")] == ["part000.png"]
    with pytest.raises(EdgestackError, match="inside the source"):
        list(inspector.run("20240105", "20240105/run"))


def test_resume_after_kill_gives_every_item_exactly_once(bundle, tmp_path):
    count = 24
    write_folder(tmp_path / "in", count, size=384, seed=5)
    run = tmp_path / "run"
    command = [sys.executable, "-m", "edgestack", "inspect", str(tmp_path / "in"), "--bundle", str(bundle),
               "--out", str(run), "--backend", "onnxruntime", "--overlay", "all"]
    kill_after = random.Random().randint(2, count - 6)
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (run / "results.jsonl").exists() and len((run / "results.jsonl").read_bytes().splitlines()) >= kill_after:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    # Complete records only: a kill during a record that spans pages can leave its line cut off (the kernel
    # stops a write between pages for SIGKILL); the rerun drops that line and redoes its item.
    before = (run / "results.jsonl").read_bytes().count(b"\n")
    assert before < count
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    ids = [r["id"] for r in records(run)]
    assert sorted(ids) == sorted(f"part{i:03d}.png" for i in range(count))  # every item exactly once
    csv_ids = [line.split(",")[0] for line in (run / "results.csv").read_text().splitlines()[1:]]
    assert sorted(csv_ids) == sorted(ids)


def test_a_record_cut_off_by_a_crash_is_dropped_and_its_item_redone(inspector, tmp_path):
    write_folder(tmp_path / "in", 3)
    run = tmp_path / "run"
    list(inspector.run(tmp_path / "in", run))
    jsonl = run / "results.jsonl"
    lines = jsonl.read_bytes().splitlines(keepends=True)
    cut = json.loads(lines[-1])["id"]
    jsonl.write_bytes(b"".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])  # killed mid-write
    again = list(inspector.run(tmp_path / "in", run))
    assert [r["id"] for r in again] == [cut]
    assert sorted(r["id"] for r in records(run)) == [f"part{i:03d}.png" for i in range(3)]


def test_a_rerun_retries_error_items_and_keeps_verdicts(inspector, tmp_path):
    write_folder(tmp_path / "in", 3)
    half_written = tmp_path / "in" / "part003.png"
    half_written.write_bytes(encoded(plain_frame(96, 96))[:50])  # a camera still writing it
    first = {r["id"]: r for r in inspector.run(tmp_path / "in", tmp_path / "run")}
    assert first["part003.png"]["status"] == "ERROR" and len(first) == 4
    half_written.write_bytes(encoded(plain_frame(96, 96)))
    second = list(inspector.run(tmp_path / "in", tmp_path / "run"))
    assert [r["id"] for r in second] == ["part003.png"] and second[0]["status"] in ("OK", "NG")
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["items"] == 4 and summary["counts"]["ERROR"] == 0 and summary["errors"] == []
    rows = list(csv.DictReader((run / "results.csv").open()))
    assert sorted((r["id"], r["status"]) for r in rows) == sorted(
        [(i, first[i]["status"]) for i in first if i != "part003.png"] + [("part003.png", second[0]["status"])])
    assert len(records(run)) == 5  # the log keeps the ERROR line; the last line of an item is its result


def test_a_12_bit_camera_folder_is_inspected_with_its_bit_depth(bundle, tmp_path):
    image = (synthetic_images(1, 128, seed=4)[0].image.astype(np.uint16) << 4) | 0xF  # 12-bit: 0..4095
    cv2.imwrite(str(tmp_path / "mono12.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    (refused,) = Inspector(bundle, backend="onnxruntime").run(tmp_path / "mono12.png")
    assert refused["status"] == "ERROR" and "--bit-depth 12" in refused["error"]
    (read,) = Inspector(bundle, backend="onnxruntime", bit_depth=12).run(tmp_path / "mono12.png")
    assert read["status"] in ("OK", "NG") and read["width"] == 128
    with pytest.raises(EdgestackError, match="bit depth 8 is not one of 9..16"):
        Inspector(bundle, backend="onnxruntime", bit_depth=8)  # refused before any item, not per item


def write_png(path, sample, pause_after=None):
    """Write `sample` as a PNG like a camera PC does; with `pause_after` bytes, stop there for a moment first."""
    data = encoded(sample.image)
    with open(path, "wb") as f:
        if pause_after:
            f.write(data[:pause_after])
            f.flush()
            time.sleep(0.25)
        f.write(data[pause_after or 0:])


def test_a_watched_folder_inspects_each_image_once_it_is_complete(inspector, tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "WATCH_POLL_S", 0.05)
    monkeypatch.setattr(sources, "WATCH_RECHECK_S", 0.2)
    hot = tmp_path / "hot"
    hot.mkdir()
    samples = synthetic_images(4, 128, seed=6)
    write_png(hot / "before.png", samples[0])  # there before the watch starts

    def camera_pc():
        time.sleep(0.5)
        write_png(hot / "slow.png", samples[1], pause_after=2000)  # still being written at a poll
        (hot / "notes.txt").write_text("shift log")
        write_png(hot / "renamed.png.tmp", samples[2])
        (hot / "renamed.png.tmp").rename(hot / "renamed.png")
        (hot / "lot7.tmp").mkdir()  # a batch copied in under a temporary folder name, renamed when complete
        write_png(hot / "lot7.tmp" / "a.png", samples[0])
        (hot / ".stversions").mkdir()  # a sync tool's old versions
        write_png(hot / ".stversions" / "old.png", samples[1])
        time.sleep(1.5)  # longer than the settle time: waited on for its name, not for its writes
        (hot / "lot7.tmp").rename(hot / "lot7")
        (hot / "sub").mkdir()
        write_png(hot / "sub" / "late.png", samples[3])
        log, deadline = tmp_path / "run" / "results.jsonl", time.monotonic() + 60
        while not (log.exists() and "before.png" in log.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        write_png(hot / "before.png", samples[3])  # a line reusing a name: reported, since its id is taken

    writer = threading.Thread(target=camera_pc)
    writer.start()
    started = time.monotonic()
    results = list(inspector.run(hot, tmp_path / "run", watch=sources.Watch(settle_s=1.0, idle_exit_s=2.0)))
    writer.join()
    assert sorted(r["id"] for r in results) == ["before.png", "lot7/a.png", "renamed.png", "slow.png", "sub/late.png"]
    assert all(r["status"] in ("OK", "NG") and r["width"] == 128 for r in results)  # none read half-written
    assert (tmp_path / "run" / "skipped.txt").read_text().splitlines() == [
        f"{hot / 'notes.txt'}: not an image file (.txt)",
        f"{hot / 'before.png'}: rewritten after it was inspected, so this image was NOT inspected; a line must "
        "write each image under a new file name"]
    assert time.monotonic() - started < 30  # the idle exit ended it
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["items"] == 5
    again = list(inspector.run(hot, tmp_path / "run", watch=sources.Watch(settle_s=0.1, idle_exit_s=0.5)))
    assert again == []  # a rerun inspects nothing twice


def test_a_run_folder_inside_the_source_and_bad_watch_options_are_refused(inspector, tmp_path, capsys):
    write_folder(tmp_path / "in", 1)
    with pytest.raises(EdgestackError, match="inside the source"):
        list(inspector.run(tmp_path / "in", tmp_path / "in" / "run"))
    with pytest.raises(EdgestackError, match="inside the source"):  # a recursive glob would match its overlays
        list(inspector.run(f"{tmp_path}/in/**/*.png", tmp_path / "in" / "run"))
    with pytest.raises(EdgestackError, match="inside the source"):  # and this one its scores.png
        list(inspector.run(f"{tmp_path}/in/*/*.png", tmp_path / "in" / "run"))
    # `inspect "*.png" --out runs/line3` was refused, though such a glob never reaches into runs/line3/.
    assert [r["id"] for r in inspector.run(f"{tmp_path}/in/*.png", tmp_path / "in" / "runs" / "line3")] == [
        "part000.png"]
    with pytest.raises(EdgestackError, match="watch needs a folder"):
        list(inspector.run(tmp_path / "in" / "part000.png", watch=sources.Watch()))
    with pytest.raises(EdgestackError, match="settle >= 0"):
        sources.Watch(settle_s=-1)
    with pytest.raises(EdgestackError, match=r"max_frames \(--max-frames\) stops a video or a camera"):
        list(inspector.run(tmp_path / "in", max_frames=3))  # it was ignored without a word
    from edgestack.cli import main

    assert main(["inspect", str(tmp_path / "in"), "--bundle", "unused", "--out", str(tmp_path / "r"),
                 "--idle-exit", "5"]) == 2  # an option of --watch alone
    # `--out "$RUN_DIR"` with the variable unset: everything was inspected and nothing recorded.
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "in"), "--bundle", "unused", "--out", ""]) == 2
    assert "--out is an empty path (an unset variable in a script?)" in capsys.readouterr().err
    with pytest.raises(EdgestackError, match="the run folder is an empty path"):
        list(inspector.run(tmp_path / "in", ""))


def test_sigterm_ends_a_watch_with_its_summary(bundle, tmp_path):
    hot, run = tmp_path / "hot", tmp_path / "run"
    hot.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "edgestack", "inspect", str(hot), "--bundle", str(bundle),
                             "--out", str(run), "--backend", "onnxruntime", "--watch", "--settle", "0.2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for i, sample in enumerate(synthetic_images(2, 128, seed=8)):
        write_png(hot / f"part{i}.png", sample)
    deadline = time.time() + 120
    while time.time() < deadline and not ((run / "results.jsonl").exists()
                                          and len((run / "results.jsonl").read_text().splitlines()) == 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "2 items: " in out and json.loads((run / "summary.json").read_text())["items"] == 2


class UnpluggedCamera:
    """Stands in for cv2.VideoCapture on a camera index: `frames` frames, then none until it has been reopened
    `back_after_reopens` times (never, when None)."""

    def __init__(self, frames, back_after_reopens=None):
        self.frames, self.back_after_reopens, self.reopens = frames, back_after_reopens, 0

    def isOpened(self):
        return True

    def read(self):
        if self.frames > 0 or (self.back_after_reopens is not None and self.reopens >= self.back_after_reopens):
            self.frames -= 1
            return True, plain_frame(96, 128)
        return False, None

    def open(self, index):
        self.reopens += 1
        return True

    def release(self):
        pass


def test_a_camera_that_stops_ends_the_run_with_an_error_and_keeps_its_results(inspector, tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "CAMERA_STALL_S", 0.5)
    monkeypatch.setattr(sources.cv2, "VideoCapture", lambda index: UnpluggedCamera(frames=3))
    results = []
    with pytest.raises(EdgestackError, match="camera 0 delivered no frame for 0.5 s after 3 frames"):
        for result in inspector.run(0, tmp_path / "run"):
            results.append(result)
    assert len(results) == 3 and [r["id"] for r in records(tmp_path / "run")] == [r["id"] for r in results]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["items"] == 3


def test_a_camera_that_comes_back_on_reopen_goes_on(inspector, monkeypatch):
    camera = UnpluggedCamera(frames=2, back_after_reopens=1)
    monkeypatch.setattr(sources.cv2, "VideoCapture", lambda index: camera)
    assert len(list(inspector.run(0, max_frames=5))) == 5 and camera.reopens == 1


def test_a_camera_rerun_into_the_same_folder_inspects_its_new_frames(inspector, tmp_path, monkeypatch):
    monkeypatch.setattr(sources.cv2, "VideoCapture", lambda index: UnpluggedCamera(frames=10))
    first = list(inspector.run(0, tmp_path / "run", max_frames=2))
    second = list(inspector.run(0, tmp_path / "run", max_frames=2))
    assert len(second) == 2 and {r["id"] for r in first}.isdisjoint(r["id"] for r in second)
    assert len(records(tmp_path / "run")) == 4


def png_header_only(width, height):
    """A PNG whose header claims width x height; the pixel data is a stub (never decoded)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def encoded(image):
    return cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes()


@pytest.fixture(scope="module")
def client(inspector):
    from fastapi.testclient import TestClient

    from edgestack.runtime.service import create_app

    return TestClient(create_app(inspector, token="s3cret", max_bytes=2_000_000, max_pixels=4_000_000))


def test_service_verdicts_auth_limits_and_metrics(client):
    image = encoded(synthetic_images(1, 256, seed=9)[0].image)
    auth = {"Authorization": "Bearer s3cret"}
    denied = client.post("/v1/inspect", content=image)
    assert denied.status_code == 401 and denied.headers["www-authenticate"] == "Bearer"
    assert client.post("/v1/inspect", content=image, headers={"Authorization": "Bearer nope"}).status_code == 401
    ok = client.post("/v1/inspect?id=part-1", content=image, headers=auth)
    assert ok.status_code == 200
    body = ok.json()
    assert body["id"] == "part-1" and body["status"] in ("OK", "NG") and isinstance(body["defects"], list)
    # The scheme is case-insensitive (RFC 7235): some HTTP libraries of PLCs and MES send "bearer".
    assert client.post("/v1/inspect", content=image, headers={"Authorization": "bearer s3cret"}).status_code == 200
    form = client.post("/v1/inspect", files={"file": ("part.png", image, "image/png")}, headers=auth)  # curl -F
    assert form.status_code == 415 and "not a multipart form" in form.json()["error"]
    assert client.post("/v1/inspect", content=b"x" * 2_000_001, headers=auth).status_code == 413
    assert client.post(f"/v1/inspect?id={'p' * 201}", content=image, headers=auth).status_code == 400  # file name
    bomb = client.post("/v1/inspect", content=png_header_only(100_000, 100_000), headers=auth)
    assert bomb.status_code == 413 and "limit" in bomb.json()["error"]
    corrupt = client.post("/v1/inspect", content=b"GIF89a-garbage", headers=auth)
    assert corrupt.status_code == 400
    gray = client.post("/v1/inspect", content=cv2.imencode(".png", plain_frame(64, 64)[..., 0])[1].tobytes(),
                       headers=auth)  # as `inspect` without --gray-to-rgb
    assert gray.status_code == 400 and "grayscale" in gray.json()["error"]
    tiny = client.post("/v1/inspect", content=encoded(plain_frame(8, 8)), headers=auth)
    assert tiny.status_code == 422 and "at least" in tiny.json()["error"]
    assert client.get("/health").json()["status"] == "ok"
    metrics = client.get("/metrics").text
    assert 'edgestack_requests_total{outcome="unauthorized"} 2' in metrics
    assert 'edgestack_requests_total{outcome="too_large"} 2' in metrics


def test_service_refuses_beyond_max_pending_and_never_answers_unrecorded(inspector, tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    from edgestack.runtime.service import create_app

    entered, release = threading.Event(), threading.Event()
    inspect = inspector.inspect

    def held(image, item_id):  # the first request stays in the engine until released
        if item_id == "boom":
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        entered.set()
        release.wait(60)
        return inspect(image, item_id)

    monkeypatch.setattr(inspector, "inspect", held)
    image = encoded(synthetic_images(1, 128, seed=2)[0].image)
    run = tmp_path / "run"
    with TestClient(create_app(inspector, max_pending=1, run_dir=run, summary_every_s=0)) as client:
        first = {}
        worker = threading.Thread(target=lambda: first.update(r=client.post("/v1/inspect?id=a", content=image)))
        worker.start()
        assert entered.wait(60)
        busy = client.post("/v1/inspect?id=b", content=image)
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1" and "limit 1" in busy.json()["error"]
        assert "edgestack_requests_in_progress 1" in client.get("/metrics").text
        release.set()
        worker.join(60)
        assert first["r"].status_code == 200
        for _ in range(600):  # kept current while the service runs, by a thread of its own
            live = json.loads((run / "summary.json").read_text()) if (run / "summary.json").exists() else {}
            if live.get("items") == 2:
                break
            time.sleep(0.05)
        assert live["items"] == 2 and live["counts"]["ERROR"] == 1  # a, and b refused as busy
        assert client.post("/v1/inspect?id=b", content=image).status_code == 200  # the retry goes through
        boom = client.post("/v1/inspect?id=boom", content=image)
        assert boom.status_code == 500 and boom.json()["error"].startswith("RuntimeError: CUDA error")

        def full_disk(fd):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "fsync", full_disk)
        unrecorded = client.post("/v1/inspect?id=c", content=image)
        assert unrecorded.status_code == 500 and "could not record the result of c" in unrecorded.json()["error"]
        health = client.get("/health")  # the line's monitoring sees it, not only the part's answer
        assert health.status_code == 503 and "could not record the result of c" in health.json()["error"]
        assert client.get("/health").status_code == 503  # looked at again: still full
        monkeypatch.undo()  # the disk has room again: the summary can be written at shutdown
        # Healthy again at once, before any verdict: a probe in front would otherwise keep it out of rotation.
        assert client.get("/health").json()["status"] == "ok"
        assert client.post("/v1/inspect?id=d", content=image).status_code == 200
    assert [(r["id"], r["status"]) for r in records(run)][:2] == [("b", "ERROR"), ("a", first["r"].json()["status"])]
    assert "c" not in {r["id"] for r in records(run)}  # answered 500 "not recorded": never a verdict on disk later
    errors = json.loads((run / "summary.json").read_text())["errors"]  # b's retry is its result
    assert [e["id"] for e in errors] == ["boom"]


def test_service_inspects_two_images_at_a_time_however_many_are_pending(inspector, monkeypatch):
    # Each inspection holds tens of bytes per pixel; with all --max-pending requests inspecting at once, a burst
    # of large images needed max_pending times that. The rest wait as their encoded bodies.
    from fastapi.testclient import TestClient

    from edgestack.runtime.service import IMAGES_AT_ONCE, create_app

    inspect, lock = inspector.inspect, threading.Lock()
    running, most = [0], [0]

    def counted(image, item_id):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.2)  # long enough for the other requests to arrive meanwhile
        try:
            return inspect(image, item_id)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(inspector, "inspect", counted)
    image = encoded(synthetic_images(1, 128, seed=4)[0].image)
    app = create_app(inspector, max_pending=8)
    for session in range(2):  # the second served under another event loop (an embedder restarting the app)
        answers = []
        with TestClient(app) as client:
            def post_one(item_id, client=client, answers=answers):
                answers.append(client.post(f"/v1/inspect?id={item_id}", content=image).status_code)

            posts = [threading.Thread(target=post_one, args=(f"s{session}-{i}",)) for i in range(6)]
            for post in posts:
                post.start()
            for post in posts:
                post.join(60)
        assert answers == [200] * 6 and most[0] == IMAGES_AT_ONCE == 2


def test_an_engine_failure_on_one_item_is_its_error_and_the_run_goes_on(inspector, tmp_path, monkeypatch, caplog):
    write_folder(tmp_path / "in", 3)
    probability, calls = inspector.probability, []

    def fails_once(rgb):
        calls.append(rgb)
        if len(calls) == 2:
            raise MemoryError("cannot allocate 9 GiB for the tiles")
        return probability(rgb)

    monkeypatch.setattr(inspector, "probability", fails_once)
    results = {r["id"]: r for r in inspector.run(tmp_path / "in", tmp_path / "run")}
    assert results["part001.png"]["error"] == "MemoryError: cannot allocate 9 GiB for the tiles"
    assert results["part000.png"]["status"] != "ERROR" and results["part002.png"]["status"] != "ERROR"
    assert "inspecting part001.png failed" in caplog.text  # with its traceback, for a bug report


def test_an_engine_output_with_nan_is_that_items_error_not_an_ok(inspector, tmp_path, monkeypatch):
    write_folder(tmp_path / "in", 3)
    probability, calls = inspector.probability, []

    def overflows_once(rgb):  # as an fp16 plan that overflows on one frame
        calls.append(rgb)
        prob = probability(rgb)
        if len(calls) == 2:
            prob = np.full_like(prob, np.nan)
        return prob

    monkeypatch.setattr(inspector, "probability", overflows_once)
    results = {r["id"]: r for r in inspector.run(tmp_path / "in", tmp_path / "run")}
    assert results["part001.png"]["status"] == "ERROR" and "NaN/Inf" in results["part001.png"]["error"]
    assert results["part000.png"]["status"] != "ERROR" and results["part002.png"]["status"] != "ERROR"


def test_service_answers_a_nan_map_as_an_engine_error(client, inspector, monkeypatch):
    probability = inspector.probability
    monkeypatch.setattr(inspector, "probability", lambda rgb: np.full_like(probability(rgb), np.nan))
    image = encoded(synthetic_images(1, 256, seed=9)[0].image)
    answer = client.post("/v1/inspect?id=nan-1", content=image, headers={"Authorization": "Bearer s3cret"})
    assert answer.status_code == 500 and "NaN/Inf" in answer.json()["error"]  # not a 422: the image was fine
    assert 'edgestack_requests_total{outcome="engine_error"}' in client.get("/metrics").text


def test_a_full_disk_stops_the_run_with_a_clear_error_and_a_rerun_completes_it(inspector, tmp_path, monkeypatch):
    write_folder(tmp_path / "in", 3)
    fsyncs = []
    fsync = os.fsync

    def full_on_second(fd):  # the second result's fsync
        if os.readlink(f"/proc/self/fd/{fd}").endswith("results.jsonl"):
            fsyncs.append(fd)
            if len(fsyncs) == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        fsync(fd)

    tables, write_csv = [], RunWriter._write_csv

    def table_not_written(self, records):  # the disk is still full when the run is closed
        tables.append(len(records))
        if len(tables) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        write_csv(self, records)

    monkeypatch.setattr(os, "fsync", full_on_second)
    monkeypatch.setattr(RunWriter, "_write_csv", table_not_written)
    # The error that names the unrecorded result is the one raised, not the table's that followed it.
    with pytest.raises(EdgestackError, match="could not record the result of part001.png .*No space left on device"):
        list(inspector.run(tmp_path / "in", tmp_path / "run"))
    # The result whose recording failed is not on disk: it was reported unrecorded, so it is inspected again
    # (its line sat in the file's buffer, and reached the file with the next record or at close).
    assert [r["id"] for r in records(tmp_path / "run")] == ["part000.png"]
    monkeypatch.undo()
    again = list(inspector.run(tmp_path / "in", tmp_path / "run"))
    assert [r["id"] for r in again] == ["part001.png", "part002.png"]
    assert [r["id"] for r in records(tmp_path / "run")] == ["part000.png", "part001.png", "part002.png"]
    # A write the disk takes only part of (full mid-line) leaves no fragment for the next record to join.
    writes, write = [], os.write

    def full_mid_line(fd, data):
        writes.append(fd)
        if len(writes) == 1:
            write(fd, bytes(data[:10]))
            raise OSError(errno.ENOSPC, "No space left on device")
        return write(fd, data)

    monkeypatch.setattr(os, "write", full_mid_line)
    writer = RunWriter(tmp_path / "run", "none", inspector.setup())
    with pytest.raises(EdgestackError, match="could not record the result of torn"):
        writer.write(again[0] | {"id": "torn"}, None, None)
    writer.write(again[0] | {"id": "whole"}, None, None)
    writer.finish()
    assert [r["id"] for r in records(tmp_path / "run")][-2:] == ["part002.png", "whole"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_port_in_use_is_a_one_line_error(bundle, tmp_path, capsys):
    from edgestack.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--bundle", str(bundle), "--port", str(port), "--backend", "onnxruntime",
                     "--out", str(tmp_path / "run")]) == 2
    assert f"could not listen on 127.0.0.1:{port} (in use by another program" in capsys.readouterr().err
    RunWriter(tmp_path / "run", "ng", {}).finish()  # the run folder was released


def test_the_service_lets_go_of_connections_whose_client_went_silent():
    # A client that lost power or its cable mid-connection never closes it: the service held each one for ever.
    from edgestack.runtime.service import listening_sockets

    port = free_port()
    listeners = listening_sockets("localhost", port)
    try:  # every address localhost names is served (one socket for ::1 only refused clients of 127.0.0.1)
        addresses = {info[4][:2] for info in socket.getaddrinfo("localhost", port, type=socket.SOCK_STREAM)}
        assert {listener.getsockname()[:2] for listener in listeners} == addresses
        for listener in listeners:
            with socket.create_connection(listener.getsockname()[:2]):
                accepted, _ = listener.accept()
                with accepted:  # as uvicorn accepts them: probed after a minute of silence
                    assert accepted.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
                    if hasattr(socket, "TCP_KEEPIDLE"):
                        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 60
    finally:
        for listener in listeners:
            listener.close()
    with pytest.raises(EdgestackError, match=r"could not listen on 192.0.2.1:8000 \(.*\); choose another --port"):
        listening_sockets("192.0.2.1", 8000)  # not an address of this machine


def test_the_service_takes_the_addresses_it_can_and_one_port_for_all(monkeypatch):
    # A host naming an address this machine cannot take (::1 in a container without IPv6) stopped the service;
    # --port 0 gave each address a port of its own.
    from edgestack.runtime.service import listening_sockets

    def names(*addresses):
        return lambda host, port, **kwargs: [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in addresses]

    monkeypatch.setattr(socket, "getaddrinfo", names("127.0.0.1", "192.0.2.1"))
    listeners = listening_sockets("line-pc", 0)
    assert [listener.getsockname()[0] for listener in listeners] == ["127.0.0.1"]
    listeners[0].close()
    monkeypatch.setattr(socket, "getaddrinfo", names("127.0.0.1", "127.0.0.2"))
    listeners = listening_sockets("line-pc", 0)
    try:
        assert len({listener.getsockname()[1] for listener in listeners}) == 1 and len(listeners) == 2
    finally:
        for listener in listeners:
            listener.close()


def test_service_under_concurrent_clients(bundle, tmp_path):
    port = free_port()
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "edgestack", "serve", "--bundle", str(bundle), "--port",
                             str(port), "--backend", "onnxruntime", "--out", str(run), "--body-timeout", "2",
                             "--gray-to-rgb"],
                            stderr=subprocess.PIPE, text=True)
    stalled = []
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        images = [encoded(s.image) for s in synthetic_images(4, 128, seed=3)]
        failures, statuses = [], []

        def client(worker):
            with httpx.Client(timeout=60) as http:
                for i in range(5):
                    r = http.post(f"{url}/v1/inspect?id=w{worker}-{i}", content=images[(worker + i) % 4])
                    (statuses if r.status_code == 200 else failures).append(r.json().get("id", r.text))

        threads = [threading.Thread(target=client, args=(w,)) for w in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert failures == [] and sorted(statuses) == sorted(f"w{w}-{i}" for w in range(8) for i in range(5))
        assert httpx.post(f"{url}/v1/inspect?id=torn", content=images[0][:100]).status_code == 400
        gray = cv2.imencode(".png", plain_frame(128, 128)[..., 0])[1].tobytes()
        assert httpx.post(f"{url}/v1/inspect?id=gray", content=gray, timeout=60).status_code == 200  # --gray-to-rgb
        unnamed = httpx.post(f"{url}/v1/inspect", content=images[1], timeout=60).json()["id"]
        # Every answered request is already on disk, ERROR for the refused image; unnamed ones get unique ids.
        logged = {r["id"]: r["status"] for r in records(run)}
        assert sorted(logged) == sorted(statuses + ["torn", "gray", unnamed]) and logged["torn"] == "ERROR"
        assert unnamed.startswith("request-")
        # A client that stalls mid-upload (a camera PC losing power) gets 408 and frees its slot.
        for item in ("stalled", "hanging"):
            stalled.append(socket.create_connection(("127.0.0.1", port)))
            stalled[-1].sendall(f"POST /v1/inspect?id={item} HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
                                "\x89PNG".encode())
        stalled[0].settimeout(30)
        assert stalled[0].recv(100).startswith(b"HTTP/1.1 408")
    finally:
        proc.send_signal(signal.SIGTERM)  # with the second upload still hanging: the stop is not held for ever
        assert proc.wait(timeout=30) == 0  # a clean stop (130 made systemd count every stop as a failure)
        for connection in stalled:
            connection.close()
    summary = json.loads((run / "summary.json").read_text())  # written when the service stopped
    assert summary["items"] == 45 and summary["counts"]["ERROR"] == 3


def test_awkward_file_names_each_get_a_result_and_their_own_overlay(inspector, tmp_path):
    source = tmp_path / "in"
    write_folder(source, 2)
    os.rename(source / "part000.png", os.path.join(os.fsencode(source), b"bad\xff.png"))  # not UTF-8
    long_folder = source / ("a" * 200)
    long_folder.mkdir()
    (source / "part001.png").rename(long_folder / ("b" * 200 + ".png"))  # an overlay name over 255 bytes
    image = encoded(synthetic_images(1, 128, seed=3)[0].image)
    for name in ("same.png", "same.bmp", "sub__x.png"):
        (source / name).write_bytes(image)
    (source / "sub").mkdir()
    (source / "sub" / "x.png").write_bytes(image)
    (source / "notes\udcff.txt".encode("utf-8", "surrogateescape").decode("utf-8", "surrogateescape")).write_text("")
    run = tmp_path / "run"
    results = list(inspector.run(source, run, overlay="all"))
    assert len(results) == 6 and all(r["status"] in ("OK", "NG") for r in results)
    overlays = [run / r["overlay"] for r in results]
    assert len(set(overlays)) == 6 and all(o.is_file() for o in overlays)  # none overwrote another
    assert len(list((run / "overlays").iterdir())) == 6
    rows = list(csv.DictReader((run / "results.csv").open(encoding="utf-8")))
    assert "bad\\udcff.png" in [row["id"] for row in rows]  # written as an escape, not a crash
    assert "notes\\udcff.txt: not an image file" in (run / "skipped.txt").read_text()
    assert list(inspector.run(source, run, overlay="all")) == []  # and the folder resumes


def test_an_image_replaced_under_an_inspected_name_is_reported_on_a_rerun(inspector, tmp_path):
    source, run = tmp_path / "in", tmp_path / "run"
    write_folder(source, 2)
    first = {r["id"]: r for r in inspector.run(source, run)}
    assert first["part000.png"]["file"]["size"] == (source / "part000.png").stat().st_size
    (source / "part000.png").write_bytes(encoded(synthetic_images(1, 256, seed=77)[0].image))  # another part
    assert list(inspector.run(source, run)) == []  # its name has a verdict: not inspected again, but not silently
    assert (run / "skipped.txt").read_text() == (
        f"{source / 'part000.png'}: changed since its verdict was recorded (another file under that name?), so it was "
        "NOT inspected; a line must write each image or video under a new file name\n")
    # Said where the run is read, not only in skipped.txt: a day's images under reused names all went unjudged.
    assert "1 line(s) added to skipped.txt this session" in (run / "summary.md").read_text()
    assert json.loads((run / "summary.json").read_text())["this_session"]["skipped_txt_lines"] == 1


def test_glob_ids_do_not_depend_on_what_else_matches(inspector, tmp_path):
    write_folder(tmp_path / "in" / "a", 1)
    pattern = f"{tmp_path}/in/*/*.png"
    assert [r["id"] for r in inspector.run(pattern, tmp_path / "run")] == ["a/part000.png"]
    write_folder(tmp_path / "in" / "b", 1)
    assert [r["id"] for r in inspector.run(pattern, tmp_path / "run")] == ["b/part000.png"]  # a/ is not redone


def test_a_symlinked_folder_is_reported_not_walked(inspector, tmp_path):
    write_folder(tmp_path / "in", 1)
    write_folder(tmp_path / "elsewhere", 1)
    (tmp_path / "in" / "linked").symlink_to(tmp_path / "elsewhere")
    assert [r["id"] for r in inspector.run(tmp_path / "in", tmp_path / "run")] == ["part000.png"]
    assert (tmp_path / "run" / "skipped.txt").read_text() == (
        f"{tmp_path / 'in' / 'linked'}: a symlinked folder, not followed; give its own path as the source\n")
    (tmp_path / "in" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    watched = list(inspector.run(tmp_path / "in", tmp_path / "watch", watch=sources.Watch(0.1, idle_exit_s=1.0)))
    assert [r["id"] for r in watched] == ["part000.png"]
    assert (tmp_path / "watch" / "skipped.txt").read_text().splitlines() == [  # each once, in a hot folder too
        f"{tmp_path / 'in' / 'linked'}: a symlinked folder, not followed; give its own path as the source",
        f"{tmp_path / 'in' / 'gone.png'}: a symlink to a missing file, not inspected"]


def test_a_part_is_judged_once_and_a_retry_learns_its_verdict(inspector, tmp_path, monkeypatch):
    """A second upload under a judged id (a PLC's retry, a second camera, ids reused after a restart) was judged
    again, and its verdict replaced the first in results.csv and the summary: an NG became an OK."""
    from fastapi.testclient import TestClient

    from edgestack.runtime.service import create_app

    run = tmp_path / "run"
    probability = inspector.probability
    monkeypatch.setattr(inspector, "probability", lambda rgb: np.full_like(probability(rgb), 0.99))  # NG
    with TestClient(create_app(inspector, run_dir=run)) as client:
        first = client.post("/v1/inspect?id=P1", content=encoded(synthetic_images(1, 128, seed=2)[0].image))
        assert first.status_code == 200 and first.json()["status"] == "NG"
        monkeypatch.undo()  # the second frame would be judged OK
        again = client.post("/v1/inspect?id=P1", content=encoded(make_sample(100, 100).image))
        assert again.status_code == 409 and "has a verdict already (NG)" in again.json()["error"]
        assert again.json()["recorded"]["status"] == "NG"
        assert client.post("/v1/inspect?id=P1", content=b"garbage").status_code == 409
        assert client.post("/v1/inspect?id=P2", content=b"garbage").status_code == 400
        assert client.post("/v1/inspect?id=P2", content=encoded(make_sample(100, 100).image)).status_code == 200
        assert 'edgestack_requests_total{outcome="duplicate_id"} 2' in client.get("/metrics").text
    assert [(r["id"], r["status"]) for r in records(run)] == [("P1", "NG"), ("P2", "ERROR"), ("P2", "OK")]
    with TestClient(create_app(inspector, run_dir=run)) as client:  # restarted on the same run folder
        assert client.post("/v1/inspect?id=P1", content=encoded(make_sample(100, 100).image)).status_code == 409
    assert json.loads((run / "summary.json").read_text())["counts"] == {"OK": 1, "NG": 1, "ERROR": 0}


def test_a_stopping_service_answers_the_waiting_at_once_and_a_departed_client_gets_no_verdict(inspector, tmp_path,
                                                                                            monkeypatch):
    """On stop, requests still waiting for the engine were cut off by the server's grace period with a bare 500
    and no record; a client that left (its deadline passed) had a verdict recorded that the line never heard."""
    from fastapi.testclient import TestClient
    from starlette.requests import Request

    from edgestack.runtime.service import create_app

    run, stopping = tmp_path / "run", []
    image = encoded(synthetic_images(1, 128, seed=2)[0].image)
    app = create_app(inspector, run_dir=run, stopping=lambda: bool(stopping))
    with TestClient(app) as client:
        assert client.post("/v1/inspect?id=early", content=image).status_code == 200
        stopping.append(True)
        late = client.post("/v1/inspect?id=late", content=image)
        assert late.status_code == 503 and "stopping" in late.json()["error"] and late.headers["retry-after"]
        stopping.clear()
        is_disconnected = Request.is_disconnected
        calls = []

        async def leaves_during_inspection(request):  # connected before the inspection, gone after it
            calls.append(request)
            return len(calls) > 1 or await is_disconnected(request)

        monkeypatch.setattr(Request, "is_disconnected", leaves_during_inspection)
        left = client.post("/v1/inspect?id=left", content=image)
        assert left.status_code == 400 and "disconnected before its verdict was sent" in left.json()["error"]
    assert {r["id"]: r["status"] for r in records(run)} == {"early": records(run)[0]["status"], "late": "ERROR",
                                                            "left": "ERROR"}
    # Served again (an embedder restarting it): the run folder goes on, as the first session left it.
    monkeypatch.undo()
    with TestClient(app) as client:
        assert client.post("/v1/inspect?id=again", content=image).status_code == 200
        assert client.post("/v1/inspect?id=early", content=image).status_code == 409
    assert [r["id"] for r in records(run)] == ["early", "late", "left", "again"]


def test_a_full_disk_under_the_overlays_costs_the_picture_not_the_verdict(inspector, tmp_path, monkeypatch):
    """The overlay failed, then so did its note in skipped.txt, and that OSError escaped: the service answered a
    bare 500 for every part from then on, with nothing counted."""
    from edgestack.runtime import images

    class FullDisk:
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

        flush = close = lambda self: None

    def no_space(path, image):
        raise EdgestackError(f"cannot write {path}: No space left on device; choose a writable folder with space")

    monkeypatch.setattr(images, "write_image", no_space)
    writer = RunWriter(tmp_path / "run", "all", inspector.setup())
    writer.notes = FullDisk()
    image = synthetic_images(1, 128, seed=2)[0].image
    result, prob = inspector.inspect(image, "P1")
    writer.write(result, image, prob)
    writer.finish()
    assert [r["id"] for r in records(tmp_path / "run")] == ["P1"] and "overlay" not in result


def test_a_retry_while_the_verdict_is_being_made_waits_for_it_and_does_not_replace_it(inspector, tmp_path,
                                                                                     monkeypatch):
    from fastapi.testclient import TestClient

    from edgestack.runtime.inspect import RunWriter
    from edgestack.runtime.service import create_app

    writing, release = threading.Event(), threading.Event()
    write = RunWriter.write

    def slow_verdict(self, result, image, prob):  # a verdict whose overlay and fsync take a while
        if result["status"] != "ERROR":
            writing.set()
            release.wait(30)
        write(self, result, image, prob)

    monkeypatch.setattr(RunWriter, "write", slow_verdict)
    run, answers = tmp_path / "run", {}
    image = encoded(synthetic_images(1, 128, seed=2)[0].image)
    with TestClient(create_app(inspector, run_dir=run)) as client:
        def post(name, body):
            answers[name] = client.post("/v1/inspect?id=P1", content=body)

        verdict = threading.Thread(target=post, args=("verdict", image))
        verdict.start()
        assert writing.wait(60)
        retry = threading.Thread(target=post, args=("retry", image))
        retry.start()
        time.sleep(0.5)  # the retry waits while the verdict is being written
        assert "retry" not in answers
        release.set()
        verdict.join()
        retry.join()
    assert answers["verdict"].status_code == 200 and answers["retry"].status_code == 409
    assert answers["retry"].json()["recorded"]["status"] == answers["verdict"].json()["status"]  # the PLC learns it
    assert [(r["id"], r["status"]) for r in records(run)] == [("P1", answers["verdict"].json()["status"])]


def test_a_retry_waiting_on_a_request_that_got_no_verdict_is_judged(inspector, tmp_path, monkeypatch):
    # A PLC timed out and sent again: its first request ended without a verdict (here: the engine failed on it),
    # and the retry had been answered "being judged": the part ended with no verdict at all.
    from fastapi.testclient import TestClient

    from edgestack.runtime.service import create_app

    entered, release, calls = threading.Event(), threading.Event(), []
    inspect = inspector.inspect

    def first_fails(image, item_id):
        calls.append(item_id)
        if len(calls) == 1:
            entered.set()
            release.wait(30)
            raise EdgestackError("the engine gave up on this frame")
        return inspect(image, item_id)

    monkeypatch.setattr(inspector, "inspect", first_fails)
    run, answers = tmp_path / "run", {}
    image = encoded(synthetic_images(1, 128, seed=2)[0].image)
    with TestClient(create_app(inspector, run_dir=run)) as client:
        def post(name):
            answers[name] = client.post("/v1/inspect?id=P1", content=image)

        first = threading.Thread(target=post, args=("first",))
        first.start()
        assert entered.wait(60)
        retry = threading.Thread(target=post, args=("retry",))
        retry.start()
        time.sleep(0.5)
        release.set()
        first.join()
        retry.join()
    assert answers["first"].status_code == 422 and answers["retry"].status_code == 200
    verdict = answers["retry"].json()["status"]
    assert [(r["id"], r["status"]) for r in records(run)] == [("P1", "ERROR"), ("P1", verdict)]


def test_service_honours_a_pixel_limit_above_pillows_own(inspector):
    from fastapi.testclient import TestClient

    from edgestack.runtime.service import create_app

    header = png_header_only(13500, 13500)  # 182 M pixels: over twice Pillow's default bomb limit
    with TestClient(create_app(inspector, max_pixels=200_000_000)) as client:
        answer = client.post("/v1/inspect", content=header)
    assert answer.status_code == 400 and "could not be decoded" in answer.json()["error"]  # read, not refused
    with pytest.raises(EdgestackError, match="must be at least 1"):
        create_app(inspector, max_bytes=0)


def test_a_good_part_on_a_plain_backdrop_is_ok(inspector):
    """Weights trained on parts that fill the frame false-rejected this (README, Bringing up a line)."""
    part = make_sample(100, 100).image  # defect-free, held out
    assert inspector.inspect(part)[0]["status"] == "OK"
    for size in (352, 512):  # one tile and a border, and several tiles some of which are mostly backdrop
        frame = np.empty((size, size, 3), np.uint8)
        frame[:] = part.reshape(-1, 3).mean(0).astype(np.uint8)
        at = (size - 256) // 2
        frame[at:at + 256, at:at + 256] = part
        assert inspector.inspect(frame)[0]["status"] == "OK", size


def test_a_watched_folder_that_disappears_ends_the_run_with_an_error(inspector, tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "WATCH_POLL_S", 0.05)
    hot = tmp_path / "hot"
    write_folder(hot, 1, size=128)
    results = []
    with pytest.raises(EdgestackError, match="watched folder .* is gone"):
        for result in inspector.run(hot, tmp_path / "run", watch=sources.Watch(settle_s=0.1, idle_exit_s=30)):
            results.append(result)
            shutil.rmtree(hot)  # an unmounted share looks like this: it would have looked idle until the exit
    assert [r["id"] for r in results] == ["part000.png"] and len(records(tmp_path / "run")) == 1
