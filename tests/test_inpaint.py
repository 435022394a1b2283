"""`edgestack inpaint` on a mat-edge bundle: any image size, mask conventions, seeds, bad input."""

import cv2
import numpy as np
import pytest

from edgestack.cli import main
from edgestack.errors import EdgestackError
from edgestack.models.mat.masks import random_mask
from edgestack.runtime import load
from edgestack.runtime.inpaint import inpaint, read_hole_mask

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine(mat_edge_bundle):
    return load(mat_edge_bundle, backend="onnxruntime")


def scene(height, width, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, (height, width, 3), dtype=np.uint8)


def hole_mask(height, width):
    keep = np.full((height, width), 255, np.uint8)
    keep[height // 4 : height // 2, width // 3 : width // 2] = 0
    return keep


@pytest.mark.parametrize("size", [(300, 200), (256, 256), (400, 600)])
def test_any_size_fills_only_the_hole(engine, size):
    image, keep = scene(*size), hole_mask(*size)
    rgb, out, hole = inpaint(engine, image, keep)
    assert out.shape == image.shape and np.array_equal(rgb, image)
    assert np.array_equal(hole, keep == 0)
    assert np.array_equal(out[~hole], image[~hole])  # known pixels are the input's own
    assert not np.array_equal(out[hole], image[hole])


@pytest.mark.parametrize("edge", ["right", "bottom", "interior"])
def test_the_fill_never_sees_what_is_under_the_hole(engine, edge):
    # The image is padded by reflection to MAT's tile size: a hole at the right or bottom edge was mirrored into
    # the padding as known context, so the object being removed shaped its own fill.
    image, keep = scene(300, 400), np.full((300, 400), 255, np.uint8)
    box = {"right": np.s_[100:160, 340:], "bottom": np.s_[240:, 100:180], "interior": np.s_[100:160, 100:180]}[edge]
    keep[box] = 0
    other = image.copy()
    other[box] = 255 - other[box]  # something else under the hole
    fill = inpaint(engine, image, keep, seed=0)[1][box]
    assert np.array_equal(fill, inpaint(engine, other, keep, seed=0)[1][box])


def test_gray_and_12_bit_images_with_their_options(engine):
    gray = scene(256, 256)[..., 0]
    keep = hole_mask(256, 256)
    with pytest.raises(EdgestackError, match="grayscale"):
        inpaint(engine, gray, keep)
    rgb, out, hole = inpaint(engine, gray, keep, gray_to_rgb=True)
    assert np.array_equal(out[~hole], np.repeat(gray[..., None], 3, axis=2)[~hole])
    deep = np.repeat(gray[..., None], 3, axis=2).astype(np.uint16) << 4  # 12-bit data in 16 bits
    with pytest.raises(EdgestackError, match="--bit-depth 12"):
        inpaint(engine, deep, keep)
    assert np.array_equal(inpaint(engine, deep, keep, bit_depth=12)[1], inpaint(engine, rgb, keep)[1])


def test_seed_changes_the_fill_and_is_repeatable(engine):
    image, keep = scene(256, 256), hole_mask(256, 256)
    a = inpaint(engine, image, keep, seed=1, noise_mode="random")[1]
    b = inpaint(engine, image, keep, seed=1, noise_mode="random")[1]
    c = inpaint(engine, image, keep, seed=2, noise_mode="random")[1]
    assert np.array_equal(a, b) and not np.array_equal(a, c)


class Recorded:
    """The engine, with the mask of every window it is given kept."""

    def __init__(self, engine):
        self.engine, self.masks = engine, []

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def __call__(self, **inputs):
        self.masks.extend(inputs["mask"][:, 0])
        return self.engine(**inputs)


def test_every_hole_region_is_filled_with_context_on_every_side(engine):
    # A fixed grid of tiles cut a hole at tile edges (a seam where separate fills met) and fed the tile lying
    # inside it no known pixel at all. Each region now gets a window around it: a wide one (280 px in a 256-px
    # model) its own, shrunk to the model's size, and two small ones nearby share one.
    image = scene(256, 768)
    keep = np.full((256, 768), 255, np.uint8)
    keep[60:200, 240:520] = 0  # across where the grid's tiles met
    keep[20:40, 20:40] = keep[60:80, 60:80] = 0
    recorded = Recorded(engine)
    _, out, hole = inpaint(recorded, image, keep)
    assert len(recorded.masks) == 2 and all(mask.shape == (256, 256) for mask in recorded.masks)
    assert all(0.3 < mask.mean() < 1 for mask in recorded.masks)  # known context in every window
    assert np.array_equal(out[~hole], image[~hole]) and not np.array_equal(out[hole], image[hole])


def test_a_regions_fill_does_not_depend_on_holes_elsewhere(engine):
    # The random inputs were drawn for a whole batch of tiles: a second hole far away changed the first's fill.
    image = scene(256, 768)
    one = np.full((256, 768), 255, np.uint8)
    one[40:80, 40:80] = 0
    two = one.copy()
    two[150:200, 600:650] = 0
    a = inpaint(engine, image, one, seed=3, noise_mode="random")[1]
    b = inpaint(engine, image, two, seed=3, noise_mode="random")[1]
    assert np.array_equal(a[40:80, 40:80], b[40:80, 40:80])


def test_mask_conventions():
    keep = hole_mask(64, 64)
    assert np.array_equal(read_hole_mask(255 - keep, (64, 64), invert=True), keep == 0)
    assert np.array_equal(read_hole_mask((keep > 0).astype(np.float32), (64, 64)), keep == 0)
    free_form = random_mask(64, seed=3)[0].numpy()  # 1 = valid, as the model's mask input
    assert read_hole_mask(free_form, (64, 64)).mean() == pytest.approx(1 - free_form.mean())
    labels = (keep > 0).astype(np.uint8)  # a 0/1 label PNG: read as 0 = hole, 1 = keep, not as nearly all hole
    assert np.array_equal(read_hole_mask(labels, (64, 64)), keep == 0)
    assert np.array_equal(read_hole_mask(labels, (64, 64), invert=True), keep > 0)
    with pytest.raises(EdgestackError, match="with --invert-mask white marks the hole: drop it"):
        read_hole_mask(np.zeros((64, 64), np.uint8), (64, 64), invert=True)  # not "pass --invert-mask" again


def test_a_mask_drawn_in_its_alpha_channel_is_refused_by_name(tmp_path):
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., 3] = hole_mask(64, 64)  # what an editor's transparent brush leaves: every colour the same
    cv2.imwrite(str(tmp_path / "mask.png"), rgba)
    with pytest.raises(EdgestackError, match="marks its hole in the alpha channel only; save it as a grayscale"):
        read_hole_mask(tmp_path / "mask.png", (64, 64))


@pytest.mark.parametrize(
    "mask, message",
    [
        (np.full((64, 64), 255, np.uint8), "no hole"),
        (np.zeros((64, 64), np.uint8), "whole image as hole"),
        (np.full((64, 64), 0.5, np.float32), "must be 0 or 1"),
        (np.zeros((32, 64), np.uint8), "must match"),
        (np.zeros((64, 64), np.int32), "dtype"),
    ],
)
def test_bad_masks(mask, message):
    with pytest.raises(EdgestackError, match=message):
        read_hole_mask(mask, (64, 64))


def test_cli_writes_result_and_side_by_side(mat_edge_bundle, tmp_path, capsys):
    cv2.imwrite(str(tmp_path / "in.png"), scene(200, 300))
    cv2.imwrite(str(tmp_path / "mask.png"), hole_mask(200, 300))
    out = tmp_path / "out.png"
    argv = ["inpaint", "--bundle", str(mat_edge_bundle), "--image", str(tmp_path / "in.png"), "--mask",
            str(tmp_path / "mask.png"), "--out", str(out), "--backend", "onnxruntime"]
    assert main(argv) == 0
    assert cv2.imread(str(out)).shape == (200, 300, 3)
    assert cv2.imread(str(tmp_path / "out.side_by_side.png")).shape == (200, 3 * 300 + 16, 3)
    cv2.imwrite(str(tmp_path / "small.png"), np.zeros((100, 50), np.uint8))
    argv[argv.index("--mask") + 1] = str(tmp_path / "small.png")
    argv[argv.index("--out") + 1] = str(tmp_path / "never.png")
    assert main(argv) == 2
    assert "must match" in capsys.readouterr().err and not (tmp_path / "never.png").exists()
