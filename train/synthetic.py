"""Synthetic concealed defects that need no download: deterministic by (seed, index).

Backgrounds: real textures shipped inside scikit-image (brick, gravel, grass) and procedural
ones (multi-octave noise, brushed metal, woven fabric), tinted, unevenly lit, with sensor noise.
Defects: scratches, cracks, spots, stains and dents drawn at low contrast — their amplitude is about one
to two standard deviations of the background texture, so they hide in it as CDS2K's do. Positives hold
1-3 defects covering 0.1%-20% of the image (mostly < 10%); negatives are defect-free.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edgestack.errors import EdgestackError

REAL_TEXTURES = ("brick", "gravel", "grass")  # skimage.data textures; not moon: its craters look like dents
PROCEDURAL_TEXTURES = ("noise", "brushed", "fabric")
TEXTURES = REAL_TEXTURES + PROCEDURAL_TEXTURES
DEFECTS = ("scratch", "crack", "spot", "stain", "dent")
MIN_AREA, MAX_AREA = 0.001, 0.20
TRAIN_SEED, HELDOUT_SEED = 0, 1  # `--data synthetic`: training/validation draw from seed 0, held-out tests from 1


@dataclass
class Sample:
    image: np.ndarray  # RGB uint8 HxWx3
    mask: np.ndarray  # uint8 HxW, 0 or 255
    info: dict[str, Any]

    @property
    def positive(self) -> bool:
        return bool(self.mask.any())


@functools.cache
def _real_texture(name: str) -> np.ndarray:
    import skimage.data

    image = getattr(skimage.data, name)()
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return image.astype(np.float32) / 255.0


def _standardize(field: np.ndarray) -> np.ndarray:
    return (field - field.mean()) / (field.std() + 1e-6)


def _octave_noise(rng: np.random.Generator, size: int, octaves: tuple[int, ...]) -> np.ndarray:
    out = np.zeros((size, size), np.float32)
    for cells in octaves:
        grid = rng.standard_normal((cells, cells)).astype(np.float32)
        out += cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC) / np.sqrt(cells)
    return out


def _rotate(field: np.ndarray, angle: float) -> np.ndarray:
    size = field.shape[0]
    matrix = cv2.getRotationMatrix2D((size / 2, size / 2), angle, 1.0)
    return cv2.warpAffine(field, matrix, (size, size), borderMode=cv2.BORDER_REFLECT)


def _texture(rng: np.random.Generator, name: str, size: int) -> np.ndarray:
    """A zero-mean, unit-std texture field of `name`, size x size."""
    if name in REAL_TEXTURES:
        source = _real_texture(name)
        crop = int(min(source.shape[:2]) * rng.uniform(0.35, 1.0))
        y = rng.integers(0, source.shape[0] - crop + 1)
        x = rng.integers(0, source.shape[1] - crop + 1)
        field = cv2.resize(source[y : y + crop, x : x + crop], (size, size), interpolation=cv2.INTER_AREA)
        field = np.rot90(field, rng.integers(4)).copy()
    elif name == "noise":
        field = _octave_noise(rng, size, (4, 8, 16, 32, 64, 128))
    elif name == "brushed":  # fine streaks along one direction, generated large so rotation leaves no border
        big = int(size * 1.5)
        streaks = cv2.blur(rng.standard_normal((big, big)).astype(np.float32), (int(rng.integers(15, 61)), 1))
        field = _rotate(streaks, rng.uniform(0, 180))[:size, :size] + 0.3 * _octave_noise(rng, size, (4, 8))
    else:  # fabric: a weave of two sinusoids with jittered period, plus yarn noise
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        p1, p2 = rng.uniform(4, 12, 2)
        warp = np.sin(2 * np.pi * xx / p1) * np.sign(np.sin(np.pi * yy / p2))
        weft = np.sin(2 * np.pi * yy / p2) * np.sign(np.sin(np.pi * xx / p1))
        field = _rotate((warp + weft).astype(np.float32), rng.uniform(-20, 20)) + 0.5 * rng.standard_normal(
            (size, size)
        ).astype(np.float32)
        field = cv2.GaussianBlur(field, (0, 0), 0.8)
    return _standardize(field.astype(np.float32))


def _polyline(rng: np.random.Generator, size: int, jitter: float, start: np.ndarray | None = None) -> np.ndarray:
    """A random-walk polyline: smooth (scratch) for small jitter, ragged (crack) for large."""
    length = rng.uniform(0.15, 0.7) * size * (1.0 if start is None else 0.4)
    steps = int(rng.integers(6, 20))
    angle = rng.uniform(0, 2 * np.pi)
    point = rng.uniform(0.15, 0.85, 2) * size if start is None else start.astype(np.float64)
    points = [point]
    for _ in range(steps):
        angle += rng.normal(0, jitter)
        point = point + length / steps * np.array([np.cos(angle), np.sin(angle)])
        points.append(point)
    return np.round(np.array(points)).astype(np.int32)


def draw_defect(
    rng: np.random.Generator, kind: str, size: int, texture_std: float
) -> tuple[np.ndarray, np.ndarray, float]:
    """(soft shape 0..1, signed intensity change, sign: +1 brighter / -1 darker / 0 relief) of one defect."""
    shape = np.zeros((size, size), np.float32)
    amplitude = texture_std * rng.uniform(0.9, 2.0) + rng.uniform(0.02, 0.04)
    sign = rng.choice([-1.0, 1.0])
    if kind in ("scratch", "crack"):
        jitter = 0.08 if kind == "scratch" else 0.6
        width = int(rng.integers(1, 4))
        trunk = _polyline(rng, size, jitter)
        cv2.polylines(shape, [trunk], False, 1.0, width, cv2.LINE_AA)
        if kind == "crack":
            sign = -1.0  # cracks are dark gaps
            for _ in range(rng.integers(0, 3)):  # branches leave the trunk
                branch = _polyline(rng, size, jitter, start=trunk[rng.integers(len(trunk))])
                cv2.polylines(shape, [branch], False, 1.0, max(1, width - 1), cv2.LINE_AA)
        change = sign * amplitude * 1.5 * shape  # thin: a little stronger to be seen at all
    elif kind in ("spot", "stain", "dent"):
        center = rng.uniform(0.15, 0.85, 2) * size
        if kind == "spot":
            radius = rng.uniform(3, 12)
            blobs = [(center, radius * rng.uniform(0.6, 1.0), radius)]
        else:
            radius = rng.uniform(10, 45) if kind == "stain" else rng.uniform(8, 35)
            count = int(rng.integers(3, 8)) if kind == "stain" else 1
            blobs = [(center + rng.normal(0, radius * 0.5, 2), radius * rng.uniform(0.4, 1.0),
                      radius * rng.uniform(0.4, 1.0)) for _ in range(count)]
        for c, ry, rx in blobs:
            cv2.ellipse(shape, (int(c[0]), int(c[1])), (max(1, int(rx)), max(1, int(ry))), rng.uniform(0, 180), 0,
                        360, 1.0, -1, cv2.LINE_AA)
        shape = np.clip(cv2.GaussianBlur(shape, (0, 0), 1.0 if kind == "spot" else 2.5), 0, 1)
        if kind == "dent":  # lit from one side: one flank brighter, the other darker, the bottom slightly dark
            gy, gx = np.gradient(cv2.GaussianBlur(shape, (0, 0), radius / 4))
            light = rng.uniform(0, 2 * np.pi)
            relief = gx * np.cos(light) + gy * np.sin(light)
            relief = relief / (np.abs(relief).max() + 1e-6)
            change = amplitude * (1.4 * relief - 0.4 * shape)
            sign = 0.0
        else:
            change = sign * amplitude * (0.8 if kind == "stain" else 1.0) * shape
    else:
        raise EdgestackError(f"unknown defect kind {kind!r}; choose one of {', '.join(DEFECTS)}")
    return shape, change.astype(np.float32), float(sign)


def background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, str, float]:
    """(zero-centred gray field, texture name, texture std) of a defect-free surface."""
    texture = str(rng.choice(TEXTURES))
    contrast = rng.uniform(0.04, 0.12)
    gray = _texture(rng, texture, size) * contrast
    shade = _octave_noise(rng, size, (2, 3))  # uneven lighting
    gray += 0.04 * shade / (np.abs(shade).max() + 1e-6)
    return gray, texture, contrast


def to_rgb(rng: np.random.Generator, gray: np.ndarray) -> np.ndarray:
    """Tinted RGB uint8 with sensor noise from a zero-centred gray field."""
    size = gray.shape[0]
    base = rng.uniform(0.3, 0.7)
    tint = 1.0 + rng.uniform(-0.15, 0.15, 3).astype(np.float32)
    rgb = (base + gray)[:, :, None] * tint + rng.normal(0, rng.uniform(0.004, 0.015), (size, size, 3))
    return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)


def make_sample(seed: int, index: int, size: int = 256, negative_fraction: float = 0.3) -> Sample:
    """Sample `index` of the synthetic set `seed`: the same arguments always give the same pixels."""
    rng = np.random.default_rng([seed, index])
    negative = rng.random() < negative_fraction
    gray, texture, contrast = background(rng, size)

    mask = np.zeros((size, size), bool)
    kinds: list[str] = []
    if not negative:
        count = int(rng.choice([1, 2, 3], p=[0.7, 0.25, 0.05]))
        for _ in range(50):  # redraw until the area is CDS2K-like
            kinds = [str(rng.choice(DEFECTS)) for _ in range(count)]
            drawn = [draw_defect(rng, kind, size, contrast) for kind in kinds]
            mask = np.any([shape >= 0.5 for shape, _, _ in drawn], axis=0)
            if MIN_AREA <= mask.mean() <= MAX_AREA:
                break
        else:
            raise RuntimeError(f"synthetic sample {seed}/{index}: no defect draw within the area bounds")
        for _, change, _ in drawn:
            gray += change

    image = to_rgb(rng, gray)
    info = {"seed": seed, "index": index, "texture": texture, "defects": kinds, "area": float(mask.mean())}
    return Sample(image, mask.astype(np.uint8) * 255, info)


def write_synthetic(
    out: str | Path, count: int, seed: int = HELDOUT_SEED, size: int = 256, negative_fraction: float = 0.3,
    progress=None,
) -> dict[str, int]:
    """Write `count` samples in the CDS2K layout: Positive/{Image,GroundTruth}/ and Negative/Image/."""
    out = Path(out)
    if count < 1:
        raise EdgestackError(f"--count must be at least 1, got {count}")
    if not 0.0 <= negative_fraction <= 1.0:
        raise EdgestackError(f"--negative-fraction must be between 0 and 1, got {negative_fraction}")
    if size < 64:
        raise EdgestackError(f"--size must be at least 64 pixels (the models' smallest input), got {size}")
    from edgestack.runtime.images import write_image

    counts = {"positive": 0, "negative": 0}
    for index in range(count):
        sample = make_sample(seed, index, size, negative_fraction)
        name = f"synth_{seed}_{index:05d}.png"
        if sample.positive:
            write_image(out / "Positive" / "Image" / name, sample.image)
            (out / "Positive" / "GroundTruth").mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(out / "Positive" / "GroundTruth" / name), sample.mask)
            counts["positive"] += 1
        else:
            write_image(out / "Negative" / "Image" / name, sample.image)
            counts["negative"] += 1
        if progress:
            progress(index + 1, count)
    return counts
