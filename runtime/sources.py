"""Where inspection items come from: image folders and globs, video files, cameras, array iterators.

Each source yields `Item`s with a stable id (used to resume a run) and a loader that decodes lazily, so
a bad file becomes an error record for that item instead of stopping the line.
"""

from __future__ import annotations

import glob
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

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg"}
CAMERA_STALL_S = 5.0


@dataclass
class Item:
    id: str
    load: Callable[[], np.ndarray]
    """-> RGB uint8 HxWx3; raises EdgestackError for an unreadable item."""


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


def open_source(
    source: str | Path | int | Iterable[np.ndarray],
    gray_to_rgb: bool = False,
    max_frames: int | None = None,
    bit_depth: int | None = None,
) -> tuple[Iterator[Item], list[str]]:
    """(items, skipped-file notes). Folders are walked recursively; non-image files are reported, not dropped."""
    if isinstance(source, int) or (isinstance(source, str) and source.isdigit()):
        capture = cv2.VideoCapture(int(source))
        if not capture.isOpened():
            raise EdgestackError(f"camera {source} could not be opened; check the index and that it is connected")
        return _camera_frames(capture, int(source), max_frames), []
    if not isinstance(source, (str, Path)):
        arrays = enumerate(iter(source))
        return (Item(f"item-{i:06d}", lambda a=a: read_image(a, gray_to_rgb, bit_depth)) for i, a in arrays), []

    path = Path(source)
    if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES:
        capture = cv2.VideoCapture(str(path))
        if not capture.isOpened():
            raise EdgestackError(f"video {path} could not be opened (corrupt or unsupported codec)")
        return _frames(capture, "frame-", max_frames), []
    if path.is_dir():
        root = path
        files = sorted(p for p in path.rglob("*") if p.is_file())
    elif path.is_file():
        root, files = path.parent, [path]
    else:
        matches = sorted(Path(p) for p in glob.glob(str(source), recursive=True))
        files = [p for p in matches if p.is_file()]
        if not files:
            raise EdgestackError(f"source {source} is not a folder, image, video, camera index or matching glob")
        root = Path(os.path.commonpath([str(p.parent) for p in files]))
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    skipped = [f"{p}: not an image file ({p.suffix or 'no extension'})" for p in files if p not in set(images)]
    if not images:
        raise EdgestackError(f"source {source} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return (_image_item(p, str(p.relative_to(root)), gray_to_rgb, bit_depth) for p in images), skipped
