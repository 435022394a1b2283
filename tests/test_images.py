"""Reading images: bit depths, channel orders and grayscale, from files, arrays and service uploads."""

import io

import cv2
import numpy as np
import pytest

from edgestack.errors import EdgestackError
from edgestack.runtime.images import decode_image, read_image
from edgestack.runtime.service import decode_upload


def rgb16(seed=0):
    return np.random.default_rng(seed).integers(0, 65536, (40, 50, 3), dtype=np.uint16)


def write(path, rgb):
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if rgb.ndim == 3 else rgb)
    return path


def test_16_bit_files_arrays_and_uploads_keep_the_top_8_bits_in_rgb_order(tmp_path):
    image = rgb16()
    path = write(tmp_path / "full.png", image)
    expected = (image >> 8).astype(np.uint8)
    np.testing.assert_array_equal(read_image(path), expected)
    np.testing.assert_array_equal(read_image(image), expected)
    np.testing.assert_array_equal(decode_upload(path.read_bytes(), max_pixels=10_000), expected)


def test_12_bit_data_in_16_bit_files_needs_its_bit_depth_and_is_never_darkened(tmp_path):
    twelve_bit = rgb16() >> 4  # what a 12-bit camera writes into a 16-bit PNG or TIFF: 0..4095
    expected = (twelve_bit >> 4).astype(np.uint8)
    for suffix in (".png", ".tiff"):
        path = write(tmp_path / f"mono12{suffix}", twelve_bit)
        with pytest.raises(EdgestackError, match=r"16-bit but its brightest pixel is 409\d .*--bit-depth 12"):
            read_image(path)
        np.testing.assert_array_equal(read_image(path, bit_depth=12), expected)
    upload = (tmp_path / "mono12.png").read_bytes()
    with pytest.raises(EdgestackError, match="brightest pixel"):
        decode_upload(upload, max_pixels=10_000)
    np.testing.assert_array_equal(decode_upload(upload, max_pixels=10_000, bit_depth=12), expected)
    with pytest.raises(EdgestackError, match="brightest pixel"):
        read_image(twelve_bit)
    np.testing.assert_array_equal(read_image(twelve_bit, bit_depth=12), expected)
    with pytest.raises(EdgestackError, match="more than 10 bits hold"):
        read_image(twelve_bit, bit_depth=10)  # the wrong depth is caught, not clipped
    with pytest.raises(EdgestackError, match="not one of 9..16"):
        read_image(twelve_bit, bit_depth=8)
    dark = np.full((8, 8, 3), 1000, np.uint16)  # a really dark 16-bit image, read as such on request
    np.testing.assert_array_equal(read_image(dark, bit_depth=16), np.full((8, 8, 3), 3, np.uint8))


def test_rgba_gray_and_float(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (30, 20, 3), dtype=np.uint8)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])
    cv2.imwrite(str(tmp_path / "rgba.png"), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"), rgb)
    gray = write(tmp_path / "gray.png", rgb[..., 0])
    with pytest.raises(EdgestackError, match="grayscale"):
        read_image(gray)
    np.testing.assert_array_equal(read_image(gray, gray_to_rgb=True), np.repeat(rgb[..., :1], 3, axis=2))
    with pytest.raises(EdgestackError, match="grayscale"):  # the service reads uploads as inspect reads files
        decode_upload(gray.read_bytes(), max_pixels=10_000)
    np.testing.assert_array_equal(decode_upload(gray.read_bytes(), 10_000, gray_to_rgb=True), read_image(gray, True))
    cv2.imwrite(str(tmp_path / "f.tiff"), rgb.astype(np.float32) / 255)
    with pytest.raises(EdgestackError, match="holds float32 pixels"):
        read_image(tmp_path / "f.tiff")
    np.testing.assert_array_equal(read_image(rgb.astype(np.float32) / 255), rgb)
    overshoot = cv2.resize(rgb.astype(np.float32) / 255, (40, 60), interpolation=cv2.INTER_LANCZOS4)
    assert overshoot.max() > 1 and (read_image(overshoot) == 255).any()  # clipped, as a resize makes it
    with pytest.raises(EdgestackError, match=r"float with values 0\.\.255, but float images hold 0\.\.1"):
        read_image(rgb.astype(np.float32))  # 0..255 levels: nearly white if clipped
    with pytest.raises(EdgestackError, match="could not be decoded"):
        decode_image(b"", "empty.png")


def test_a_gray_png_with_alpha_is_gray(tmp_path):
    """OpenCV spreads a gray+alpha PNG over BGRA; it is still a gray camera's image and needs --gray-to-rgb."""
    from PIL import Image

    gray = np.random.default_rng(2).integers(0, 256, (12, 9), dtype=np.uint8)
    path = tmp_path / "gray_alpha.png"
    Image.fromarray(np.dstack([gray, np.full_like(gray, 200)]), "LA").save(path)
    with pytest.raises(EdgestackError, match="grayscale"):
        read_image(path)
    with pytest.raises(EdgestackError, match="grayscale"):
        decode_upload(path.read_bytes(), max_pixels=10_000)
    np.testing.assert_array_equal(read_image(path, gray_to_rgb=True), np.repeat(gray[..., None], 3, axis=2))


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "WEBP"])
def test_an_animation_is_refused_not_judged_by_its_first_frame(tmp_path, fmt):
    """A defect on frame 2 of an animated PNG, GIF or WebP passed unseen: OpenCV decodes the first frame only."""
    from PIL import Image

    frames = [Image.fromarray(np.full((32, 32, 3), level, np.uint8)) for level in (10, 200)]
    path = tmp_path / f"burst.{fmt.lower()}"
    frames[0].save(path, fmt, save_all=True, append_images=frames[1:])
    with pytest.raises(EdgestackError, match="is an animation of 2 frames, and only one image per file is judged"):
        read_image(path)
    with pytest.raises(EdgestackError, match="is an animation of 2 frames"):
        decode_upload(path.read_bytes(), max_pixels=10_000)
    frames[1].save(path, fmt)  # one frame: an image like any other
    assert read_image(path).shape == (32, 32, 3)


@pytest.mark.parametrize("byteorder,bigtiff", [("<", False), (">", False), ("<", True), (">", True)])
def test_a_multi_page_tiff_is_refused_not_judged_by_its_first_page(tmp_path, byteorder, bigtiff):
    import tifffile  # scikit-image's TIFF writer: both byte orders and BigTIFF

    good, defective = np.random.default_rng(2).integers(0, 256, (2, 30, 20, 3), dtype=np.uint8)
    single, lot = tmp_path / "single.tif", tmp_path / "lot.tif"
    tifffile.imwrite(single, good, byteorder=byteorder, bigtiff=bigtiff, photometric="rgb")
    np.testing.assert_array_equal(read_image(single), good)
    with tifffile.TiffWriter(lot, byteorder=byteorder, bigtiff=bigtiff) as writer:
        for page in (good, defective):
            writer.write(page, photometric="rgb")
    with pytest.raises(EdgestackError, match="TIFF with several pages.*save each page as its own file"):
        read_image(lot)
    # The service reads an upload's size with Pillow first, which cannot open big-endian BigTIFF at all.
    refused = "not a readable image" if bigtiff and byteorder == ">" else "TIFF with several pages"
    with pytest.raises(EdgestackError, match=refused):
        decode_upload(lot.read_bytes(), max_pixels=10_000)


def _with_orientation(pixels: np.ndarray, orientation: int, fmt: str = "PNG") -> bytes:
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt, exif=exif)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "TIFF"])  # OpenCV turns a TIFF itself, and the others not
@pytest.mark.parametrize("orientation", range(1, 9))
def test_files_are_read_upright_as_a_viewer_shows_them(orientation, fmt, tmp_path):
    # A phone photo stored sideways with an EXIF orientation: a mask drawn on it as displayed was refused as the
    # wrong size, or (square) filled the wrong place; boxes were in the stored frame. Image, upload, hole mask
    # and training mask are all turned alike, as PIL's exif_transpose turns them.
    from PIL import Image, ImageOps

    from edgestack.runtime.inpaint import read_hole_mask
    from edgestack.train.datasets import read_mask

    blocks = np.random.default_rng(orientation).integers(0, 2, (3, 5, 3), np.uint8) * 255  # survive JPEG
    pixels = np.kron(blocks, np.ones((10, 10, 1), np.uint8))
    data = _with_orientation(pixels, orientation, fmt)
    shown = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))
    assert np.array_equal(decode_image(data, "photo") > 127, shown > 127)
    assert np.array_equal(decode_upload(data, 10_000) > 127, shown > 127)
    hole = np.zeros((30, 50), np.uint8)
    hole[:, :10] = 255  # the stored left edge
    (tmp_path / "mask").write_bytes(_with_orientation(hole, orientation, fmt))
    shown_mask = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO((tmp_path / "mask").read_bytes())))) > 127
    assert np.array_equal(read_mask(tmp_path / "mask") > 0, shown_mask)
    assert np.array_equal(read_hole_mask(tmp_path / "mask", shown.shape[:2]), ~shown_mask)


def test_every_class_of_ade20k_has_its_own_overlay_colour():
    from edgestack.runtime.images import palette

    for classes in (5, 150, 256):
        colours = palette(classes)
        assert colours.dtype == np.uint8 and len({tuple(c) for c in colours}) == classes
