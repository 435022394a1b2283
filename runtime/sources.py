"""Where inspection items come from: image folders and globs, watched (hot) folders, video files, cameras,
array iterators.

Each source yields `Item`s with a stable id (used to resume a run) and a loader that decodes lazily, so
a bad file becomes an error record for that item instead of stopping the line. A watched folder also yields
None at every poll, so that the reader can be stopped while nothing arrives.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from numbers import Integral
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edgestack.errors import EdgestackError
from edgestack.runtime.images import IMAGE_SUFFIXES, read_image

log = logging.getLogger(__name__)

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
    path: Path | None = None  # the file of an image item or a video's frame
    # Which version was judged: a file's (size, mtime_ns) when it was read, an (id, image) pair's pixels_sha256.
    signature: tuple[int, int] | str | None = None
    retry: bool = False  # a hot-folder file handed out again: read before it was whole, it got an ERROR
    unique: bool = False  # an id no other item can have (a camera frame's, an anonymous array's): not kept


@dataclass(frozen=True)
class Watch:
    """Keep watching a folder for new images. A file is read once its size and modification time have not
    changed for `settle_s` (a camera PC may still be writing it); the watch ends after `idle_exit_s` without
    a new image, or never (None: until interrupted)."""

    settle_s: float = 1.0
    idle_exit_s: float | None = None

    def __post_init__(self):
        # Comparisons with NaN are false, so NaN (it would never settle and never exit) is refused too.
        if not 0 <= self.settle_s < math.inf or (self.idle_exit_s is not None and not 0 < self.idle_exit_s < math.inf):
            raise EdgestackError(f"watch needs settle >= 0 s and idle exit > 0 s, got settle {self.settle_s} s "
                                 f"and idle exit {self.idle_exit_s} s")


def _image_item(path: Path, item_id: str, gray_to_rgb: bool, bit_depth: int | None) -> Item:
    def load() -> np.ndarray:
        item.signature = file_signature(path)
        return read_image(path, gray_to_rgb, bit_depth)

    item = Item(item_id, load, path)
    return item


def _array_items(arrays: Iterable, gray_to_rgb: bool, bit_depth: int | None) -> Iterator[Item]:
    """Arrays, or (id, array) pairs; an id is a non-empty string or an int (a serial number, kept as its digits).
    Anonymous arrays get ids with the session's start time, as camera frames: a later batch into the same run
    folder must not take its items for ones already inspected."""
    session = datetime.now().strftime("%Y%m%d-%H%M%S.%f")
    for index, entry in enumerate(arrays):
        item_id = f"item-{session}-{index:06d}"
        if not (isinstance(entry, tuple) and len(entry) == 2):
            yield Item(item_id, partial(_owned_image, entry, gray_to_rgb, bit_depth), unique=True)
            continue
        given, array = entry
        if isinstance(given, str) and given or isinstance(given, Integral) and not isinstance(given, bool):
            yield _pair_item(str(given), array, gray_to_rgb, bit_depth)
        else:
            yield Item(item_id, partial(_refuse, f"the id {given!r} ({type(given).__name__}) of (id, image) pair "
                                                 f"number {index} is not a non-empty string or an int; give each "
                                                 "part its serial number or name"))


def _pair_item(item_id: str, array: Any, gray_to_rgb: bool, bit_depth: int | None) -> Item:
    def load() -> np.ndarray:
        image = _owned_image(array, gray_to_rgb, bit_depth)
        item.signature = pixels_sha256(image)
        return image

    item = Item(item_id, load)
    return item


def _owned_image(array: Any, gray_to_rgb: bool, bit_depth: int | None) -> np.ndarray:
    """read_image of an array, in memory of its own: the reader runs ahead of the engine, and a camera SDK's
    generator fills one buffer again for each frame it yields."""
    image = read_image(array, gray_to_rgb, bit_depth)
    return image.copy() if isinstance(array, np.ndarray) and np.may_share_memory(image, array) else image


def pixels_sha256(image: np.ndarray) -> str:
    """Which picture an (id, image) pair's verdict judged: a new capture under that id is told from a rerun of
    the same (the hash takes milliseconds a frame, in the reader thread, beside the engine)."""
    digest = hashlib.sha256(repr(image.shape).encode())
    digest.update(memoryview(np.ascontiguousarray(image)).cast("B"))
    return digest.hexdigest()


def _refuse(message: str) -> np.ndarray:
    raise EdgestackError(message)


def _frame_item(item_id: str, bgr: np.ndarray, path: Path | None = None,
                signature: tuple[int, int] | None = None) -> Item:
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return Item(item_id, lambda: rgb, path, signature, unique=path is None)


def _frames(capture: cv2.VideoCapture, path: Path, max_frames: int | None,
            note: Callable[[str], None]) -> Iterator[Item]:
    """Frames of a video file, until its end. Ids are `<file name>/frame-N`, N counting the frames decoded; each
    frame carries the video's (size, mtime), so another video under a name that has verdicts in the run folder is
    reported, not taken for the one already inspected. A video that ends before the frames its header announces
    is reported: a damaged one loses frames, and the ids after the loss are shifted."""
    signature = file_signature(path)
    announced = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    index = 0
    try:
        while max_frames is None or index < max_frames:
            ok, frame = capture.read()
            if not ok:
                if 0 < index < announced:
                    note(f"{path}: {index} frames decoded of the {announced} its header announces (damaged?); "
                         f"frames from the first one lost on were NOT inspected, and ids count decoded frames")
                return
            yield _frame_item(f"{path.name}/frame-{index:06d}", frame, path, signature)
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


def _walk(root: Path, linked_folder: Callable[[Path], None], unreadable: Callable[[OSError], None]) -> Iterator[str]:
    """Paths of the files under root, as strings (a hot folder's poll skips the 10^5 it has seen before making
    Paths of the rest). Symlinked folders are not followed (a link to a parent would loop): each is passed to
    `linked_folder`, so that it is reported, not dropped; a folder that cannot be listed (permissions, a share's
    I/O error) goes to `unreadable`, which os.walk would otherwise skip without a word."""
    def listing_failed(exc: OSError) -> None:  # a subfolder removed since its parent was listed is no failure
        if not isinstance(exc, (FileNotFoundError, NotADirectoryError)) or Path(exc.filename) == Path(root):
            unreadable(exc)

    for folder, folders, names in os.walk(root, onerror=listing_failed):  # no stat per file: 10^5 in a hot folder
        for name in folders:
            if os.path.islink(os.path.join(folder, name)):
                linked_folder(Path(folder, name))
        for name in names:
            yield os.path.join(folder, name)


def _linked_folder_note(path: Path) -> str:
    return f"{path}: a symlinked folder, not followed; give its own path as the source"


def _unreadable_note(exc: OSError) -> str:
    return f"{exc.filename}: a folder that cannot be listed ({exc.strerror or exc}), so its images were NOT inspected"


def _not_an_image(path: Path) -> str:
    return f"{path}: not an image file ({path.suffix or 'no extension'})"


def _in_progress(relative: Path) -> bool:
    """A name a writer uses until its file or folder is complete (a dot name, a partial suffix), anywhere in the
    path below the watched folder: a batch folder copied in as `lot7.tmp` and renamed must not be read twice."""
    return any(part.startswith(".") or Path(part).suffix.lower() in PARTIAL_SUFFIXES for part in relative.parts)


def is_camera(source: Any) -> bool:
    """A camera index: an int, or a string of digits that names no file or folder (folders named by date are
    common on lines)."""
    return isinstance(source, int) or (isinstance(source, str) and source.isdigit() and not Path(source).exists())


def file_signature(path: Path) -> tuple[int, int] | None:
    """(size, mtime) of a file, None when it is gone (renamed or removed since the listing)."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_size, stat.st_mtime_ns


def _arrivals(root: Path, watch: Watch, gray_to_rgb: bool, bit_depth: int | None,
              note: Callable[[str], None], failed: Callable[[str], bool | None]) -> Iterator[Item | None]:
    """Images as they arrive under `root` (those already there first), each once it has settled; None at
    every poll. A poll stats only the files not yet handed out; those handed out are checked every
    WATCH_RECHECK_S: one rewritten under the same name is reported (its id is taken), never passed over in
    silence, unless its item `failed` (an ERROR, no verdict: read before a copy that keeps its size and time
    was whole), which is handed out again once it settles; while its result is not known yet (None: still
    queued behind others) the next recheck decides."""
    pending: dict[Path, tuple[tuple[int, int], float]] = {}  # path -> ((size, mtime), when that was first seen)
    inspected: dict[Path, tuple[int, int]] = {}  # path -> (size, mtime) when handed out
    noted: set[Path] = set()
    retried: set[Path] = set()
    handled: set[str] = set()  # the paths handed out or noted, as _walk gives them: skipped before anything else
    device = root.stat().st_dev

    def note_once(path: Path, text: str) -> None:
        if path not in noted:
            note(text)
            noted.add(path)
            handled.add(str(path))

    def linked_folder(folder: Path) -> None:
        note_once(folder, _linked_folder_note(folder))

    def unreadable(exc: OSError) -> None:
        if Path(exc.filename) == root:  # the whole watch would look idle for ever
            raise EdgestackError(f"watched folder {root} cannot be listed ({exc.strerror or exc}); the results so "
                                 "far are kept: fix it and rerun with the same --out")
        note_once(Path(exc.filename), _unreadable_note(exc))

    last_arrival = last_recheck = time.monotonic()
    while True:
        now = time.monotonic()
        try:
            moved = root.stat().st_dev != device  # an unmounted share leaves its empty mount point behind
        except OSError:
            moved = True
        if moved or not root.is_dir():  # os.walk of a missing folder yields nothing: it would look idle for ever
            raise EdgestackError(f"watched folder {root} is gone (deleted, or its share unmounted); the results so "
                                 "far are kept: restore it and rerun with the same --out")
        listed = sorted(Path(file) for file in _walk(root, linked_folder, unreadable) if file not in handled)
        for gone in pending.keys() - set(listed):  # deleted, moved away or renamed before it settled
            del pending[gone]
        for path in listed:
            if path in inspected or path in noted or _in_progress(path.relative_to(root)):
                continue
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                note_once(path, _not_an_image(path))
                continue
            signature = file_signature(path)
            now = time.monotonic()  # when this stat was made: handing out a backlog may have taken minutes
            if signature is None and path.is_symlink():  # its target is gone: it can never settle
                note_once(path, f"{path}: a symlink to a missing file, not inspected")
            elif signature is None:
                pending.pop(path, None)
            elif path not in pending or pending[path][0] != signature:
                pending[path] = (signature, now)
            elif now - pending[path][1] >= watch.settle_s:
                del pending[path]
                inspected[path] = signature
                handled.add(str(path))
                last_arrival = now
                item = _image_item(path, str(path.relative_to(root)), gray_to_rgb, bit_depth)
                item.retry = path in retried
                yield item
        if now - last_recheck >= WATCH_RECHECK_S:
            last_recheck = now
            for path, seen in list(inspected.items()):
                signature = file_signature(path)
                if signature is None or signature == seen:
                    continue
                outcome = failed(str(path.relative_to(root)))
                if outcome is None:
                    continue
                if outcome:
                    del inspected[path]
                    handled.discard(str(path))
                    pending[path] = (signature, time.monotonic())
                    retried.add(path)
                else:
                    inspected[path] = signature
                    note_once(path, f"{path}: rewritten after it was inspected, so this image was NOT inspected; a "
                                    "line must write each image under a new file name")
        if watch.idle_exit_s is not None and not pending and now - last_arrival >= watch.idle_exit_s:
            return
        yield None
        time.sleep(WATCH_POLL_S)


def source_root(source: str | Path) -> Path:
    """The folder that a folder or glob source's ids are relative to: the folder itself, or the glob's leading
    part without wildcards; so the same file keeps its id however many files a glob matches on a rerun."""
    path = Path(source)
    if path.is_dir():
        return path
    fixed = []
    for part in path.parts:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def open_source(
    source: str | Path | int | Iterable[np.ndarray],
    gray_to_rgb: bool = False,
    max_frames: int | None = None,
    bit_depth: int | None = None,
    watch: Watch | None = None,
    note: Callable[[str], None] | None = None,
    failed: Callable[[str], bool | None] = lambda item_id: False,
) -> Iterator[Item | None]:
    """Items of `source`; `note` (default: a logged warning) gets each skipped file. Folders are walked
    recursively; non-image files are reported, not dropped. With `watch`, a folder is watched for new images
    until its idle exit; `failed(id)`: whether an item handed out got an ERROR (a file rewritten since is then
    handed out again), False for a verdict, None while it has no result yet."""
    note = note or log.warning
    video = isinstance(source, (str, Path)) and Path(source).is_file() and Path(source).suffix.lower() in VIDEO_SUFFIXES
    if max_frames is not None and not (video or is_camera(source)):  # it would be ignored without a word
        raise EdgestackError(f"max_frames (--max-frames) stops a video or a camera; {source!s:.80} is neither: drop "
                             "it, or pass a subfolder or glob to inspect fewer images")
    if watch is not None:
        if not Path(source).is_dir():
            raise EdgestackError(f"watch needs a folder; {source} is not one")
        return _arrivals(Path(source), watch, gray_to_rgb, bit_depth, note, failed)
    if is_camera(source):
        capture = cv2.VideoCapture(int(source))
        if not capture.isOpened():
            raise EdgestackError(f"camera {source} could not be opened; check the index and that it is connected")
        return _camera_frames(capture, int(source), max_frames)
    shape = getattr(source, "shape", None)  # numpy, torch, CuPy
    if shape is not None and len(shape) < 4:  # one image: its rows were items
        raise EdgestackError(f"source is one array of shape {tuple(shape)}: inspect one image with "
                             "Inspector.inspect(image), or pass a list of images or an N x H x W x C array")
    if not isinstance(source, (str, Path)):
        return _array_items(source, gray_to_rgb, bit_depth)

    path = Path(source)
    if video:
        capture = cv2.VideoCapture(str(path))
        if not capture.isOpened():
            raise EdgestackError(f"video {path} could not be opened (corrupt or unsupported codec)")
        return _frames(capture, path, max_frames, note)
    if path.is_file():
        root, files = path.parent, [path]
    else:
        root = source_root(source)
        if path.is_dir():
            files = sorted(Path(file) for file in _walk(path, lambda folder: note(_linked_folder_note(folder)),
                                                        lambda exc: note(_unreadable_note(exc))))
        else:
            files = [p for p in sorted(Path(p) for p in glob.glob(str(source), recursive=True)) if p.is_file()]
            if not files:
                raise EdgestackError(f"source {source} is not a folder, image, video, camera index or matching glob")
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    if not images:
        raise EdgestackError(f"source {source} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    for p in files:
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            note(_not_an_image(p))
    return (_image_item(p, str(p.relative_to(root)), gray_to_rgb, bit_depth) for p in images)
