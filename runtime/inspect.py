"""The inspection pipeline: sources -> tiles -> batches -> engine -> probability map -> defects -> verdict.

    inspector = Inspector("artifacts/defectseg-s", load_rules("rules.json"))
    for result in inspector.run("line3/frames/", run_dir="runs/line3"):
        ...

Images are decoded in a background thread into a bounded queue while the engine runs. Every item gives
exactly one result: OK, NG (with the rule that fired) or ERROR (with the reason). With a run folder,
each result is appended and flushed to results.jsonl before the next item, and a rerun resumes: items
with a verdict are skipped, ERROR items are tried again (the last record of an item is its result).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing
from datetime import datetime, timezone
from numbers import Integral
from pathlib import Path
from typing import Any

import numpy as np

from edgestack import bundle as bundle_format
from edgestack.errors import EdgestackError
from edgestack.runtime.defects import Rules, assess, check_not_blank, load_rules
from edgestack.runtime.engine import Engine, load, require_task
from edgestack.runtime.images import check_bit_depth, check_min_size, read_image, to_tensor
from edgestack.runtime.sources import Item, Watch, file_signature, is_camera, open_source, source_root
from edgestack.runtime.tiling import run_tiled

log = logging.getLogger(__name__)

SUMMARY_EVERY_S = 60.0  # how often a watch or the service rewrites its summary while it runs
CSV_FIELDS = ["id", "status", "rule", "defects", "max_score", "width", "height", "latency_ms", "error", "time"]
_END = object()
STOP_WAIT_S = 1.0  # how long a stopped run waits for its reader to finish the item it is reading
# Text files a person reads (results.csv, skipped.txt, summary.md): UTF-8, and a file name that is not valid
# UTF-8 (its bytes kept as surrogates by Python) written as \udcff escapes rather than failing the run.
TEXT = {"encoding": "utf-8", "errors": "backslashreplace"}


def defect_engine(bundle: str | Path | Engine, backend: str) -> Engine:
    """The engine of a defect-probability bundle (loaded on `backend` unless given); other models are refused."""
    engine = bundle if isinstance(bundle, Engine) else load(bundle, backend=backend)
    require_task(engine, "defect_probability")
    return engine


class Inspector:
    """A defect-probability bundle + rules. `run(source)` yields one result dict per item."""

    def __init__(
        self,
        bundle: str | Path | Engine,
        rules: Rules | str | Path | None = None,
        backend: str = "auto",
        batch: int = 4,
        overlap: int = 32,
        prefetch: int = 4,
        gray_to_rgb: bool = False,
        bit_depth: int | None = None,
    ):
        for name, value, least in (("batch", batch, 1), ("prefetch", prefetch, 1), ("overlap", overlap, 0)):
            if not isinstance(value, Integral) or isinstance(value, bool) or value < least:
                raise EdgestackError(f"{name} must be a whole number of at least {least}, got {value!r} (batch: "
                                     "tiles per engine call, prefetch: images decoded ahead, overlap: tile px)")
        batch, prefetch, overlap = int(batch), int(prefetch), int(overlap)  # numpy ints are not JSON (run.json)
        self.engine = defect_engine(bundle, backend)
        meta = self.engine.meta
        if isinstance(rules, (str, Path)):
            rules = load_rules(rules)
        elif rules is not None and not isinstance(rules, Rules):  # a dict failed at every item, {} judged by defaults
            raise EdgestackError(f"rules must be a rules file's path or Rules (load_rules reads a file), got "
                                 f"{type(rules).__name__}")
        self.rules = rules if rules is not None else Rules()
        self.output = meta["postprocess"]["output"]
        self.tile = tuple(meta["default_size"])
        self.multiple = max(meta["axes"].get("height", {}).get("multiple_of", 1),
                            meta["axes"].get("width", {}).get("multiple_of", 1))
        if not 0 <= overlap < min(self.tile) // 2:
            raise EdgestackError(f"tile overlap {overlap} px must be in 0..{min(self.tile) // 2 - 1} for this model's "
                                 f"{self.tile[0]}x{self.tile[1]} tiles")
        self.batch = min(batch, meta["axes"].get("batch", {}).get("max", batch))
        self.overlap = overlap
        self.prefetch = prefetch
        self.gray_to_rgb = gray_to_rgb
        check_bit_depth(bit_depth)
        self.bit_depth = bit_depth  # of 16-bit images whose camera uses fewer bits (read_image)
        self._lock = threading.Lock()  # one engine, many callers (service threads)

    def setup(self) -> dict[str, Any]:
        """What decides this inspector's verdicts, flat; a run folder keeps one (run.json), so that an audit can
        tell what judged each part. The backend is not in it: TensorRT and onnxruntime give the same verdicts
        within the bundle's parity, and `auto` may fall back from one to the other. An int8 model's verdicts are
        its own (its calibration's): when one judges (onnxruntime-int8, a plan built from it), its sha256 is."""
        meta = self.engine.meta
        backend = self.engine.backend.name
        int8 = backend == "onnxruntime-int8" or (
            backend == "tensorrt" and meta["tensorrt"]["source"] == bundle_format.INT8_ONNX)
        return {"model": meta["model"]["config"], "weights_sha256": meta["files"].get(bundle_format.WEIGHTS),
                "int8_sha256": meta["files"].get(bundle_format.INT8_ONNX) if int8 else None,
                "tile": list(self.tile), "overlap": self.overlap, "gray_to_rgb": self.gray_to_rgb,
                "bit_depth": self.bit_depth} | {f"rules.{key}": value for key, value in self.rules.as_dict().items()}

    def probability(self, rgb: np.ndarray) -> np.ndarray:
        """Full-resolution defect probability [H, W] for one RGB image."""
        chw = to_tensor(rgb, self.engine.meta["preprocess"])[0]

        def predict(tiles: np.ndarray) -> np.ndarray:
            with self._lock:
                return self.engine(tiles)[self.output]

        return run_tiled(chw, predict, self.tile, self.overlap, self.batch, self.multiple)

    def inspect(self, rgb: np.ndarray, item_id: str = "image") -> tuple[dict[str, Any], np.ndarray]:
        """(result, probability map) for one image: RGB uint8 HxWx3, or an array `read_image` takes (float 0..1,
        16-bit, RGBA; gray with gray_to_rgb), checked the same way as in `run`."""
        started = time.perf_counter()
        rgb = read_image(rgb, self.gray_to_rgb, self.bit_depth)
        check_min_size(rgb, self.engine.meta["preprocess"], item_id)  # a 1x1 image is too small, not blank
        check_not_blank(rgb, self.rules, item_id)
        prob = self.probability(rgb)
        found = assess(prob, self.rules)
        return {
            "id": item_id,
            "status": found.status,
            "rule": found.rule,
            "defects": found.defects,
            "defect_count": found.counted,
            "components": found.components,
            "max_score": float(prob.max()),
            "width": int(rgb.shape[1]),
            "height": int(rgb.shape[0]),
            "latency_ms": (time.perf_counter() - started) * 1e3,
            "time": utc_now(),
        }, prob

    def run(
        self,
        source: str | Path | int | Iterable[np.ndarray],
        run_dir: str | Path | None = None,
        overlay: str = "ng",
        max_frames: int | None = None,
        watch: Watch | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Inspect every item of `source`; with `run_dir`, record results crash-safely and resume. With `watch`,
        keep inspecting images as they arrive in the `source` folder (see sources.Watch)."""
        if isinstance(run_dir, str) and not run_dir:  # an unset variable in a script: nothing would be recorded
            raise EdgestackError("the run folder is an empty path; give a folder (or None for no run folder)")
        if run_dir and isinstance(source, (str, Path)) and not Path(source).is_file() \
                and not is_camera(source):  # a folder or a glob
            fixed = source_root(source)
            root, run = fixed.resolve(), Path(run_dir).resolve()
            # A folder is walked whole; a glob without ** matches files at its own depth only (`*.png` never reaches
            # runs/line3/overlays/).
            pattern = Path(source).parts[len(fixed.parts):]
            reaches = Path(source).is_dir() or "**" in pattern or len(pattern) > len(run.parts) - len(root.parts)
            if root in [run, *run.parents] and reaches:
                raise EdgestackError(f"run folder {run_dir} is inside the source {source}: its overlays would be "
                                     "inspected as new images; put --out somewhere else")
        writer = RunWriter(Path(run_dir), overlay, self.setup(), SUMMARY_EVERY_S if watch else None) \
            if run_dir else None
        note = writer.note if writer else log.warning
        errors: set[str] = set()  # ids whose last result this run is an ERROR: a watch may hand them out again
        done = writer.done if writer else {}  # ids with a verdict (the writer adds this run's as it records them)

        def failed(item_id: str) -> bool | None:
            """True: its result is an ERROR; False: it has a verdict; None: it has none yet (still queued)."""
            return True if item_id in errors else False if item_id in done else None

        try:
            items = open_source(source, self.gray_to_rgb, max_frames, self.bit_depth, watch, note, failed=failed)
            with closing(self._prefetched(items, done, note)) as decoded:  # the reader stops before the writer
                for item, image, error in decoded:                         # closes
                    if error is None:
                        try:
                            result, prob = self.inspect(image, item.id)
                        except EdgestackError as exc:
                            result, prob = error_result(item.id, str(exc)), None
                        except Exception as exc:  # the engine failing on one item (memory, a runtime error)
                            log.exception("inspecting %s failed", item.id)  # the traceback, for a bug report
                            result, prob = error_result(item.id, f"{exc.__class__.__name__}: {exc}"), None
                    else:
                        result, prob = error_result(item.id, error), None
                    if isinstance(item.signature, tuple):
                        result["file"] = {"size": item.signature[0], "mtime_ns": item.signature[1]}
                    elif item.signature is not None:
                        result["pixels_sha256"] = item.signature
                    if writer:
                        writer.write(result, image, prob)
                    if not item.unique:  # a camera's frames are never asked about again: not kept for days
                        (errors.add if result["status"] == "ERROR" else errors.discard)(item.id)
                        if not writer and result["status"] != "ERROR":
                            done[item.id] = item.signature
                    yield result
        except BaseException:
            if writer:
                try:
                    writer.finish()
                except EdgestackError as exc:  # the error that ended the run (a full disk: which result) stays
                    log.error("%s", exc)      # the one raised
            raise
        if writer:
            writer.finish()

    def _prefetched(self, items: Iterator[Item | None], done: dict[str, tuple[int, int] | str | None],
                    note: Callable[[str], None]):
        """Decode items in a background thread into a bounded queue: (item, image or None, error or None).
        A None from the source is a poll with nothing new: a chance to see the stop. An item `done` in an earlier
        run (id -> the version its verdict judged: a file's, an (id, image) pair's pixels) is skipped; another
        version is reported, never passed silently. An id seen twice in this run is reported and its second item
        not inspected."""
        slots: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        changed: set[Path] = set()  # files changed since their verdicts: none of their items (frames) is inspected
        # Taken here: the writer adds this run's verdicts to `done` while the reader runs ahead of it, so whether
        # a repeated id was seen there would depend on timing.
        earlier, this_run = dict(done), set()

        def offer(entry: Any) -> bool:
            """Queue `entry` for the writer, unless the run stops first (then nobody takes it)."""
            while not stop.is_set():
                try:
                    slots.put(entry, timeout=0.1)
                    return True
                except queue.Full:
                    pass
            return False

        def produce():
            try:
                for item in items:
                    if stop.is_set():
                        return
                    if item is None or item.path in changed:  # a poll with nothing new; the rest of a changed video
                        continue
                    if item.id in this_run and not item.retry:
                        note(f"{item.id}: a second item with this id in one run, so it was NOT inspected; give "
                             "each part its own id")
                        continue
                    if item.id in earlier and item.path is not None:
                        judged = earlier[item.id]
                        if judged is not None and file_signature(item.path) not in (None, judged):
                            changed.add(item.path)
                            note(f"{item.path}: changed since its verdict was recorded (another file under that "
                                 "name?), so it was NOT inspected; a line must write each image or video under a "
                                 "new file name")
                        continue
                    try:
                        entry = (item, item.load(), None)
                    except EdgestackError as exc:
                        entry = (item, None, str(exc))
                    except Exception as exc:  # a decoder crash on one file must not end the run
                        entry = (item, None, f"{exc.__class__.__name__}: {exc}")
                    if item.id in earlier:  # an (id, image) pair: its pixels tell a rerun from a new capture
                        if item.signature is not None and earlier[item.id] not in (None, item.signature):
                            note(f"{item.id}: has a verdict in this run folder for another image, so this one was "
                                 "NOT inspected; give each capture of a part its own id")
                        continue
                    if not item.unique:
                        this_run.add(item.id)
                    if not offer(entry):
                        return
            except BaseException as exc:  # the source itself failed (a camera stopped): the run ends with its error
                offer(exc if isinstance(exc, EdgestackError) else
                      EdgestackError(f"reading the source failed: {exc.__class__.__name__}: {exc}"))
            finally:
                offer(_END)

        thread = threading.Thread(target=produce, name="edgestack-reader", daemon=True)
        thread.start()
        try:
            while (entry := slots.get()) is not _END:
                if isinstance(entry, EdgestackError):
                    raise entry
                yield entry
        finally:
            # A reader waiting in the source (a camera's next trigger while the line is paused) stops at its next
            # item; the run does not wait for that.
            stop.set()
            thread.join(STOP_WAIT_S)


def utc_now() -> str:
    """When a result was made, to match it with the line's own logs (PLC, MES): ISO 8601 UTC, milliseconds."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def error_result(item_id: str, error: str) -> dict[str, Any]:
    return {"id": item_id, "status": "ERROR", "rule": None, "defects": [], "defect_count": 0, "components": 0,
            "max_score": None, "width": None, "height": None, "latency_ms": None, "error": error,
            "time": utc_now()}


class RunWriter:
    """results.jsonl (source of truth, fsync'd per item), results.csv, overlays/, summary, score histogram.

    With `summary_every_s` (a watch or the service, which run for days) the summary is also rewritten at most
    that often while the run goes on, from the few fields it needs of each item, not the whole records, in a
    thread of its own: over a long run's million items it takes seconds, which no verdict must wait for."""

    def __init__(self, run_dir: Path, overlay: str, setup: dict[str, Any], summary_every_s: float | None = None):
        if overlay not in ("ng", "all", "none"):
            raise EdgestackError(f"overlay must be ng, all or none, got {overlay!r}")
        self.dir = run_dir
        self.overlay = overlay
        self.jsonl = self.dir / "results.jsonl"
        self.finished = False
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.lock = _lock_run_folder(self.dir)
        except OSError as exc:
            raise EdgestackError(f"cannot use {self.dir} as a run folder: {exc.strerror or exc}; give --out a "
                                 "writable folder") from None
        try:
            records = self._recover()
            # An ERROR is no verdict (a file still being written, a share that came back): a rerun tries it again.
            # A verdict keeps the file version it judged, so a file changed since is reported on a rerun.
            self.done = {r["id"]: judged_version(r) for r in records if r["status"] != "ERROR"}
            self._keep_one_setup(setup, len(self.done))
            self.summary_every_s = summary_every_s
            self.summarised = {r["id"]: _summary_fields(r) for r in records}
            self.last_summary = time.monotonic()
            # The live summary's writer: started by a result when none runs, it writes at most every
            # summary_every_s while results keep coming, and ends once it has written them all.
            self.summary_thread: threading.Thread | None = None
            self.summary_lock = threading.Lock()  # the summarised records, between write() and that thread
            self.summary_stop = threading.Event()
            self.changes = self.summarised_changes = 0
            self.started = time.perf_counter()
            self.new = 0
            self.noted = 0  # lines this session added to skipped.txt: said in the summary, not only there
            self.notes_lock = threading.Lock()
            self._write_csv(records)
            self.jsonl_file = open(self.jsonl, "ab", buffering=0)  # unbuffered: a failed record is never flushed later
            self.csv_file = open(self.dir / "results.csv", "a", newline="", **TEXT)
            self.csv = csv.DictWriter(self.csv_file, CSV_FIELDS, extrasaction="ignore")
            self.notes = open(self.dir / "skipped.txt", "a", **TEXT)
        except OSError as exc:
            self.lock.close()
            raise EdgestackError(f"cannot use {self.dir} as a run folder: {exc.strerror or exc} "
                                 f"({exc.filename or self.dir}); give --out a writable folder") from None
        except EdgestackError:
            self.lock.close()
            raise

    def _keep_one_setup(self, setup: dict[str, Any], verdicts: int) -> None:
        """Refuse to add verdicts of another setup (bundle weights, rules, tiling) to a run folder that holds
        verdicts; a folder without any (ERRORs only, such as 16-bit images before --bit-depth) takes the new one."""
        run_file = self.dir / "run.json"
        setup = json.loads(json.dumps(setup))  # as it reads back: tuples are lists
        if verdicts and run_file.exists():
            try:
                earlier = json.loads(run_file.read_text(encoding="utf-8"))["setup"]
                if not isinstance(earlier, dict):
                    raise TypeError(earlier)
            except (ValueError, KeyError, TypeError):
                raise EdgestackError(f"{run_file} is not a run setup this version wrote; restore it, or give this "
                                     "run its own folder (--out)") from None
            changed = [f"{key} {earlier.get(key)} -> {setup.get(key)}"
                       for key in dict.fromkeys([*earlier, *setup]) if earlier.get(key) != setup.get(key)]
            if changed:
                raise EdgestackError(
                    f"run folder {self.dir} holds {verdicts} verdicts judged with another setup "
                    f"({'; '.join(changed)}); "
                    "resume it with the same bundle, rules and options, or give the new setup its own run folder "
                    "(--out), so every verdict in a folder has one known judge")
        bundle_format.write_atomic(run_file, (json.dumps({"setup": setup}, indent=2) + "\n").encode())

    def _recover(self) -> list[dict[str, Any]]:
        """Records of an earlier run; a line cut off by a crash is dropped (its item is redone)."""
        if not self.jsonl.exists():
            return []
        data = self.jsonl.read_bytes()
        good_end = data.rfind(b"\n") + 1
        if good_end < len(data):
            with open(self.jsonl, "r+b") as f:
                f.truncate(good_end)
        try:
            return read_records(self.jsonl)
        except ValueError as exc:
            raise EdgestackError(f"{self.jsonl} is damaged ({exc}); restore it from a backup, or give this run its "
                                 "own folder (--out)") from None

    def _write_csv(self, records: list[dict[str, Any]]) -> None:
        with open(self.dir / "results.csv", "w", newline="", **TEXT) as f:
            writer = csv.DictWriter(f, CSV_FIELDS, extrasaction="ignore")
            writer.writeheader()
            for record in records:
                writer.writerow(_csv_row(record))

    def note(self, text: str) -> None:
        """A line in skipped.txt: a side file, so a full disk costs the line, never the run (it is logged)."""
        try:
            with self.notes_lock:  # the reader thread notes skipped files, the writer overlays not written
                self.noted += 1
                self.notes.write(text + "\n")
                self.notes.flush()
        except OSError as exc:
            log.warning("skipped.txt in %s not updated (%s): %s", self.dir, exc.strerror or exc, text)

    def write(self, result: dict[str, Any], image: np.ndarray | None, prob: np.ndarray | None) -> None:
        if image is not None and prob is not None and (self.overlay == "all" or
                                                       (self.overlay == "ng" and result["status"] == "NG")):
            self._write_overlay(result, image, prob)
        descriptor = self.jsonl_file.fileno()
        recorded = os.fstat(descriptor).st_size
        try:
            line = memoryview((json.dumps(result) + "\n").encode())
            while line:  # the OS may take part of it at a time
                line = line[os.write(descriptor, line):]
            os.fsync(descriptor)
        except OSError as exc:  # a full disk, a share gone read-only: stop rather than inspect unrecorded
            try:  # and never let a part of this record reach the file with a later one (the line hears "no verdict")
                os.ftruncate(descriptor, recorded)
            except OSError:
                pass  # a torn last line is dropped when the folder is read again
            raise EdgestackError(
                f"could not record the result of {result['id']} in {self.dir}: {exc.strerror or exc}; free space "
                "or fix the folder, then rerun with the same run folder (unrecorded items are inspected again)"
            ) from None
        with self.summary_lock:
            self.new += 1
            self.summarised[result["id"]] = _summary_fields(result)
            self.changes += 1
            if self.summary_every_s is not None and self.summary_thread is None:
                self.summary_thread = threading.Thread(target=self._write_live_summaries, daemon=True)
                self.summary_thread.start()
        if result["status"] != "ERROR":
            self.done[result["id"]] = judged_version(result)
        # The table and the summary are views of results.jsonl, rewritten by finish(): the result is recorded,
        # so failing them must not turn it into an unrecorded one.
        try:
            self.csv.writerow(_csv_row(result))
            self.csv_file.flush()
        except OSError as exc:
            log.warning("results.csv in %s not updated (%s); results.jsonl holds the result", self.dir,
                        exc.strerror or exc)

    def _write_live_summaries(self) -> None:
        while not self.summary_stop.wait(max(0.0, self.last_summary + self.summary_every_s - time.monotonic())):
            with self.summary_lock:
                if self.changes == self.summarised_changes:  # all written: the next result starts a new writer
                    self.summary_thread = None
                    return
                changes, records = self.changes, list(self.summarised.values())
                figures = (self.new, time.perf_counter() - self.started, self.noted)
            self.last_summary = time.monotonic()
            try:
                write_summary(self.dir, records, *figures)
            except OSError as exc:  # a view of results.jsonl: the next one, or finish(), writes it again
                log.warning("the summary in %s not updated (%s); results.jsonl holds every result", self.dir,
                            exc.strerror or exc)
            self.summarised_changes = changes

    def _write_overlay(self, result: dict[str, Any], image: np.ndarray, prob: np.ndarray) -> None:
        """The overlay is a picture for people; failing to write it must not cost the item its verdict."""
        from edgestack.runtime.images import write_image

        relative = f"overlays/{overlay_name(result['id'])}"
        try:
            write_image(self.dir / relative, defect_overlay(image, prob, result))
        except EdgestackError as exc:
            log.warning("%s", exc)
            self.note(f"{result['id']}: overlay not written: {exc}")
            return
        result["overlay"] = relative

    def finish(self) -> dict[str, Any]:
        self.finished = True
        self.summary_stop.set()
        thread = self.summary_thread
        if thread:
            thread.join()  # the final summary is written after it, not under it
        try:
            for f in (self.jsonl_file, self.csv_file, self.notes):
                f.close()
            records = read_records(self.jsonl)
            self._write_csv(records)  # a retried item's row replaces its ERROR row
            return write_summary(self.dir, records, self.new, time.perf_counter() - self.started, self.noted)
        except OSError as exc:
            raise EdgestackError(
                f"could not write the results table or summary of {self.dir}: {exc.strerror or exc}; results.jsonl "
                "holds every recorded result, and a rerun with the same run folder writes them again"
            ) from None
        finally:
            self.lock.close()  # another run may use the folder now


def judged_version(record: dict[str, Any]) -> tuple[int, int] | str | None:
    """Which version of its item a record's verdict judged, as Item.signature gives it: a file's (size, mtime_ns),
    an (id, image) pair's pixels_sha256; None for anonymous arrays, camera frames, and records written before
    these were recorded."""
    file = record.get("file")
    return (file.get("size"), file.get("mtime_ns")) if isinstance(file, dict) else record.get("pixels_sha256")


def _lock_run_folder(run_dir: Path):
    """An exclusive lock on the run folder for this process's run: two runs appending to one results.jsonl would
    record items twice."""
    lock = bundle_format.exclusive_lock(run_dir / "run.lock")
    if lock is None:
        raise EdgestackError(f"run folder {run_dir} is in use by another inspect or serve run; let it end, or give "
                             "this run its own folder (--out)")
    return lock


def overlay_name(item_id: str) -> str:
    """A unique, bounded file name for an item's overlay: the id with separators and unusual characters as _,
    cut to 160 bytes, then a hash of the whole id (a.png and a.bmp, or sub/x.png and sub__x.png, must not
    share one; a 300-character id must not exceed the file system's 255-byte name limit)."""
    readable = re.sub(r"[^\w.-]+", "_", item_id).encode()[:160].decode("utf-8", "ignore")
    digest = hashlib.sha1(item_id.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{readable}-{digest}.png"


def _summary_fields(record: dict[str, Any]) -> dict[str, Any]:
    """What write_summary reads of a record (a long run keeps these for every item, not whole records)."""
    return {key: record.get(key) for key in ("id", "status", "latency_ms", "max_score", "error")}


def _csv_row(record: dict[str, Any]) -> dict[str, Any]:
    # Records written before defect_count existed listed every component, so their count is still right.
    counted = record.get("defect_count", sum(1 for d in record["defects"] if d.get("counted")))
    return {**record, "defects": counted}


def defect_overlay(image: np.ndarray, prob: np.ndarray, result: dict[str, Any]) -> np.ndarray:
    """Image with the probability as a red tint and counted defects boxed (ignored ones in yellow)."""
    import cv2

    tinted = image.astype(np.float32)
    tinted[..., 0] = np.clip(tinted[..., 0] + 180.0 * prob, 0, 255)
    tinted = tinted.astype(np.uint8)
    for d in result["defects"]:
        x0, y0, x1, y1 = d["bbox"]
        colour = (255, 0, 0) if d.get("counted") else (255, 220, 0)
        cv2.rectangle(tinted, (x0, y0), (x1 - 1, y1 - 1), colour, 2)
    label = f"{result['status']} max {result['max_score']:.2f}"
    cv2.putText(tinted, label, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2)
    return tinted


def read_records(jsonl: Path) -> list[dict[str, Any]]:
    """The last record of each item in results.jsonl (a retried item's result replaces its ERROR); ValueError
    names the first line that is not a result record."""
    records = {}
    with open(jsonl, "rb") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():  # a blank line added by hand
                continue
            try:
                record = json.loads(line)
                if not (isinstance(record, dict) and isinstance(record.get("id"), str)
                        and record.get("status") in ("OK", "NG", "ERROR")):
                    raise ValueError("no id and status")
            except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
                raise ValueError(f"line {number} is not a result record: {exc}") from None
            records[record["id"]] = record
    return list(records.values())


def write_summary(run_dir: Path, records: list[dict[str, Any]], new_items: int, seconds: float,
                  noted: int = 0) -> dict[str, Any]:
    """summary.json + summary.md + scores.png over every item of the run folder; `noted`: lines this session
    added to skipped.txt (files not inspected, overlays not written)."""
    counts = {status: sum(r["status"] == status for r in records) for status in ("OK", "NG", "ERROR")}
    latencies = [r["latency_ms"] for r in records if r["latency_ms"] is not None]
    summary = {
        "items": len(records),
        "counts": counts,
        "this_session": {"items": new_items, "seconds": round(seconds, 3),
                         "items_per_s": new_items / seconds if seconds > 0 and new_items else None,
                         "skipped_txt_lines": noted},
        "latency_ms": {"median": float(np.median(latencies)), "p99": float(np.percentile(latencies, 99))}
        if latencies else None,
        "errors": [{"id": r["id"], "error": r["error"]} for r in records if r["status"] == "ERROR"],
    }
    # Whole or not at all: a dashboard polling the files never reads half of one.
    bundle_format.write_atomic(run_dir / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
    rate = summary["this_session"]["items_per_s"]
    lines = [
        "# Inspection summary", "",
        f"{len(records)} items: {counts['OK']} OK, {counts['NG']} NG, {counts['ERROR']} errors.",
        f"This session: {new_items} items in {seconds:.1f} s" + (f" ({rate:.2f} items/s)." if rate else "."),
    ]
    if noted:  # files NOT inspected (a name reused, not an image, a folder that cannot be listed) are there alone
        lines.append(f"**{noted} line(s) added to skipped.txt this session: files NOT inspected or overlays not "
                     "written; read it.**")
    if summary["latency_ms"]:
        lines.append(f"Per-item latency: median {summary['latency_ms']['median']:.1f} ms, "
                     f"p99 {summary['latency_ms']['p99']:.1f} ms.")
    lines += [f"- ERROR {e['id']}: {e['error']}" for e in summary["errors"]]
    bundle_format.write_atomic(run_dir / "summary.md", ("\n".join(lines) + "\n").encode("utf-8", "backslashreplace"))
    _score_histogram(run_dir / "scores.png", records)
    return summary


def _score_histogram(path: Path, records: list[dict[str, Any]]) -> None:
    """Counted with numpy and drawn as steps (matplotlib's hist took 1.5 s over a million items), on a Figure of
    its own rather than pyplot's global one, so a summary thread may draw it."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    for status, colour in (("OK", "tab:green"), ("NG", "tab:red")):
        scores = np.fromiter((r["max_score"] for r in records if r["status"] == status), np.float64)
        if scores.size:
            counts, edges = np.histogram(scores, bins=40, range=(0, 1))
            ax.stairs(counts, edges, fill=True, alpha=0.7, color=colour, label=f"{status} ({scores.size})")
    ax.set_xlabel("max defect probability per item")
    ax.set_ylabel("items")
    if any(r["status"] != "ERROR" for r in records):  # ERROR items have no score to plot
        ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    bundle_format.write_atomic(path, buffer.getbuffer())
