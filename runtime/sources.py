"""Where inspection items come from: image folders and globs, watched (hot) folders, video files, cameras,
array iterators.

Each source yields `Item`s with a stable id (used to resume a run) and a loader that decodes lazily, so
a bad file becomes an error record for that item instead of stopping the line. A watched folder also yields
None at every poll, so that the reader can be stopped while nothing arrives.
"""

from __future__ import annotations

import glob
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np

from edgestack.errors import EdgestackError
from edgestack.runtime.images import read_image

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg"}
CAMERA_STALL_S = 5.0
WATCH_POLL_S = 0.25
WATCH_RECHECK_S = 5.0
# Names a writer gives a file until it is complete and renamed: waited on in a watched folder, never noted.
PARTIAL_SUFFIXES = {".tmp", ".part", ".partial", ".crdownload", ".filepart"}


@dataclass
class Item:
    id: str
    load: Callable[[], np.ndarray]
    """-> RGB uint8 HxWx3; raises EdgestackError for an unreadable item."""


@dataclass(frozen=True)
class Watch:
    """Keep watching a folder for new images. A file is read once its size and modification time have not
    changed for `settle_s` (a camera PC may still be writing it); the watch ends after `idle_exit_s` without
    a new image, or never (None: until interrupted)."""

    settle_s: float = 1.0
    idle_exit_s: float | None = None

    def __post_init__(self):
        if self.settle_s < 0 or (self.idle_exit_s is not None and self.idle_exit_s <= 0):
            raise EdgestackError(f"watch needs settle >= 0 s and idle exit > 0 s, got settle {self.settle_s} s "
                                 f"and idle exit {self.idle_exit_s} s")


def _image_item(path: Path, item_id: str, gray_to_rgb: bool, bit_depth: int | None) -> Item:
    return Item(item_id, lambda: read_image(path, gray_to_rgb, bit_depth))


def _frame_item(item_id: str, bgr: np.ndarray) -> Item:
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return Item(item_id, lambda: rgb)


def _frames(capture: cv2.VideoCapture, prefix: str, max_frames: int | None) -> Iterator[Item]:
    """Frames of a video file, until its end."""
    index = 0
    try:
        while max_frames is None or index < max_frames:
            ok, frame = capture.read()
            if not ok:
                return
            yield _frame_item(f"{prefix}{index:06d}", frame)
            index += 1
    finally:
        capture.release()


def _camera_frames(capture: cv2.VideoCapture, camera: int, max_frames: int | None) -> Iterator[Item]:
    """Frames of a live camera. Ids carry the session's start time: a rerun into the same run folder numbers
    from 0 again, and must not take its frames for ones already inspected. A camera that stops delivering is
    reopened until CAMERA_STALL_S have passed, then the run ends with an error, never quietly."""
    session = datetime.now().strftime("%Y%m%d-%H%M%S.%f")
    index = 0
    try:
        while max_frames is None or index < max_frames:
            ok, frame = capture.read()
            deadline = time.monotonic() + CAMERA_STALL_S
            while not ok and time.monotonic() < deadline:
                time.sleep(0.2)
                capture.release()  # USB and GigE cameras often come back only when reopened
                capture.open(camera)
                ok, frame = capture.read()
            if not ok:
                raise EdgestackError(
                    f"camera {camera} delivered no frame for {CAMERA_STALL_S:g} s after {index} frames; check its "
                    "connection and power, then rerun with the same --out to go on")
            yield _frame_item(f"camera{camera}-{session}-{index:06d}", frame)
            index += 1
    finally:
        capture.release()


def _walk(root: Path) -> Iterator[Path]:
    for folder, _, names in os.walk(root):  # no stat per file: a hot folder can hold 10^5 of them
        for name in names:
            yield Path(folder, name)


def _not_an_image(path: Path) -> str:
    return f"{path}: not an image file ({path.suffix or 'no extension'})"


def _signature(path: Path) -> tuple[int, int] | None:
    """(size, mtime) of a file, None when it is gone (renamed or removed since the listing)."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_size, stat.st_mtime_ns


def _arrivals(root: Path, watch: Watch, gray_to_rgb: bool, bit_depth: int | None,
              note: Callable[[str], None]) -> Iterator[Item | None]:
    """Images as they arrive under `root` (those already there first), each once it has settled; None at
    every poll. A poll stats only the files not yet handed out; those handed out are checked every
    WATCH_RECHECK_S, and one rewritten under the same name is reported (its id is taken), never passed over
    in silence."""
    pending: dict[Path, tuple[tuple[int, int], float]] = {}  # path -> ((size, mtime), when that was first seen)
    inspected: dict[Path, tuple[int, int]] = {}  # path -> (size, mtime) when handed out
    noted: set[Path] = set()
    last_arrival = last_recheck = time.monotonic()
    while True:
        now = time.monotonic()
        for path in sorted(_walk(root)):
            if path in inspected or path in noted or path.name.startswith(".") \
                    or path.suffix.lower() in PARTIAL_SUFFIXES:
                continue
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                note(_not_an_image(path))
                noted.add(path)
                continue
            signature = _signature(path)
            if signature is None:
                pending.pop(path, None)
            elif path not in pending or pending[path][0] != signature:
                pending[path] = (signature, now)
            elif now - pending[path][1] >= watch.settle_s:
                del pending[path]
                inspected[path] = signature
                last_arrival = now
                yield _image_item(path, str(path.relative_to(root)), gray_to_rgb, bit_depth)
        if now - last_recheck >= WATCH_RECHECK_S:
            last_recheck = now
            for path, seen in inspected.items():
                signature = _signature(path)
                if signature is not None and signature != seen:
                    inspected[path] = signature
                    note(f"{path}: rewritten after it was inspected, so this image was NOT inspected; a line must "
                         "write each image under a new file name")
        if watch.idle_exit_s is not None and not pending and now - last_arrival >= watch.idle_exit_s:
            return
        yield None
        time.sleep(WATCH_POLL_S)


def open_source(
    source: str | Path | int | Iterable[np.ndarray],
    gray_to_rgb: bool = False,
    max_frames: int | None = None,
    bit_depth: int | None = None,
    watch: Watch | None = None,
    note: Callable[[str], None] | None = None,
) -> Iterator[Item | None]:
    """Items of `source`; `note` (default: a logged warning) gets each skipped file. Folders are walked
    recursively; non-image files are reported, not dropped. With `watch`, a folder is watched for new images
    until its idle exit."""
    note = note or log.warning
    if watch is not None:
        if not Path(source).is_dir():
            raise EdgestackError(f"watch needs a folder; {source} is not one")
        return _arrivals(Path(source), watch, gray_to_rgb, bit_depth, note)
    if isinstance(source, int) or (isinstance(source, str) and source.isdigit()):
        capture = cv2.VideoCapture(int(source))
        if not capture.isOpened():
            raise EdgestackError(f"camera {source} could not be opened; check the index and that it is connected")
        return _camera_frames(capture, int(source), max_frames)
    if not isinstance(source, (str, Path)):
        arrays = enumerate(iter(source))
        return (Item(f"item-{i:06d}", lambda a=a: read_image(a, gray_to_rgb, bit_depth)) for i, a in arrays)

    path = Path(source)
    if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES:
        capture = cv2.VideoCapture(str(path))
        if not capture.isOpened():
            raise EdgestackError(f"video {path} could not be opened (corrupt or unsupported codec)")
        return _frames(capture, "frame-", max_frames)
    if path.is_dir():
        root = path
        files = sorted(_walk(path))
    elif path.is_file():
        root, files = path.parent, [path]
    else:
        matches = sorted(Path(p) for p in glob.glob(str(source), recursive=True))
        files = [p for p in matches if p.is_file()]
        if not files:
            raise EdgestackError(f"source {source} is not a folder, image, video, camera index or matching glob")
        root = Path(os.path.commonpath([str(p.parent) for p in files]))
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    if not images:
        raise EdgestackError(f"source {source} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    for p in files:
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            note(_not_an_image(p))
    return (_image_item(p, str(p.relative_to(root)), gray_to_rgb, bit_depth) for p in images)
