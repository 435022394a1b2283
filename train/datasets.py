"""Defect datasets: CDS2K-style folders and the synthetic set, with a seeded train/val split and augmentation.

Folder layouts (file names pair an image with its mask by stem, in matching sub-folders; masks are 0/255,
0/1 or 16-bit 0/white, binarised at half):
    CDS2K:  ROOT/Positive/Image/, ROOT/Positive/GroundTruth/, ROOT/Negative/Image/ (negatives have no mask)
    plain:  ROOT/image(s)/ + ROOT/mask(s)/ (an all-zero mask makes a negative)
Bad files are never dropped silently: every skipped file is logged and returned in `FolderScan.skipped`
with its reason; a folder with nothing usable is an EdgestackError. 16-bit images holding 10-14-bit camera
data are scaled by the camera's `bit_depth`, as inspect scales them (edgestack.runtime.images).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import torch

from edgestack.errors import EdgestackError
from edgestack.runtime.images import IMAGE_SUFFIXES, check_bit_depth, decode_file, read_image
from edgestack.train import synthetic

log = logging.getLogger(__name__)
AMBIGUOUS_LIMIT = 0.05  # more than 5% of pixels between 32 and 223: not a binary mask (e.g. a photo or a soft map)


@dataclass
class Record:
    image: Path
    mask: Path | None  # None: a negative without a mask file


@dataclass
class FolderScan:
    root: Path
    layout: str
    bit_depth: int | None = None  # of 16-bit images whose camera uses fewer bits
    records: list[Record] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    positives: int = 0  # records whose mask marks a defect (counted when the scan reads every pair)

    def skip(self, path: Path, reason: str) -> None:
        log.warning("skipping %s: %s", path, reason)
        self.skipped.append((str(path), reason))


def _images(folder: Path, scan: FolderScan) -> dict[str, Path]:
    """Image files under `folder` by path relative to it, without suffix (so x.jpg pairs with x.png), in Unicode
    NFC (a name copied through macOS is NFD: "é" as e + accent, which would not pair with the same name typed
    elsewhere); of two files with one name (x.png and x.jpg), the second is skipped: both would pair with one mask."""
    images: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_symlink() and not path.exists():
            scan.skip(path, f"it links to {path.readlink()}, which does not exist (an unmounted share?); mount "
                            "it or copy the file in")
        elif path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            key = unicodedata.normalize("NFC", str(path.relative_to(folder).with_suffix("")))
            if key in images:
                scan.skip(path, f"{images[key].name} has the same name; rename one of them")
            else:
                images[key] = path
    return images


def _find(root: Path, *names: str) -> Path | None:
    return next((root / n for n in names if (root / n).is_dir()), None)


def read_mask(path: Path) -> np.ndarray:
    """A 0/255 uint8 mask; EdgestackError if unreadable or not binary. Labels are read as they are
    drawn: 0/255, 0/1, or 16-bit 0/white (4095 for a 12-bit tool); colour masks by their brightest channel, or
    by their alpha where that alone varies (a defect painted as opacity over a plain colour)."""
    data = np.fromfile(str(path), np.uint8) if path.is_file() else np.empty(0, np.uint8)
    labels = decode_file(data)
    if labels is None or labels.dtype not in (np.uint8, np.uint16):
        raise EdgestackError(f"mask {path} could not be read as an 8- or 16-bit image; save masks as PNG")
    if labels.ndim == 3 and labels.shape[2] == 4 and np.ptp(labels[..., :3]) == 0 and np.ptp(labels[..., 3]):
        labels = labels[..., 3]  # read by their colour, such masks were all defect (white) or all background
    values = labels[..., :3].max(axis=2) if labels.ndim == 3 else labels
    peak = int(values.max())
    if 1 < peak < 32:  # refused, not guessed: `> 128` below would erase every defect, and reading any non-zero
        # as defect would take in a JPEG's ringing around 0/1 labels or merge a class-index mask's classes
        held = ", ".join(str(v) for v in np.unique(values)[:8])
        raise EdgestackError(f"mask {path} holds the labels {held}, not 0/255 or 0/1 (a class-index mask, or 0/1 "
                             "saved as JPEG?); save each mask as a PNG with 0 for background and 255 (or 1) for "
                             "defect")
    if peak == 1 or (values.dtype == np.uint16 and peak > 255):  # 0/1 labels; 16-bit: scaled by its white
        values = values.astype(np.float32) * (255.0 / peak)
    elif values.dtype == np.uint16:
        values = values.astype(np.float32)
    ambiguous = float(((values >= 32) & (values <= 223)).mean())
    if ambiguous > AMBIGUOUS_LIMIT or 32 <= peak <= 128:
        raise EdgestackError(
            f"mask {path} is not binary ({ambiguous:.0%} of pixels are between 32 and 223, the brightest is {peak}); "
            "masks must be 0 (background) and 255 (defect), or 0 and 1"
        )
    return np.where(values > 128, 255, 0).astype(np.uint8)


def looks_inverted(mask: np.ndarray) -> bool:
    """White all round and over half the image: drawn with a white background, or a crop inside a large defect.
    scan_folder tells the two apart by the folder: when most of its defect masks look so, they are inverted."""
    border = np.concatenate([mask[0], mask[-1], mask[:, 0], mask[:, -1]])
    return bool(border.all()) and mask.mean() > 127.5


def load_pair(record: Record, bit_depth: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """(RGB image, 0/255 mask or None); EdgestackError on unreadable files or a size mismatch."""
    image = read_image(record.image, gray_to_rgb=True, bit_depth=bit_depth)
    if record.mask is None:
        return image, None
    mask = read_mask(record.mask)
    if mask.shape != image.shape[:2]:
        raise EdgestackError(
            f"mask {record.mask} is {mask.shape[1]}x{mask.shape[0]} but image {record.image} is "
            f"{image.shape[1]}x{image.shape[0]}; masks must have their image's size"
        )
    return image, mask


def scan_folder(root: str | Path, check: bool = True, bit_depth: int | None = None) -> FolderScan:
    """Pair images with masks under `root`; with `check`, read every pair and skip (and report) bad ones."""
    root = Path(root)
    if not root.is_dir():
        raise EdgestackError(f"data folder {root} does not exist; pass a folder or `synthetic`")
    check_bit_depth(bit_depth)
    if (root / "Positive").is_dir() or (root / "Negative").is_dir():
        scan = FolderScan(root, "cds2k", bit_depth)
        pairs = [(root / "Positive" / "Image", root / "Positive" / "GroundTruth", True),
                 (root / "Negative" / "Image", None, False)]
    else:
        images, masks = _find(root, "image", "images", "Image"), _find(root, "mask", "masks", "GroundTruth")
        if images is None or masks is None:
            raise EdgestackError(
                f"{root} has neither the CDS2K layout (Positive/Image, Positive/GroundTruth, Negative/Image) nor "
                "image/ + mask/ folders; arrange the data in one of them"
            )
        scan = FolderScan(root, "plain", bit_depth)
        pairs = [(images, masks, True)]
    found = {}  # image folder -> how many images it holds
    for image_dir, mask_dir, needs_mask in pairs:
        images = _images(image_dir, scan) if image_dir.is_dir() else {}
        found[image_dir] = len(images)
        masks = _images(mask_dir, scan) if mask_dir is not None and mask_dir.is_dir() else {}
        for key, path in images.items():
            if needs_mask and key not in masks:
                scan.skip(path, f"no mask with the same name in {mask_dir}" if mask_dir.is_dir() else
                          f"there is no mask folder {mask_dir}")
            else:
                scan.records.append(Record(path, masks.get(key)))
        for key in sorted(set(masks) - set(images)):
            scan.skip(masks[key], f"mask without an image in {image_dir}")
    if check:
        good, inverted = [], []
        for record in scan.records:
            try:
                _, mask = load_pair(record, bit_depth)
            except EdgestackError as exc:
                scan.skip(record.image, str(exc))
                continue
            except OSError as exc:  # a file this user may not read, a share that went away: that pair only
                scan.skip(record.image, f"{exc.filename or record.image} cannot be read ({exc.strerror or exc}); "
                                        "check its permissions")
                continue
            if scan.layout == "cds2k" and mask is not None and not mask.any():  # would count as a negative
                scan.skip(record.image, f"its mask {record.mask} marks no defect, yet it is under Positive/; fix "
                                        "the mask, or move the image to Negative/Image")
            else:
                good.append(record)
                scan.positives += mask is not None and bool(mask.any())
                if mask is not None and looks_inverted(mask):
                    inverted.append((record, mask.mean() / 255))
        most = 2 * len(inverted) > scan.positives  # most of the folder's defect masks: drawn inverted
        for record, share in inverted:
            if most:
                scan.skip(record.image, f"its mask {record.mask} marks {share:.0%} of the image as defect, its whole "
                                        "border included, as most masks here do: inverted? Masks must be black (0) "
                                        "for background and white for defect")
            else:
                log.warning("%s: its mask marks %.0f%% of the image as defect, its border included; kept, as most "
                            "masks here are not inverted", record.image, 100 * share)
        if most:  # filtered once: removing each from the list cost a pass over it per mask
            dropped = {id(record) for record, _ in inverted}
            good = [record for record in good if id(record) not in dropped]
            scan.positives -= len(inverted)
        scan.records = good
    reasons = "; ".join(f"{p}: {r}" for p, r in scan.skipped[:5])
    positives, masks = root / "Positive" / "Image", root / "Positive" / "GroundTruth"
    others = ", ".join(sorted(p.name for p in positives.parent.iterdir() if p.is_dir() and p != positives)) \
        if positives.parent.is_dir() else ""
    if scan.layout == "cds2k" and not found[positives] and masks.is_dir() and \
            any(path.suffix.lower() in IMAGE_SUFFIXES for path in masks.rglob("*")):
        # every defect image missing: evaluated on the good parts alone, the model looked perfect
        raise EdgestackError(f"{masks} holds masks, but {positives} holds no image of a defective part"
                             + (f" (Positive/ holds {others})" if others else "")
                             + "; put each defect image there, under its mask's name")
    if scan.layout == "cds2k" and found[positives] and not any(record.mask is not None for record in scan.records):
        # on Negative/ alone a model learns that nothing is ever a defect (and eval finds no positive to score)
        if masks.is_dir():
            raise EdgestackError(f"none of the images in {positives} is usable; skipped: {reasons}")
        raise EdgestackError(f"none of the images in {positives} is usable: there is no mask folder {masks}"
                             + (f" (Positive/ holds {others})" if others else "")
                             + "; put each image's mask there, under the image's name")
    if not scan.records:
        raise EdgestackError(f"no usable image/mask pairs under {root} ({scan.layout} layout)"
                             + (f"; skipped: {reasons}" if reasons else "; the folders are empty"))
    return scan


def split(count: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """A seeded (train, val) split of range(count); val gets at least one item."""
    if count < 2:
        raise EdgestackError(f"need at least 2 samples to split into train and val, got {count}")
    order = np.random.default_rng(seed).permutation(count).tolist()
    n_val = min(count - 1, max(1, round(count * val_fraction)))
    return sorted(order[n_val:]), sorted(order[:n_val])


def augment(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Flips, an affine (rotation +-15 deg, scale 0.7-1.4 log-uniform, shift +-6%), brightness/contrast jitter.

    Why the wide scale range: trained at 0.9-1.1, defectseg-s found at 1.5x input many small spots and thin
    scratches it missed at their own size, so it should see defects at more sizes than they come in; how much
    a larger input still buys is measured per shipped checkpoint (its card's `heldout_at_320`)."""
    if rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
    if rng.random() < 0.5:
        image, mask = image[::-1], mask[::-1]
    height, width = mask.shape
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), rng.uniform(-15, 15),
                                     np.exp(rng.uniform(np.log(0.7), np.log(1.4))))
    matrix[:, 2] += rng.uniform(-0.06, 0.06, 2) * (width, height)
    image = cv2.warpAffine(np.ascontiguousarray(image), matrix, (width, height), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REFLECT)
    mask = cv2.warpAffine(np.ascontiguousarray(mask), matrix, (width, height), flags=cv2.INTER_NEAREST,
                          borderMode=cv2.BORDER_REFLECT)
    return jitter(image, rng.uniform(0.8, 1.2), rng.uniform(-20, 20)), mask


def jitter(image: np.ndarray, contrast: float, brightness: float) -> np.ndarray:
    """uint8 image -> clip((image - its mean) * contrast + mean + brightness), truncated to uint8.

    Each uint8 value maps to one uint8 value, so the float32 formula runs on a 256-entry table (cv2.LUT) rather
    than on every pixel: the same pixels, about 4x faster."""
    mean = image.mean()
    table = np.clip((np.arange(256, dtype=np.float32) - mean) * contrast + mean + brightness, 0, 255)
    return cv2.LUT(image, table.astype(np.uint8))


MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
# (value / 255 - MEAN) / STD for every uint8 value, per channel: to_tensors looks its pixels up here.
NORMALIZED = (np.arange(256, dtype=np.float32)[None, :] / 255.0 - MEAN[:, None]) / STD[:, None]


def to_tensors(image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """RGB uint8 + 0/255 mask -> normalized [3,H,W] float and [1,H,W] 0/1 float (the registry's preprocessing)."""
    x = np.stack([NORMALIZED[c].take(channel) for c, channel in enumerate(cv2.split(image))])
    return torch.from_numpy(x), torch.from_numpy((mask > 128).astype(np.float32)[None])


def generate(make: Callable[[int], object], count: int, workers: int = 1, progress=None) -> list:
    """[make(0), ..., make(count - 1)], in `workers` processes when > 1 (same results: `make` depends only on the
    index); `progress(done, count)` after each."""
    results = []
    pool = multiprocessing.Pool(workers, initializer=_default_signals) if workers > 1 else None
    try:
        for item in pool.imap(make, range(count), chunksize=16) if pool else map(make, range(count)):
            results.append(item)
            if progress:
                progress(len(results), count)
    finally:
        if pool:
            pool.terminate()
    return results


def _default_signals() -> None:
    """Pool worker start: forked workers inherit the CLI's SIGTERM -> KeyboardInterrupt handler, so the
    terminate() that ends the pool made them print tracebacks (or hang while holding the pool's queue lock).
    Workers die on SIGTERM and leave Ctrl-C to the parent, which terminates them."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def seed_worker(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: each worker starts with a copy of the dataset's numpy RNG; give it its own
    stream from the worker's torch seed (which the loader draws per worker from its generator)."""
    info = torch.utils.data.get_worker_info()
    info.dataset.rng = np.random.default_rng(info.seed)


BACKDROP_SHARE = 0.15  # of synthetic training samples shown on a plain backdrop


def on_backdrop(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The part at its own scale seen through a window (30-95% of each side, anywhere in the frame) on a plain
    backdrop (a fixture, a belt) that has no defect: a flat colour (mostly near the part's mean), a gentle
    gradient and sensor noise. `inspect` cuts a large frame into tiles, so a tile holds an edge, a corner or the
    middle of the part next to the backdrop. Synthetic parts fill their frame, and trained on those alone the
    model false-rejected good parts on a plain backdrop."""
    height, width = mask.shape
    window_h, window_w = (max(1, round(side * rng.uniform(0.3, 0.95))) for side in (height, width))
    y0, x0 = rng.integers(0, height - window_h + 1), rng.integers(0, width - window_w + 1)
    window = np.s_[y0:y0 + window_h, x0:x0 + window_w]
    mean = image.reshape(-1, 3).mean(0)
    colour = mean + rng.normal(0, 30, 3) if rng.random() < 0.7 else rng.uniform(0, 255, 3)
    ramp = np.linspace(-1, 1, width if rng.random() < 0.5 else height, dtype=np.float32) * rng.uniform(-20, 20)
    ramp = ramp[None, :, None] if ramp.size == width else ramp[:, None, None]
    backdrop = colour.astype(np.float32) + ramp + rng.normal(0, rng.uniform(1, 4), (height, width, 3))
    framed = np.clip(backdrop, 0, 255).astype(np.uint8)
    framed_mask = np.zeros_like(mask)
    framed[window], framed_mask[window] = image[window], mask[window]
    return framed, framed_mask


class DefectDataset(torch.utils.data.Dataset):
    """Images and masks in memory; augmented when `train`, a share of them shown on a plain backdrop when
    `backdrops` (synthetic data; a line's own images carry its real background). At `size` x `size` already, or
    with `window` (native-scale training) at their own size, each item a random `window` x `window` part of its
    image (native_window)."""

    def __init__(self, images: list[np.ndarray], masks: list[np.ndarray | None], train: bool, seed: int = 0,
                 backdrops: bool = False, window: int | None = None):
        self.images, self.masks, self.train, self.backdrops = images, masks, train, backdrops  # None: a good part
        self.rng = np.random.default_rng(seed)
        self.window = window
        # Up to 4096 defect pixels per image, found once: a window is placed on one of them.
        self.anchors = [defect_anchors(mask, seed) for mask in masks] if window else None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.images[index], self.masks[index]
        if self.window:
            image, mask = native_window(image, mask, self.anchors[index], self.window, self.rng)
        if self.train:
            if self.backdrops and self.rng.random() < BACKDROP_SHARE:
                image, mask = on_backdrop(image, mask, self.rng)
            image, mask = augment(image, mask, self.rng)
        return to_tensors(image, mask)


DEFECT_WINDOW_SHARE = 0.5  # of a defective image's training windows placed on a defect


def defect_anchors(mask: np.ndarray | None, seed: int, most: int = 4096) -> np.ndarray:
    """[N, 2] (y, x) of the mask's defect pixels, at most `most` of them drawn evenly (a large stain's millions
    of pixels need not all be kept); none for a good part's (None)."""
    pixels = np.argwhere(mask > 0) if mask is not None else np.zeros((0, 2), np.int64)
    if len(pixels) > most:
        pixels = pixels[np.random.default_rng(seed).choice(len(pixels), most, replace=False)]
    return pixels


def native_window(image: np.ndarray, mask: np.ndarray | None, anchors: np.ndarray | None, size: int,
                  rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray]:
    """A `size` x `size` part of an image at its own scale, as inspect's tiles see it (an axis shorter than `size`
    padded by reflection). In training (`rng`), DEFECT_WINDOW_SHARE of a defective image's windows hold one of its
    defect pixels, anywhere in the window (a defect is a small part of a large frame, which windows drawn
    anywhere would mostly miss), the rest lie anywhere; for validation (no `rng`) the window is centred on the
    largest defect (the middle of several far apart can hold none of them), or on the image."""
    if mask is None:  # a good part
        mask = np.zeros(image.shape[:2], np.uint8)
    pad_h, pad_w = max(0, size - mask.shape[0]), max(0, size - mask.shape[1])
    if pad_h or pad_w:
        image = cv2.copyMakeBorder(image, 0, pad_h, 0, pad_w, cv2.BORDER_REFLECT_101)
        mask = cv2.copyMakeBorder(mask, 0, pad_h, 0, pad_w, cv2.BORDER_REFLECT_101)
    height, width = mask.shape
    if rng is None:
        count, _, stats, centroids = cv2.connectedComponentsWithStats((mask > 0).astype(np.uint8), connectivity=8)
        x, y = centroids[1 + stats[1:, cv2.CC_STAT_AREA].argmax()] if count > 1 else (width / 2, height / 2)
        top, left = round(y - size / 2), round(x - size / 2)
    elif anchors is not None and len(anchors) and rng.random() < DEFECT_WINDOW_SHARE:
        y, x = anchors[rng.integers(len(anchors))]
        top, left = y - rng.integers(size), x - rng.integers(size)
    else:
        top, left = rng.integers(height - size + 1), rng.integers(width - size + 1)
    top, left = min(max(top, 0), height - size), min(max(left, 0), width - size)
    return image[top : top + size, left : left + size], mask[top : top + size, left : left + size]


def resize_pair(image: np.ndarray, mask: np.ndarray | None, size: int) -> tuple[np.ndarray, np.ndarray]:
    image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    if mask is None:
        return image, np.zeros((size, size), np.uint8)
    return image, cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST)


def refuse_bit_depth_for_synthetic(data: str, bit_depth: int | None) -> None:
    if data == "synthetic" and bit_depth is not None:
        raise EdgestackError("--bit-depth is for folders of 16-bit camera images; the synthetic set is 8-bit")


def warn_of_frames_in_memory(pairs: list[tuple[np.ndarray, np.ndarray | None]]) -> None:
    """--native-scale keeps the training frames in memory as decoded: said when that is over half the RAM."""
    held = sum(image.nbytes + (0 if mask is None else mask.nbytes) for image, mask in pairs)
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # Windows: no sysconf
        return
    if held > total / 2:
        log.warning("--native-scale holds the %d training frames in memory as decoded: %.1f GB of this machine's "
                    "%.1f GB; train on fewer frames, or on crops of the parts, if memory runs short", len(pairs),
                    held / 1e9, total / 1e9)


SHRINK_WARNING = 1.5  # a median shrink from the frames' own size to --size that changes what a defect looks like


def load_datasets(
    data: str, size: int, val_fraction: float = 0.1, seed: int = 0, synthetic_count: int = 3000, progress=None,
    workers: int = 1, bit_depth: int | None = None, native_scale: bool = False,
) -> tuple[DefectDataset, DefectDataset, dict]:
    """(train, val, info) for a folder or `synthetic` (samples 0..count-1 of the training seed, generated in
    `workers` processes). A folder's images are resized to `size`, or with `native_scale` kept at their own size
    and seen through `size` x `size` windows (native_window), as inspect and infer see them."""
    refuse_bit_depth_for_synthetic(data, bit_depth)
    if native_scale and data == "synthetic":
        raise EdgestackError("--native-scale is for a folder of the line's frames; synthetic parts are made at "
                             "--size, their own scale")
    if data == "synthetic":
        make = partial(synthetic.make_sample, synthetic.TRAIN_SEED, size=size)
        samples = generate(make, synthetic_count, workers, progress)
        pairs = [(s.image, s.mask) for s in samples]
        info = {"data": "synthetic", "seed": synthetic.TRAIN_SEED, "count": synthetic_count, "skipped": []}
    else:
        scan = scan_folder(data, bit_depth=bit_depth)
        if not scan.positives:  # trained on good parts alone, the model learns that nothing is ever a defect
            raise EdgestackError(f"none of the {len(scan.records)} usable images under {scan.root} has a mask that "
                                 "marks a defect (white pixels); add images of defective parts with their masks")
        pairs, shrinks = [], []
        for i, record in enumerate(scan.records):
            image, mask = load_pair(record, bit_depth)
            shrinks.append(max(image.shape[:2]) / size)
            if native_scale:
                pairs.append((image, mask if mask is not None and mask.any() else None))
            else:
                small = resize_pair(image, mask, size)
                if mask is not None and mask.any() and not small[1].any():  # it would teach "no defect here"
                    scan.skip(record.image, f"its defect ({int(np.count_nonzero(mask))} px of {image.shape[1]}x"
                                            f"{image.shape[0]}) vanishes at --size {size}; train at a larger "
                                            "--size, or on crops around the part")
                else:
                    pairs.append(small)
            if progress:
                progress(i + 1, len(scan.records))
        if not any(mask is not None and mask.any() for _, mask in pairs):
            raise EdgestackError(f"every defect under {scan.root} vanishes when its image is resized to --size {size}; "
                                 "train at a larger --size, or on crops around the parts")
        shrink = float(np.median(shrinks))
        if shrink >= SHRINK_WARNING and not native_scale:
            log.warning("the images under %s are shrunk %.1fx (median) to --size %d for training, but inspect and "
                        "infer judge frames at their own scale, where each defect looks %.1fx larger than any the "
                        "model learnt; train with --native-scale (windows of the frames at their own scale), "
                        "or at a --size near the frames' own", scan.root, shrink, size, shrink)
        info = {"data": str(scan.root), "layout": scan.layout, "count": len(pairs), "skipped": scan.skipped,
                "bit_depth": bit_depth, "shrunk_by": None if native_scale else round(shrink, 2),
                "native_scale": native_scale}
    train_idx, val_idx = split(len(pairs), val_fraction, seed)
    info |= {"train": len(train_idx), "val": len(val_idx), "split_seed": seed}
    if native_scale:  # validation sees one window of a frame: kept alone, and the frames held for training told
        for i in val_idx:
            pairs[i] = native_window(*pairs[i], None, size, None)
        warn_of_frames_in_memory([pairs[i] for i in train_idx])
    make = lambda idx, train: DefectDataset([pairs[i][0] for i in idx], [pairs[i][1] for i in idx], train, seed,  # noqa: E731
                                            backdrops=data == "synthetic",
                                            window=size if native_scale and train else None)
    return make(train_idx, True), make(val_idx, False), info
