"""Images in and out: reading with clear errors, preprocessing from meta.json, segmentation overlays."""

from __future__ import annotations

import contextlib
import errno
import io
import struct
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edgestack.errors import EdgestackError

ImageLike = str | Path | np.ndarray
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}  # what inspect, training, eval and
# quantize read from folders: one set, so a line saving .webp is not judged by inspect yet unseen by training
FLOAT_OVERSHOOT = 0.5  # how far past 0..1 a float image may reach (cubic/Lanczos resizes overshoot) before refusal


def read_image(source: ImageLike, gray_to_rgb: bool = False, bit_depth: int | None = None) -> np.ndarray:
    """An RGB uint8 HxWx3 image from a path or an array (uint8 0..255, uint16 or float 0..1, RGB order).

    `bit_depth`: the camera's bit depth when 16-bit pixels hold fewer significant bits (10, 12, 14)."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_dir():
            raise EdgestackError(f"image {path} is a folder; pass one image file (`edgestack inspect` takes folders)")
        if not path.is_file():
            raise EdgestackError(f"image {path} does not exist; check the path")
        return decode_image(np.fromfile(str(path), dtype=np.uint8), str(path), gray_to_rgb, bit_depth)
    if not isinstance(source, np.ndarray):
        raise EdgestackError(f"cannot read an image from {type(source).__name__}; pass a file path or an HxWx3 array")
    name = f"array of shape {source.shape}"
    if source.size == 0:
        raise EdgestackError(f"image {name} is empty")
    image = source
    if image.dtype.kind == "f":
        if not np.isfinite(image).all():
            raise EdgestackError(f"image {name} holds NaN or Inf values")
        low, high = float(image.min()), float(image.max())
        # A resize's overshoot is clipped; 0..255 levels in a float array would turn nearly white.
        if low < -FLOAT_OVERSHOOT or high > 1 + FLOAT_OVERSHOOT:
            raise EdgestackError(f"image {name} is float with values {low:g}..{high:g}, but float images hold 0..1; "
                                 "divide 0..255 levels by 255, or pass the uint8 array")
        image = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]
    return _rgb8(image, name, gray_to_rgb, bit_depth)


EXIF_ORIENTATION = 0x0112  # the EXIF tag a camera or phone sets instead of rotating the pixels


def decode_file(buffer: np.ndarray) -> np.ndarray | None:
    """The pixels of an image file's bytes (any depth and channels, as stored; None when undecodable), turned
    upright as a viewer shows them: a mask drawn on the displayed photo then fits it, and a defect's box is where
    the user sees it. Every image, mask and upload is read through here, so all of them are turned alike."""
    pixels = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED) if buffer.size else None
    return None if pixels is None else upright(pixels, exif_orientation(buffer))


def exif_orientation(buffer: np.ndarray) -> int:
    """The EXIF orientation (1..8) that OpenCV leaves to us in an image file's bytes; 1 (as stored) when there is
    none. OpenCV turns TIFFs itself, even unchanged, and leaves JPEG, PNG and WebP as stored."""
    head = buffer[:12].tobytes()
    if not (head.startswith(b"\xff\xd8") or head.startswith(b"\x89PNG") or head[8:12] == b"WEBP"):
        return 1
    data = buffer.tobytes()
    if head.startswith(b"\x89PNG") and b"eXIf" not in data:  # PIL would decode every pixel to look
        return 1
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:  # a JPEG's header and EXIF segment only
            orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # whatever PIL cannot parse, OpenCV decoded: read it as stored
        return 1
    return orientation if orientation in range(1, 9) else 1


def upright(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """`pixels` (H, W[, C]) as shown under EXIF `orientation`: 2-4 mirror or turn half-way, 5-8 also swap the axes."""
    turned = {
        1: lambda a: a,
        2: lambda a: a[:, ::-1],  # mirrored left-right
        3: lambda a: a[::-1, ::-1],  # upside down
        4: lambda a: a[::-1],  # mirrored top-bottom
        5: lambda a: a.swapaxes(0, 1),  # mirrored along the main diagonal
        6: lambda a: np.rot90(a, -1),  # stored turned a quarter left: turn it right
        7: lambda a: np.rot90(a, 2).swapaxes(0, 1),  # mirrored along the other diagonal
        8: lambda a: np.rot90(a, 1),  # stored turned a quarter right: turn it left
    }[orientation](pixels)
    return np.ascontiguousarray(turned)


def decode_image(data: bytes | np.ndarray, name: str, gray_to_rgb: bool = False,
                 bit_depth: int | None = None) -> np.ndarray:
    """RGB uint8 HxWx3 from the bytes of an image file (PNG/JPEG/BMP/TIFF; 8 or 16 bit; gray, RGB or RGBA)."""
    buffer = np.frombuffer(data, np.uint8) if isinstance(data, bytes) else data
    image = decode_file(buffer)
    if image is None:
        raise EdgestackError(f"image {name} could not be decoded (corrupt or not an image); use PNG/JPEG/BMP/TIFF")
    if _tiff_has_more_pages(buffer):  # OpenCV decodes the first page only: a part on page 2 would pass unseen
        raise EdgestackError(f"image {name} is a TIFF with several pages, and only one image per file is judged; "
                             "save each page as its own file")
    frames = _animation_frames(buffer)
    if frames > 1:  # OpenCV decodes the first frame only, as of a multi-page TIFF
        raise EdgestackError(f"image {name} is an animation of {frames} frames, and only one image per file is "
                             "judged; save each frame as its own file")
    if image.dtype.kind == "f":  # a float file says nothing of its range (0..1? 0..255? raw counts?)
        raise EdgestackError(f"image {name} holds {image.dtype} pixels; save it as an 8- or 16-bit PNG or TIFF")
    if image.dtype not in (np.uint8, np.uint16):  # signed TIFFs: OpenCV's colour conversions refuse them
        raise EdgestackError(f"image {name} holds signed {image.dtype} pixels; save it as an unsigned 8- or 16-bit "
                             "PNG or TIFF")
    if image.ndim == 3 and image.shape[2] == 4 and _png_gray_with_alpha(buffer):
        image = image[:, :, 0]  # OpenCV spreads gray over BGR: it is gray, and a gray image is taken only as such
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return _rgb8(image, name, gray_to_rgb, bit_depth)


PNG_GRAY_WITH_ALPHA = 4  # the colour type in a PNG's header (byte 25): 0 gray, 2 RGB, 3 palette, 4 gray+alpha, 6 RGBA


def _png_gray_with_alpha(buffer: np.ndarray) -> bool:
    return buffer[:8].tobytes() == b"\x89PNG\r\n\x1a\n" and buffer.size > 25 and buffer[25] == PNG_GRAY_WITH_ALPHA


def _animation_frames(buffer: np.ndarray) -> int:
    """Frames of an animated PNG (an acTL chunk before the pixels), GIF or WebP (VP8X with the animation flag),
    as PIL reads them from the file's header; 1 for every other image, which is not opened twice."""
    head = buffer[:21].tobytes()
    if head.startswith(b"\x89PNG"):
        animated = _png_has_actl(buffer)
    else:
        animated = head.startswith(b"GIF8") or (head[8:16] == b"WEBPVP8X" and len(head) > 20 and head[20] & 0x02)
    if not animated:
        return 1
    from PIL import Image

    try:
        with Image.open(io.BytesIO(buffer.tobytes())) as image:
            return int(getattr(image, "n_frames", 1))
    except Exception:  # whatever PIL cannot parse, OpenCV decoded: one image
        return 1


def _png_has_actl(buffer: np.ndarray) -> bool:
    """Whether a PNG has an acTL chunk, which APNG puts before the first IDAT: only the chunk headers up to the
    pixels are read, not a copy of the whole file."""
    position = 8  # past the signature; each chunk: length (4, big-endian), type (4), data, CRC (4)
    while position + 8 <= buffer.size:
        kind = buffer[position + 4 : position + 8].tobytes()
        if kind == b"acTL":
            return True
        if kind in (b"IDAT", b"IEND"):
            return False
        position += 12 + int.from_bytes(buffer[position : position + 4].tobytes(), "big")
    return False


def _tiff_has_more_pages(buffer: np.ndarray) -> bool:
    """Whether a TIFF (classic or BigTIFF) links a second image file directory after its first."""
    data = buffer[:16].tobytes()
    order = {b"II": "<", b"MM": ">"}.get(data[:2])
    if order is None or len(data) < 16:
        return False
    try:
        magic = struct.unpack_from(order + "H", data, 2)[0]
        if magic == 42:  # counts are 2 bytes, entries 12, offsets 4
            first = struct.unpack_from(order + "I", data, 4)[0]
            entries = struct.unpack_from(order + "H", buffer, first)[0]
            return struct.unpack_from(order + "I", buffer, first + 2 + 12 * entries)[0] != 0
        if magic == 43:  # BigTIFF: counts and offsets are 8 bytes, entries 20
            first = struct.unpack_from(order + "Q", data, 8)[0]
            entries = struct.unpack_from(order + "Q", buffer, first)[0]
            return struct.unpack_from(order + "Q", buffer, first + 8 + 20 * entries)[0] != 0
    except struct.error:  # a directory past the end: OpenCV read what it could, there is no second page to find
        pass
    return False


def _rgb8(image: np.ndarray, name: str, gray_to_rgb: bool, bit_depth: int | None) -> np.ndarray:
    if image.dtype == np.uint16:
        image = (image >> (_significant_bits(image, name, bit_depth) - 8)).astype(np.uint8)
    if image.dtype != np.uint8:
        raise EdgestackError(f"image {name} has dtype {image.dtype}; use uint8 (0..255) or float (0..1)")
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        if not gray_to_rgb:
            raise EdgestackError(
                f"image {name} is grayscale but the model expects RGB; convert it, or pass --gray-to-rgb "
                "(gray_to_rgb=True) to replicate the channel"
            )
        image = np.repeat(image.reshape(image.shape[0], image.shape[1], 1), 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise EdgestackError(f"image {name} has shape {image.shape}; expected HxWx3 RGB")
    return np.ascontiguousarray(image)


def check_bit_depth(bit_depth: int | None) -> None:
    if bit_depth is not None and not 9 <= bit_depth <= 16:
        raise EdgestackError(f"bit depth {bit_depth} is not one of 9..16 (the significant bits of 16-bit pixels)")


def _significant_bits(image: np.ndarray, name: str, bit_depth: int | None) -> int:
    """Bits a 16-bit image's values use: `bit_depth` when given (checked), else 16. 10/12-bit camera data is
    often stored in 16-bit files: read as 16-bit it turns nearly black, and the model passes every part as OK."""
    peak = int(image.max())
    if bit_depth is None:
        if peak < 4096:
            raise EdgestackError(
                f"image {name} is 16-bit but its brightest pixel is {peak} (< 4096: 10- or 12-bit camera data?); "
                "read as 16-bit it would be nearly black. Pass the camera's bit depth: --bit-depth 12 "
                "(bit_depth=12), or 16 if it really is a dark 16-bit image")
        return 16
    check_bit_depth(bit_depth)
    if peak >= 1 << bit_depth:
        raise EdgestackError(f"image {name} has a pixel value {peak}, more than {bit_depth} bits hold; "
                             "check the camera's bit depth")
    return bit_depth


def check_min_size(image: np.ndarray, preprocess: dict[str, Any], name: str = "image") -> None:
    height, width = image.shape[:2]
    min_size = int(preprocess.get("min_size", 1))
    if height < min_size or width < min_size:
        raise EdgestackError(
            f"{name} is {width}x{height}; this model needs at least {min_size}x{min_size}. Use a larger image"
        )


def to_tensor(image: np.ndarray, preprocess: dict[str, Any], name: str = "image") -> np.ndarray:
    """RGB uint8 HxWx3 -> float32 1x3xHxW as the model was trained: x*scale, then (x-mean)/std or +offset."""
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
        # float 0..1 would be 255x too dark (no defect), 16-bit levels 257x too bright (all defect)
        shape, dtype = getattr(image, "shape", None), getattr(image, "dtype", type(image).__name__)
        raise EdgestackError(f"{name}: to_tensor takes an RGB uint8 HxWx3 array, got {dtype} of shape {shape}; "
                             "read_image(image) makes one of a file or of any image array")
    check_min_size(image, preprocess, name)
    x = image.astype(np.float32) * np.float32(preprocess.get("scale", 1 / 255))
    if "mean" in preprocess:
        x = (x - np.asarray(preprocess["mean"], np.float32)) / np.asarray(preprocess["std"], np.float32)
    x = x + np.float32(preprocess.get("offset", 0.0))
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def palette(num_classes: int) -> np.ndarray:
    """A fixed, well-spread RGB colour per class (golden-ratio hues), converted in float: OpenCV's 8-bit HSV has
    180 hues, where 5 of ADE20K's 150 classes shared their colour with another."""
    hues = (np.arange(num_classes) * 0.618033988749895) % 1.0
    hsv = np.stack([hues * 360, np.full(num_classes, 200 / 255), np.full(num_classes, 230 / 255)], axis=1)
    return (cv2.cvtColor(hsv[None].astype(np.float32), cv2.COLOR_HSV2RGB)[0] * 255 + 0.5).astype(np.uint8)


def overlay(image: np.ndarray, class_map: np.ndarray, num_classes: int, alpha: float = 0.5) -> np.ndarray:
    colours = palette(num_classes)[class_map]
    return (image.astype(np.float32) * (1 - alpha) + colours.astype(np.float32) * alpha).astype(np.uint8)


def write_image(path: str | Path, image_rgb: np.ndarray) -> None:
    path = Path(path)
    try:
        ok, encoded = cv2.imencode(path.suffix or ".png", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR))
    except cv2.error:  # OpenCV has no encoder for this extension
        ok = False
    if not ok:
        raise EdgestackError(f"cannot encode an image as {path.suffix!r}; use .png or .jpg for {path}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        encoded.tofile(str(path))
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO):  # a cut file: no picture, unreferenced
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
        raise EdgestackError(f"cannot write {path}: {exc.strerror or exc}; choose a writable folder with space") \
            from None
