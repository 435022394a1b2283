"""edgestack.train: synthetic generator, CDS2K-style folders and their bad inputs, loss, metrics, train/eval CLI."""

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from edgestack.cli import main
from edgestack.errors import EdgestackError
from edgestack.train import loop, synthetic
from edgestack.train.datasets import (
    DefectDataset,
    Record,
    augment,
    generate,
    jitter,
    load_pair,
    read_mask,
    scan_folder,
    seed_worker,
    split,
    to_tensors,
)
from edgestack.train.evaluate import by_kind_and_texture
from edgestack.train.loop import ship_weights
from edgestack.train.losses import FALSE_ALARM_WEIGHT, boundary_weight, structure_loss
from edgestack.train.metrics import DefectMetrics, defect_contrast, is_ng


def test_synthetic_is_deterministic_and_cds2k_like():
    a, b = synthetic.make_sample(3, 7), synthetic.make_sample(3, 7)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert not np.array_equal(a.image, synthetic.make_sample(3, 8).image)
    samples = [synthetic.make_sample(0, i) for i in range(40)]
    positives = [s for s in samples if s.positive]
    assert 0 < len(positives) < 40  # both kinds
    for s in samples:
        assert s.image.shape == (256, 256, 3) and s.image.dtype == np.uint8
        assert set(np.unique(s.mask)) <= {0, 255}
    for s in positives:
        assert synthetic.MIN_AREA <= (s.mask > 0).mean() <= synthetic.MAX_AREA
    assert {s.info["texture"] for s in samples} & set(synthetic.REAL_TEXTURES)  # skimage's textures load offline


def test_synthetic_defects_are_low_contrast():
    # The defect region's mean differs from its surroundings by only a few grey levels: concealed, not salient.
    s = next(s for i in range(50) if (s := synthetic.make_sample(0, i)).positive and "stain" in s.info["defects"])
    gray = s.image.mean(axis=2)
    inside, outside = gray[s.mask > 0], gray[s.mask == 0]
    assert abs(inside.mean() - outside.mean()) < 2.5 * outside.std() + 10


@pytest.fixture
def cds2k(tmp_path):
    counts = synthetic.write_synthetic(tmp_path / "set", 12, seed=5, size=64)
    return tmp_path / "set", counts


def test_write_and_scan_cds2k_layout(cds2k):
    root, counts = cds2k
    scan = scan_folder(root)
    assert scan.layout == "cds2k" and not scan.skipped
    assert len(scan.records) == counts["positive"] + counts["negative"] == 12
    assert sum(r.mask is not None for r in scan.records) == counts["positive"]
    image, mask = load_pair(next(r for r in scan.records if r.mask is not None))
    assert image.shape == (64, 64, 3) and mask.shape == (64, 64) and mask.max() == 255


def test_plain_layout_and_binarisation(tmp_path):
    (tmp_path / "image").mkdir()
    (tmp_path / "mask").mkdir()
    cv2.imwrite(str(tmp_path / "image" / "a.jpg"), np.full((64, 64, 3), 90, np.uint8))
    mask = np.zeros((64, 64), np.uint8)
    mask[10:20] = 255
    mask[9] = 128  # anti-aliased edge rows (3% of pixels): at the threshold is background, above it defect
    mask[20] = 129
    cv2.imwrite(str(tmp_path / "mask" / "a.png"), mask)
    scan = scan_folder(tmp_path)
    assert scan.layout == "plain" and len(scan.records) == 1
    _, loaded = load_pair(scan.records[0])
    assert (loaded[10:21] == 255).all() and loaded[:10].max() == 0 and loaded[21:].max() == 0


def test_names_pair_whatever_their_unicode_normal_form(tmp_path):
    (tmp_path / "image").mkdir()
    (tmp_path / "mask").mkdir()
    mask = np.zeros((64, 64), np.uint8)
    mask[10:20] = 255
    # "Kratzer_é": the image's name typed on Linux (NFC), the mask's copied through macOS (NFD: e + accent)
    cv2.imencode(".png", np.full((64, 64, 3), 90, np.uint8))[1].tofile(str(tmp_path / "image" / "Kratzer_\u00e9.png"))
    cv2.imencode(".png", mask)[1].tofile(str(tmp_path / "mask" / "Kratzer_e\u0301.png"))
    scan = scan_folder(tmp_path)
    assert len(scan.records) == 1 and scan.records[0].mask is not None and not scan.skipped


def test_bad_files_are_skipped_and_reported(cds2k, caplog):
    root, counts = cds2k
    positive = root / "Positive"
    cv2.imwrite(str(positive / "Image" / "unpaired.png"), np.zeros((64, 64, 3), np.uint8))
    cv2.imwrite(str(positive / "GroundTruth" / "orphan.png"), np.zeros((64, 64), np.uint8))
    cv2.imwrite(str(positive / "Image" / "small.png"), np.zeros((64, 64, 3), np.uint8))
    cv2.imwrite(str(positive / "GroundTruth" / "small.png"), np.zeros((32, 64), np.uint8))
    cv2.imwrite(str(positive / "Image" / "soft.png"), np.zeros((64, 64, 3), np.uint8))
    cv2.imwrite(str(positive / "GroundTruth" / "soft.png"), np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1)))
    (root / "Negative" / "Image" / "broken.png").write_bytes(b"not an image")
    scan = scan_folder(root)
    reasons = {path.split("/")[-1]: reason for path, reason in scan.skipped}
    assert "no mask with the same name" in reasons["unpaired.png"]
    assert "mask without an image" in reasons["orphan.png"]
    assert "must have their image's size" in reasons["small.png"]
    assert "not binary" in reasons["soft.png"]
    assert "could not be decoded" in reasons["broken.png"]
    assert len(scan.records) == 12  # the good ones all kept
    assert "skipping" in caplog.text and "orphan.png" in caplog.text


def test_webp_parts_links_to_nowhere_and_unreadable_files(cds2k, monkeypatch):
    """A .webp part is read as inspect reads it (it vanished, or was called a mask without an image); a link to
    an unmounted share, and a file that cannot be read, are skipped and named, not dropped or fatal."""
    from edgestack.train import datasets

    root, _ = cds2k
    negatives = root / "Negative" / "Image"
    part = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    cv2.imwrite(str(negatives / "lot7.webp"), part, [cv2.IMWRITE_WEBP_QUALITY, 101])  # lossless
    (negatives / "share.png").symlink_to(root / "unmounted" / "share.png")
    cv2.imwrite(str(negatives / "locked.png"), part)
    read = datasets.read_image

    def permission_denied(path, *args, **kwargs):
        if Path(path).name == "locked.png":
            raise PermissionError(13, "Permission denied", str(path))
        return read(path, *args, **kwargs)

    monkeypatch.setattr(datasets, "read_image", permission_denied)
    scan = scan_folder(root)
    reasons = {Path(path).name: reason for path, reason in scan.skipped}
    assert "lot7" in {r.image.stem for r in scan.records}
    assert "links to" in reasons["share.png"] and "which does not exist" in reasons["share.png"]
    assert "locked.png cannot be read (Permission denied)" in reasons["locked.png"]
    assert len(scan.records) == 13


def test_masks_are_read_as_labelling_tools_write_them(cds2k):
    # 0/1 labels, a 12-bit tool's 16-bit 0/4095, an RGBA mask (opaque alpha): the defect each marks, not nothing.
    root, _ = cds2k
    positive = root / "Positive"
    defect = np.zeros((64, 64), np.uint8)
    defect[20:30, 20:30] = 1
    faint = defect * 67
    for name, mask in [("ones", defect), ("twelve", defect.astype(np.uint16) * 4095),
                       ("rgba", np.dstack([defect * 255] * 3 + [np.full((64, 64), 255, np.uint8)])),
                       ("faint", faint), ("empty", np.zeros((64, 64), np.uint8))]:
        cv2.imwrite(str(positive / "Image" / f"{name}.png"), np.full((64, 64, 3), 90, np.uint8))
        cv2.imwrite(str(positive / "GroundTruth" / f"{name}.png"), mask)
    cv2.imwrite(str(root / "Negative" / "Image" / "twin.png"), np.full((64, 64, 3), 90, np.uint8))
    cv2.imwrite(str(root / "Negative" / "Image" / "twin.jpg"), np.full((64, 64, 3), 90, np.uint8))
    scan = scan_folder(root)
    records = {r.image.stem: r for r in scan.records}
    for name in ("ones", "twelve", "rgba"):
        _, mask = load_pair(records[name])
        assert mask[20:30, 20:30].min() == 255 and mask.sum() == 100 * 255, name
    reasons = {Path(path).name: reason for path, reason in scan.skipped}
    assert "not binary" in reasons["faint.png"] and "the brightest is 67" in reasons["faint.png"]
    assert "marks no defect, yet it is under Positive/" in reasons["empty.png"]  # it would count as a negative
    assert reasons["twin.png"] == "twin.jpg has the same name; rename one of them" and "twin" in records
    assert len(scan.records) == 12 + 3 + 1


def test_inverted_masks_are_refused_and_an_alpha_painted_one_is_read_by_its_alpha(tmp_path, caplog):
    # Read as drawn, both marked nearly the whole image as defect: the inverted one (defect black on white) and
    # the one painted as opacity over plain white. A folder whose masks are mostly so is drawn inverted; one such
    # mask among right ones is a crop inside a large defect, and kept.
    defect = np.zeros((64, 64), np.uint8)
    defect[20:30, 20:30] = 255
    for folder, inverted in (("line", 3), ("crops", 1)):
        for sub in ("image", "mask"):
            (tmp_path / folder / sub).mkdir(parents=True)
        for i in range(4):
            part = np.random.default_rng(i).integers(0, 256, (64, 64, 3), dtype=np.uint8)
            cv2.imwrite(str(tmp_path / folder / "image" / f"p{i}.png"), part)
            cv2.imwrite(str(tmp_path / folder / "mask" / f"p{i}.png"), 255 - defect if i < inverted else defect)
    line = scan_folder(tmp_path / "line")
    assert [Path(r.image).name for r in line.records] == ["p3.png"] and line.positives == 1
    assert "p0.png" in line.skipped[0][0] and "marks 98% of the image as defect, its whole border included, as most " \
        "masks here do: inverted?" in line.skipped[0][1]
    crops = scan_folder(tmp_path / "crops")
    assert len(crops.records) == 4 and crops.positives == 4 and "kept, as most masks here are not inverted" in \
        caplog.text
    cv2.imwrite(str(tmp_path / "alpha.png"), np.dstack([np.full((64, 64, 3), 255, np.uint8), defect]))
    np.testing.assert_array_equal(read_mask(tmp_path / "alpha.png"), defect)
    cv2.imwrite(str(tmp_path / "opaque.png"), np.dstack([np.zeros((64, 64, 3), np.uint8), np.full_like(defect, 255)]))
    assert not read_mask(tmp_path / "opaque.png").any()  # black and opaque: no defect
    cv2.imwrite(str(tmp_path / "large.png"), np.pad(np.full((54, 54), 255, np.uint8), 5))  # large, not inverted
    assert read_mask(tmp_path / "large.png").mean() > 127.5


def test_masks_whose_brightest_label_is_low_are_refused_not_read_as_no_defect(tmp_path):
    # Class-index labels 0/2, or 0/1 saved as JPEG (0, 1, 2): binarised at 128 they would mark no defect at all.
    defect = np.zeros((64, 64), np.uint8)
    defect[20:30, 20:30] = 2
    defect[30, 20:30] = 1
    for name, mask in [("classes", (defect > 0) * np.uint8(2)), ("jpeg", defect)]:
        cv2.imwrite(str(tmp_path / f"{name}.png"), mask)
    with pytest.raises(EdgestackError, match=r"classes.png holds the labels 0, 2, not 0/255 or 0/1.*255 \(or 1\)"):
        read_mask(tmp_path / "classes.png")
    with pytest.raises(EdgestackError, match="jpeg.png holds the labels 0, 1, 2"):
        read_mask(tmp_path / "jpeg.png")


def test_a_cds2k_folder_whose_positives_are_all_unusable_is_refused(cds2k):
    # A misnamed mask folder skipped every positive: training on the negatives alone would learn to find nothing.
    root, _ = cds2k
    (root / "Positive" / "GroundTruth").rename(root / "Positive" / "Masks")
    with pytest.raises(EdgestackError, match=r"none of the images in .*Positive/Image is usable: there is no mask "
                                             r"folder .*Positive/GroundTruth \(Positive/ holds Masks\)"):
        scan_folder(root)
    (root / "Positive" / "Masks").rename(root / "Positive" / "GroundTruth")
    # The mirror case: the image folder misnamed. Every defect image was missing, and an evaluation of the good
    # parts alone reported accuracy 1.0.
    (root / "Positive" / "Image").rename(root / "Positive" / "Images")
    with pytest.raises(EdgestackError, match=r"GroundTruth holds masks, but .*Positive/Image holds no image of a "
                                             r"defective part \(Positive/ holds GroundTruth, Images\)"):
        scan_folder(root)
    (root / "Positive" / "Images").rename(root / "Positive" / "Image")
    for path in (root / "Positive" / "GroundTruth").glob("*.png"):
        cv2.imwrite(str(path), np.zeros((64, 64), np.uint8))  # every mask empty: each positive skipped
    with pytest.raises(EdgestackError, match=r"none of the images in .*Positive/Image is usable; skipped: .*marks "
                                             "no defect, yet it is under Positive/"):
        scan_folder(root)


def test_a_folder_without_any_defect_is_refused_for_training_and_calibration(tmp_path):
    # image/ + mask/ with every mask empty (good parts only): training would learn that nothing is ever a defect,
    # and --target-recall has no defect to calibrate on; both are refused before any work. Eval alone is fine
    # (false rejects on good parts).
    from edgestack.train.datasets import load_datasets
    from edgestack.train.evaluate import evaluate_defects

    for sub in ("image", "mask"):
        (tmp_path / "line" / sub).mkdir(parents=True)
    for i in range(3):
        part = np.random.default_rng(i).integers(80, 100, (64, 64, 3), dtype=np.uint8)  # not blank: judged
        cv2.imwrite(str(tmp_path / "line" / "image" / f"p{i}.png"), part)
        cv2.imwrite(str(tmp_path / "line" / "mask" / f"p{i}.png"), np.zeros((64, 64), np.uint8))
    scan = scan_folder(tmp_path / "line")
    assert len(scan.records) == 3 and scan.positives == 0
    with pytest.raises(EdgestackError, match=r"none of the 3 usable images under .*line has a mask that marks a "
                                             "defect"):
        load_datasets(str(tmp_path / "line"), 64)
    with pytest.raises(EdgestackError, match="--target-recall needs images of defective parts.*no mask under"):
        evaluate_defects(data=str(tmp_path / "line"), size=64, target_recall=0.9, out=tmp_path / "eval")
    assert not (tmp_path / "eval").exists()  # refused before evaluating
    results, _ = evaluate_defects(data=str(tmp_path / "line"), size=64, out=tmp_path / "eval")
    assert (results["positives"], results["negatives"]) == (0, 3)
    mask = np.zeros((64, 64), np.uint8)
    mask[5:15, 5:15] = 255
    cv2.imwrite(str(tmp_path / "line" / "mask" / "p1.png"), mask)
    assert scan_folder(tmp_path / "line").positives == 1


def test_a_defect_that_vanishes_at_the_training_size_is_reported_not_learnt_as_good(tmp_path, caplog):
    # A 2 px scratch on a 512 px image has no pixel left at --size 64 (nearest-neighbour mask): it trained and
    # validated as a good part, with nothing in the skipped list.
    from edgestack.train.datasets import load_datasets

    for sub in ("image", "mask"):
        (tmp_path / "line" / sub).mkdir(parents=True)
    for name, rows in (("good", slice(0, 0)), ("scratch", slice(100, 102)), ("stain", slice(100, 300))):
        mask = np.zeros((512, 512), np.uint8)
        mask[rows, 50:450] = 255
        cv2.imwrite(str(tmp_path / "line" / "image" / f"{name}.png"), np.full((512, 512, 3), 90, np.uint8))
        cv2.imwrite(str(tmp_path / "line" / "mask" / f"{name}.png"), mask)
    train_set, val_set, info = load_datasets(str(tmp_path / "line"), 64, val_fraction=0.0)
    assert info["count"] == 2 and [Path(p).name for p, _ in info["skipped"]] == ["scratch.png"]
    assert "its defect (800 px of 512x512) vanishes at --size 64; train at a larger --size" in info["skipped"][0][1]
    # Shrunk 8x, the defects the model learns look 8x smaller than inspect will show them: said, not silent.
    assert info["shrunk_by"] == 8.0 and "shrunk 8.0x (median) to --size 64 for training" in caplog.text
    caplog.clear()
    assert load_datasets(str(tmp_path / "line"), 512, val_fraction=0.0)[2]["count"] == 3
    assert "shrunk" not in caplog.text
    (tmp_path / "line" / "image" / "stain.png").unlink()
    (tmp_path / "line" / "mask" / "stain.png").unlink()
    with pytest.raises(EdgestackError, match="every defect under .*line vanishes when its image is resized to --size"):
        load_datasets(str(tmp_path / "line"), 64, val_fraction=0.0)


def test_native_scale_windows_show_defects_at_their_own_size(tmp_path, capsys):
    # Resized to --size, a large frame's defects shrank by the frame's factor, while inspect judges them at their
    # own scale: windows of the frame at its own scale, half of a defective one's on a defect, are what it sees.
    from edgestack.train.datasets import DEFECT_WINDOW_SHARE, defect_anchors, load_datasets, native_window

    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[:300, :500]
    image = np.dstack([ys % 256, xs % 256, ys // 256 * 2 + xs // 256]).astype(np.uint8)  # each pixel says where
    mask = np.zeros((300, 500), np.uint8)
    mask[200:210, 400:410] = 255  # 100 px in a corner of the frame
    anchors = defect_anchors(mask, 0)
    windows = [native_window(image, mask, anchors, 64, rng) for _ in range(400)]
    held = [window_mask.any() for _, window_mask in windows]
    assert DEFECT_WINDOW_SHARE - 0.1 < np.mean(held) < DEFECT_WINDOW_SHARE + 0.1  # uniform windows: ~3% would
    assert all(window.shape == (64, 64, 3) and window_mask.shape == (64, 64) for window, window_mask in windows)
    for window, window_mask in windows:  # each window is a piece of the frame, pixel for pixel
        top = int(window[0, 0, 0]) + 256 * (int(window[0, 0, 2]) // 2)
        left = int(window[0, 0, 1]) + 256 * (int(window[0, 0, 2]) % 2)
        assert (window == image[top : top + 64, left : left + 64]).all()
        assert (window_mask == mask[top : top + 64, left : left + 64]).all()
    window, window_mask = native_window(image, mask, anchors, 64, None)  # validation: centred on the defect
    assert np.count_nonzero(window_mask) == 100 and (window == image[172:236, 372:436]).all()
    two = mask.copy()
    two[20:50, 20:50] = 255  # a larger defect far away: the middle of both held neither
    assert np.count_nonzero(native_window(image, two, None, 64, None)[1]) == 900
    small, small_mask = native_window(image[:40, :50], mask[:40, :50], defect_anchors(mask[:40, :50], 0), 64, None)
    assert small.shape == (64, 64, 3) and (small[:40, :50] == image[:40, :50]).all()  # padded by reflection
    # A folder so read keeps each image at its own size; a run trains and validates on its windows.
    for sub in ("image", "mask"):
        (tmp_path / "line" / sub).mkdir(parents=True)
    for i in range(6):
        frame_mask = np.zeros((300, 500), np.uint8)
        if i % 2:
            frame_mask[50 * i : 50 * i + 12, 60 * i : 60 * i + 20] = 255
        cv2.imwrite(str(tmp_path / "line" / "image" / f"f{i}.png"), rng.integers(60, 120, (300, 500, 3), np.uint8))
        cv2.imwrite(str(tmp_path / "line" / "mask" / f"f{i}.png"), frame_mask)
    train_set, val_set, info = load_datasets(str(tmp_path / "line"), 64, val_fraction=0.5, native_scale=True)
    assert info["native_scale"] and train_set.images[0].shape == (300, 500, 3)
    assert train_set[0][0].shape == (3, 64, 64)
    assert all(image.shape == (64, 64, 3) for image in val_set.images)  # validation keeps its windows alone
    assert all(mask is None or mask.any() for mask in train_set.masks)  # a good frame holds no mask of zeros
    with pytest.raises(EdgestackError, match="--native-scale is for a folder of the line's frames"):
        load_datasets("synthetic", 64, native_scale=True)
    args = ["train", "defectseg-s", "--data", str(tmp_path / "line"), "--size", "64", "--epochs", "1",
            "--batch-size", "2", "--threads", "1", "--native-scale"]
    assert main(args + ["--out", str(tmp_path / "run")]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["data"]["native_scale"] and summary["data"]["shrunk_by"] is None
    args[1] = "detector-student"
    assert main(args + ["--out", str(tmp_path / "detector")]) == 0
    # A run made before the option existed trained on resized frames: resumed with it, it would mix both.
    last = tmp_path / "detector" / "last.pt"
    state = torch.load(last, weights_only=True)
    del state["args"]["native_scale"]
    torch.save(state, last)
    assert main(args + ["--epochs", "2", "--resume", "--out", str(tmp_path / "detector")]) == 2
    assert "was trained with other options (native_scale False -> True)" in capsys.readouterr().err
    assert main(["train", "vglaw", "--data", "synthetic", "--epochs", "1", "--native-scale"]) == 2
    assert "--native-scale applies to camera folders" in capsys.readouterr().err


def test_twelve_bit_camera_folders_train_and_evaluate_with_their_bit_depth(cds2k, tmp_path):
    # 12-bit camera data stored as 16-bit PNGs (what inspect takes with --bit-depth 12): the same images as the
    # 8-bit set once scaled by their bit depth; without it every image is refused with that hint, never read dark.
    import shutil

    from edgestack.train.datasets import load_datasets
    from edgestack.train.evaluate import evaluate_defects

    root, _ = cds2k
    deep = tmp_path / "deep"
    shutil.copytree(root, deep)
    for path in list(deep.glob("*/Image/*.png")):
        cv2.imwrite(str(path), cv2.imread(str(path)).astype(np.uint16) << 4)
    with pytest.raises(EdgestackError, match="--bit-depth 12"):
        scan_folder(deep)
    scan = scan_folder(deep, bit_depth=12)
    assert len(scan.records) == 12 and not scan.skipped
    for deep_record, record in zip(scan.records, scan_folder(root).records):
        assert np.array_equal(load_pair(deep_record, 12)[0], load_pair(record)[0])
    line_set, _, info = load_datasets(str(deep), 64, bit_depth=12)
    assert info["count"] == 12 and info["bit_depth"] == 12
    assert not line_set.backdrops and load_datasets("synthetic", 64, synthetic_count=4)[0].backdrops  # a line's
    # own images keep their real background; synthetic parts, which fill the frame, are sometimes framed
    with pytest.raises(EdgestackError, match="synthetic set is 8-bit"):
        load_datasets("synthetic", 64, synthetic_count=4, bit_depth=12)
    eight, _ = evaluate_defects(data=str(root), size=64, out=tmp_path / "eight")
    twelve, _ = evaluate_defects(data=str(deep), size=64, out=tmp_path / "twelve", bit_depth=12)
    assert twelve == eight


def test_empty_or_unknown_folders_are_errors(tmp_path):
    (tmp_path / "Positive" / "Image").mkdir(parents=True)
    with pytest.raises(EdgestackError, match="no usable image/mask pairs.*empty"):
        scan_folder(tmp_path)
    with pytest.raises(EdgestackError, match="neither the CDS2K layout"):
        scan_folder(tmp_path / "Positive")
    with pytest.raises(EdgestackError, match="does not exist"):
        scan_folder(tmp_path / "missing")
    with pytest.raises(EdgestackError, match="does not exist"):
        load_pair(Record(tmp_path / "nope.png", None))


def test_generating_in_worker_processes_gives_the_same_samples():
    serial, pooled = generate(_sample64, 4), generate(_sample64, 4, workers=2)
    for a, b in zip(serial, pooled, strict=True):
        assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)


POOL_UNDER_THE_CLI = """
from edgestack.cli import _sigterm_as_interrupt
from edgestack.train.datasets import generate
for _ in range(5):
    with _sigterm_as_interrupt():
        assert generate(abs, 64, workers=2) == list(range(64))
"""


def test_generation_pool_ends_quietly_under_the_cli_signal_handler():
    """Workers used to inherit the CLI's SIGTERM -> KeyboardInterrupt handler: the pool's terminate() then printed
    their tracebacks or hung on a queue lock a dying worker held. A subprocess, so a hang fails instead of stalling."""
    done = subprocess.run([sys.executable, "-c", POOL_UNDER_THE_CLI], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr


def test_loader_workers_augment_differently():
    """Without seed_worker every worker would replay the same copy of the dataset's RNG."""
    image = synthetic.make_sample(synthetic.TRAIN_SEED, 0, 64).image
    data = DefectDataset([image] * 4, [np.zeros((64, 64), np.uint8)] * 4, train=True)
    loader = torch.utils.data.DataLoader(data, 1, num_workers=2, worker_init_fn=seed_worker)
    first, second = [batch[0] for batch in list(loader)[:2]]  # index 0 from worker 0, index 1 from worker 1
    assert not torch.equal(first, second)


def test_a_part_on_a_plain_backdrop_keeps_its_pixels_and_adds_no_defect():
    from edgestack.train.datasets import on_backdrop

    rng = np.random.default_rng(0)
    part = rng.integers(0, 256, (256, 256, 3), np.uint8)  # a noisy part whose every pixel is "defect"
    for seed in range(8):
        image, mask = on_backdrop(part, np.full((256, 256), 255, np.uint8), np.random.default_rng(seed))
        ys, xs = np.nonzero(mask)
        height, width = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
        assert len(ys) == height * width and 0.3 * 256 - 1 <= min(height, width) <= max(height, width) <= 0.95 * 256 + 1
        assert np.array_equal(image[mask > 0], part[mask > 0])  # the part at its own scale, where it was
        backdrop = image[mask == 0].astype(np.float32)
        assert backdrop.std(axis=0).max() < 20  # plain: a gentle gradient and sensor noise, no texture
    sample = synthetic.make_sample(synthetic.TRAIN_SEED, 3)
    image, mask = on_backdrop(sample.image, sample.mask, np.random.default_rng(1))
    window = (image == sample.image).all(-1)
    assert window.mean() > 0.05 and np.array_equal(mask[window], sample.mask[window])  # the defect labels kept
    assert not mask[~window].any()  # and none added on the backdrop
    again = on_backdrop(sample.image, sample.mask, np.random.default_rng(1))
    assert np.array_equal(image, again[0]) and np.array_equal(mask, again[1])  # seeded


def test_augment_moves_image_and_mask_together():
    """The mask must follow every flip, rotation, scale and shift of the image: here the image is the mask."""
    mask = np.zeros((96, 96), np.uint8)
    cv2.ellipse(mask, (40, 52), (22, 12), 30, 0, 360, 255, -1)
    mask[10:14, 60:90] = 255  # a thin bar: off-by-a-few-pixels would show
    rng = np.random.default_rng(0)
    scales = []
    for _ in range(20):
        image, moved = augment(np.repeat(mask[:, :, None], 3, axis=2), mask, rng)
        bright = image[:, :, 0] > (int(image.min()) + int(image.max())) / 2  # halfway: where linear meets nearest
        edge = cv2.dilate(moved, np.ones((3, 3), np.uint8)) != cv2.erode(moved, np.ones((3, 3), np.uint8))
        assert np.array_equal(bright[~edge], moved[~edge] > 128)
        scales.append(moved.mean() / mask.mean())
    assert min(scales) < 0.75 and max(scales) > 1.4  # area follows scale squared: the wide range is exercised


def test_lookup_tables_give_the_per_pixel_float32_formulas_exactly():
    """jitter (cv2.LUT) and to_tensors (per-channel tables) look up what the per-pixel float32 formulas compute:
    the same values, bit for bit, on random images, jitters and a non-contiguous view."""
    rng = np.random.default_rng(1)
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
    for _ in range(20):
        image = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
        contrast, brightness = rng.uniform(0.8, 1.2), rng.uniform(-20, 20)
        want = np.clip((image.astype(np.float32) - image.mean()) * contrast + image.mean() + brightness, 0, 255)
        np.testing.assert_array_equal(jitter(image, contrast, brightness), want.astype(np.uint8))
        view = image[::-1, ::2]
        x, _ = to_tensors(view, np.zeros(view.shape[:2], np.uint8))
        want = ((view.astype(np.float32) / 255.0 - mean) / std).transpose(2, 0, 1)
        np.testing.assert_array_equal(x.numpy(), want)


def test_split_is_seeded_and_disjoint():
    train, val = split(100, 0.1, seed=3)
    assert (train, val) == split(100, 0.1, seed=3) and val != split(100, 0.1, seed=4)[1]
    assert len(val) == 10 and not set(train) & set(val) and sorted(train + val) == list(range(100))


def test_structure_loss_prefers_the_right_mask():
    mask = torch.zeros(2, 1, 32, 32)
    mask[0, :, 8:16, 8:16] = 1  # second image: a negative
    good = structure_loss((mask * 2 - 1) * 20, mask)
    bad = structure_loss(torch.zeros_like(mask), mask)
    assert torch.isfinite(good) and good < 0.05 < bad
    assert torch.equal(structure_loss(torch.zeros_like(mask), mask, boundary_weight(mask)), bad)  # precomputed weight


def test_structure_loss_on_a_negative_charges_its_strongest_area_not_its_faint_noise():
    """On a defect-free image the IoU term is replaced by FALSE_ALARM_WEIGHT x the BCE of its 16 strongest
    pixels' mean logit: faint probability everywhere (logit -6, p 0.0025) is cheap, where the IoU term charged
    it almost as much as a missed defect (1 - 1/(1 + 160) = 0.99); a 16-pixel false alarm is not."""
    bce, softplus = torch.nn.functional.binary_cross_entropy_with_logits, torch.nn.functional.softplus
    negative = torch.zeros(1, 1, 256, 256)
    faint = torch.full_like(negative, -6.0)
    clean = structure_loss(faint, negative)
    assert torch.allclose(clean, bce(faint, negative) + FALSE_ALARM_WEIGHT * softplus(torch.tensor(-6.0)))
    assert clean < 0.01
    alarm = faint.clone()
    alarm[..., 50:54, 50:54] = 2.0  # 16 pixels at p 0.88: the default rule's NG
    assert torch.allclose(structure_loss(alarm, negative),
                          bce(alarm, negative) + FALSE_ALARM_WEIGHT * softplus(torch.tensor(2.0)))
    assert structure_loss(alarm, negative) > 50 * clean
    positive = negative.clone()
    positive[..., 100:110, 100:110] = 1
    missed = structure_loss(faint, positive)  # the positive keeps its IoU term
    assert missed > 0.9
    both = torch.cat([positive, negative])  # the batch is the mean over its images
    assert torch.allclose(structure_loss(torch.cat([faint, faint]), both), (missed + clean) / 2)


def test_boundary_weight_matches_the_direct_box_filter():
    mask = (torch.rand(3, 1, 70, 45, generator=torch.Generator().manual_seed(0)) > 0.9).float()
    direct = 1 + 5 * torch.abs(torch.nn.functional.avg_pool2d(mask, 31, stride=1, padding=15) - mask)
    weight = boundary_weight(mask)
    assert weight.shape == mask.shape and torch.allclose(weight, direct, atol=1e-5)
    lone = torch.zeros(1, 1, 80, 80)
    lone[..., 10, 10] = 1
    weight = boundary_weight(lone)  # the defect pixel near 6x, background beyond the window exactly 1
    assert weight[..., 10, 10] > 5.9 and weight[..., 60:, 60:].eq(1).all()


def test_ok_ng_rule_and_perfect_metrics():
    prob = np.zeros((64, 64), np.float32)
    prob[0:3, 0:5] = 0.9  # 15 pixels: below the minimum area
    assert not is_ng(prob)
    prob[10:14, 10:14] = 0.6  # 16 pixels
    assert is_ng(prob)
    metrics = DefectMetrics()
    mask = np.zeros((64, 64), np.uint8)
    mask[20:40, 20:30] = 255
    metrics.update(mask / 255.0, mask)
    metrics.update(np.zeros((64, 64)), None)
    r = metrics.results()
    assert r["S"] > 0.99 and r["MAE"] == 0 and r["E_max"] > 0.99 and r["F_max"] > 0.99
    assert r["accuracy"] == r["precision"] == r["recall"] == 1.0 and r["positives"] == r["negatives"] == 1


def test_recall_by_defect_size():
    metrics = DefectMetrics()
    small, large, whole = (np.zeros((100, 100), np.uint8) for _ in range(3))
    small[10:12, 10:12] = 255  # 0.04% of the image
    large[20:50, 20:50] = 255  # 9%
    whole[:] = 255  # 100%: the last bucket is open-ended
    metrics.update(np.zeros((100, 100)), small)  # missed
    metrics.update(small / 255.0, small)  # found, but under the 16-pixel minimum: still OK
    metrics.update(large / 255.0, large)  # found
    metrics.update(whole / 255.0, whole)
    metrics.update(np.zeros((100, 100)), None)  # negatives are not in any bucket
    rows = metrics.by_area()
    assert [(r["area_from"], r["positives"], r["recall"]) for r in rows] == [(0.0, 2, 0.0), (0.05, 2, 1.0)]
    assert rows[1]["area_to"] is None and rows[0]["S"] < rows[1]["S"]


def test_defect_contrast_in_surround_standard_deviations():
    rng = np.random.default_rng(0)
    texture = np.clip(100 + rng.normal(0, 10, (100, 100)), 0, 255).astype(np.uint8)  # std 10
    mask = np.zeros((100, 100), np.uint8)
    mask[40:60, 40:60] = 255  # 400 pixels: the patch's own noise moves its mean by ~0.05 std
    clear, faint = texture.copy(), texture.copy()
    clear[mask > 0] = np.clip(texture[mask > 0] + 50.0, 0, 255)  # 5 standard deviations brighter
    faint[mask > 0] = texture[mask > 0] - 3  # 0.3 darker: the sign does not matter
    assert 4.5 < defect_contrast(clear, mask) < 5.5
    assert 0.2 < defect_contrast(faint, mask) < 0.4
    assert defect_contrast(np.dstack([clear] * 3), mask) == pytest.approx(defect_contrast(clear, mask), rel=1e-3)
    flat = np.full((100, 100), 100, np.uint8)
    flat[mask > 0] = 110
    assert defect_contrast(flat, mask) == 10.0  # the surround's std is floored at one gray level
    assert defect_contrast(flat, np.full((100, 100), 255, np.uint8)) is None  # no surroundings

    metrics = DefectMetrics()
    metrics.update(mask / 255.0, mask, image=clear)  # found
    metrics.update(np.zeros((100, 100)), mask, image=faint)  # missed
    metrics.update(np.zeros((100, 100)), mask)  # no image: in no contrast bucket
    metrics.update(np.zeros((100, 100)), None, image=texture)  # negatives are not in any bucket
    rows = metrics.by_contrast()
    assert [(r["contrast_from"], r["contrast_to"], r["positives"], r["recall"]) for r in rows] == [
        (0.0, 0.5, 1, 0.0), (2.0, None, 1, 1.0)]
    assert sum(r["positives"] for r in metrics.by_area()) == 3  # by_area still counts every positive


def test_recall_by_synthetic_kind_and_texture():
    records = [
        {"positive": True, "predicted_ng": True, "S": 0.9, "kinds": ["spot", "scratch"], "texture": "brick"},
        {"positive": True, "predicted_ng": False, "S": 0.4, "kinds": ["spot"], "texture": "grass"},
        {"positive": False, "predicted_ng": True, "kinds": [], "texture": "brick"},  # a false reject
        {"positive": False, "predicted_ng": False, "kinds": [], "texture": "grass"},
        {"positive": True, "predicted_ng": False, "S": 0.1},  # a folder image: no kinds, in no group
    ]
    rows = {(r["by"], r["group"]): r for r in by_kind_and_texture(records)}
    assert list(rows) == [("kind", "scratch"), ("kind", "spot"), ("texture", "brick"), ("texture", "grass")]
    spot = rows["kind", "spot"]
    assert (spot["positives"], spot["recall"], spot["S"], spot["negatives"]) == (2, 0.5, pytest.approx(0.65), None)
    brick, grass = rows["texture", "brick"], rows["texture", "grass"]
    assert (brick["positives"], brick["recall"], brick["negatives"], brick["false_rejects"]) == (1, 1.0, 1, 1)
    assert (grass["recall"], grass["S"], grass["negatives"], grass["false_rejects"]) == (0.0, 0.4, 1, 0)
    assert by_kind_and_texture(records[4:]) == []


def test_operating_points_apply_the_rule_at_each_threshold():
    metrics = DefectMetrics(sweep_thresholds=True)
    mask = np.zeros((64, 64), np.uint8)
    mask[10:20, 10:20] = 255
    metrics.update(mask / 255.0 * 0.35, mask)  # a faint find: NG only at thresholds <= 0.3
    metrics.update(mask / 255.0 * 0.95, mask)  # NG at every threshold
    stain = np.zeros((64, 64))
    stain[40:50, 40:50] = 0.45
    metrics.update(stain, None)  # a false reject at thresholds <= 0.4
    points = {p["threshold"]: p for p in metrics.operating_points()}
    assert sorted(points) == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    assert (points[0.3]["recall"], points[0.3]["fp"], points[0.3]["fn"]) == (1.0, 1, 0)
    assert (points[0.4]["recall"], points[0.4]["fp"], points[0.4]["precision"]) == (0.5, 1, 0.5)
    assert (points[0.9]["recall"], points[0.9]["fp"], points[0.9]["precision"]) == (0.5, 0, 1.0)
    main_rule = metrics.results()  # threshold 0.5: the same verdicts as its operating point
    assert {k: points[0.5][k] for k in ("accuracy", "recall", "fp", "fn")} == {
        k: main_rule[k] for k in ("accuracy", "recall", "fp", "fn")}


def blob(prob: float, side: int, at: int = 10) -> np.ndarray:
    """A 64x64 map holding one square of side x side pixels at `prob`."""
    m = np.zeros((64, 64))
    m[at : at + side, at : at + side] = prob
    return m


def calibration_maps() -> list[tuple[np.ndarray, np.ndarray | None]]:
    """Three finds of different size and strength, a small strong false find and a larger faint one."""
    mask = np.zeros((64, 64), np.uint8)
    mask[5:30, 5:30] = 255
    return [(blob(0.9, 10), mask), (blob(0.6, 4), mask), (blob(0.3, 6), mask),  # largest areas 100, 16, 36
            (blob(0.8, 3), None), (blob(0.25, 5), None)]  # a 9-px false find at 0.8, a 25-px one at 0.25


def test_calibration_finds_the_rule_with_fewest_false_rejects_at_the_target_recall():
    metrics = DefectMetrics(sweep_thresholds=True)
    for prob, mask in calibration_maps():
        metrics.update(prob, mask)
    # Every positive: the faint 36-px find needs threshold <= 0.3 and the 16-px one min area <= 16; at 0.3 the
    # 25-px false find (0.25) is gone and the 9-px one is under 16 px. Below 0.3 the 25-px one is a false reject.
    # Any min area from 10 to 16 px scores so: the rule takes the gap's geometric middle, 13 px, not its top,
    # where a defect a pixel smaller than the 16-px one would pass.
    all_found = metrics.calibrate(1.0)
    assert (all_found["threshold"], all_found["min_area_px"], all_found["margin"]) == (0.3, 13, 1.6)
    assert (all_found["recall"], all_found["fp"], all_found["fn"], all_found["reachable"]) == (1.0, 0, 0, True)
    # Two of three asked: 36 px would do, but 16 px finds all three at no false reject, and more found wins.
    two = metrics.calibrate(0.6)
    assert (two["threshold"], two["min_area_px"], two["recall"], two["fp"]) == (0.3, 13, 1.0, 0)
    # With a 16-px false find at 0.3 and above, 16 px costs a false reject: the 36-px find's gap, 17..36, then.
    metrics.update(blob(0.95, 4), None)
    costly = metrics.calibrate(0.6)
    assert (costly["threshold"], costly["min_area_px"], costly["recall"], costly["fp"]) == (
        0.3, 25, pytest.approx(2 / 3), 0)
    # The rule as inspect applies it (runtime.defects with the written keys) gives the calibrated verdicts.
    from edgestack.runtime.defects import Rules, assess

    for chosen, maps in ((all_found, calibration_maps()), (two, calibration_maps()),
                         (costly, calibration_maps() + [(blob(0.95, 4), None)])):
        rules = Rules(threshold=chosen["threshold"], min_area_px=chosen["min_area_px"], min_score=chosen["threshold"])
        verdicts = [(assess(prob, rules).status == "NG", mask is not None) for prob, mask in maps]
        assert sum(ng and positive for ng, positive in verdicts) == chosen["tp"]
        assert sum(ng and not positive for ng, positive in verdicts) == chosen["fp"]


def test_calibration_says_when_the_target_is_out_of_reach():
    metrics = DefectMetrics(sweep_thresholds=True)
    for prob, mask in calibration_maps():
        metrics.update(prob, mask)
    metrics.update(np.zeros((64, 64)), calibration_maps()[0][1])  # a positive the model does not see at all
    out_of_reach = metrics.calibrate(1.0)
    assert out_of_reach == {"target_recall": 1.0, "reachable": False, "best_recall": 0.75}
    assert metrics.calibrate(0.75)["reachable"]
    negatives_only = DefectMetrics(sweep_thresholds=True)
    negatives_only.update(blob(0.9, 5), None)
    with pytest.raises(EdgestackError, match="positive"):
        negatives_only.calibrate(0.9)


def native_bf16_cpu(monkeypatch, native: bool) -> None:
    """Make this machine's CPU report (or not) native bfloat16, so the --bf16 paths run on any CI machine."""
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)


def test_bf16_refused_where_emulated(cds2k, tmp_path, monkeypatch, capsys):
    native_bf16_cpu(monkeypatch, False)
    args = ["train", "defectseg-s", "--data", str(cds2k[0]), "--size", "64", "--epochs", "1", "--device", "cpu"]
    assert main(args + ["--bf16", "--out", str(tmp_path / "bf16")]) == 2
    assert "no native bfloat16" in capsys.readouterr().err and not (tmp_path / "bf16").exists()


def test_a_resumed_run_goes_on_as_if_it_had_not_stopped(cds2k, tmp_path, monkeypatch):
    """Stopped after epoch 1 and resumed, a run sees epoch 2's shuffles and augmentations, not epoch 1's again:
    its weights end as an unbroken run's (batches loaded in this process, same machine and threads)."""
    args = ["train", "defectseg-s", "--data", str(cds2k[0]), "--size", "64", "--batch-size", "4", "--threads", "1",
            "--epochs", "2"]
    assert main(args + ["--out", str(tmp_path / "unbroken")]) == 0

    def stop(*args, **kwargs):  # Ctrl-C once epoch 1 is saved
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(loop, "plot_curves", stop)
        assert main(args + ["--out", str(tmp_path / "resumed")]) == 130
    assert torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)["epoch"] == 1
    assert main(args + ["--out", str(tmp_path / "resumed"), "--resume"]) == 0
    unbroken, resumed = (torch.load(tmp_path / run / "last.pt", weights_only=True)["state_dict"]
                         for run in ("unbroken", "resumed"))
    assert all(torch.equal(unbroken[name], resumed[name]) for name in unbroken)


def test_train_resume_eval_cli(cds2k, tmp_path, monkeypatch, capsys):
    native_bf16_cpu(monkeypatch, True)  # the autocast path runs here even where bf16 is emulated (tiny run)
    root, _ = cds2k
    out = tmp_path / "run"
    args = ["train", "defectseg-s", "--data", str(root), "--size", "64", "--batch-size", "4", "--out", str(out)]
    saved, save = [], loop.save_checkpoint_file
    monkeypatch.setattr(loop, "save_checkpoint_file", lambda checkpoint, path: saved.append(path.name) or
                        save(checkpoint, path))
    assert main(args + ["--epochs", "1"]) == 0
    assert saved == ["best.pt", "last.pt"]  # a stop between them must not leave last.pt naming a best.pt not written
    monkeypatch.undo()
    native_bf16_cpu(monkeypatch, True)
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["config"] == "defectseg-s" and state["epoch"] == 1 and "accuracy" in state["metrics"]
    assert {"state_dict", "optimizer", "scheduler", "history"} <= set(state)
    assert (out / "best.pt").is_file() and (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert main(args + ["--epochs", "1"]) == 2  # would overwrite the run
    with monkeypatch.context() as patch:  # a finished run, and other options, are refused before any data is read
        patch.setattr("edgestack.train.loop.load_datasets", None)
        assert main(args + ["--epochs", "1", "--resume"]) == 2
        assert main(args + ["--epochs", "2", "--resume", "--lr", "0.1", "--size", "96"]) == 2
    err = capsys.readouterr().err
    assert f"{out} already holds 1 epoch(s); pass --epochs 2" in err
    assert "was trained with other options (size 64 -> 96; lr 0.002 -> 0.1)" in err
    assert main(args + ["--epochs", "2", "--resume", "--bf16"]) == 0  # bf16 autocast on the CPU, fp32 weights
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["epoch"] == 2 and state["args"]["bf16"] and np.isfinite(state["history"][-1]["loss"])
    assert all(t.dtype != torch.bfloat16 for t in state["state_dict"].values())

    results = tmp_path / "eval"
    evaluate = ["eval", "defectseg", "--data", str(root), "--checkpoint", str(out / "last.pt"), "--size", "64",
                "--out", str(results)]
    assert main(evaluate + ["--threshold", "1.5"]) == 2
    assert main(evaluate + ["--threshold", "0.4"]) == 0
    report = json.loads((results / "results.json").read_text())
    assert report["config"] == "defectseg-s" and len(report["per_image"]) == 12
    assert report["results"]["threshold"] == 0.4 and len(report["operating_points"]) == 9
    assert "| threshold | recall |" in (results / "results.md").read_text()
    assert {"S", "wF", "MAE", "E_adp", "E_mean", "E_max", "F_adp", "F_mean", "F_max", "accuracy", "precision",
            "recall"} <= set(report["results"])
    assert (results / "worst.png").read_bytes()[:4] == b"\x89PNG" and "| S |" in (results / "results.md").read_text()
    assert sum(row["positives"] for row in report["by_area"]) == report["results"]["positives"]
    assert sum(row["positives"] for row in report["by_contrast"]) == report["results"]["positives"]
    assert "| defect contrast |" in (results / "results.md").read_text()
    assert report["by_kind_and_texture"] == [] and "by defect kind" not in (results / "results.md").read_text()

    # Shipping the run: fp16 weights + a card; evaluated alone they give the checkpoint's figures.
    shipped = ship_weights(out / "last.pt", tmp_path / "weights" / "defectseg-s.safetensors", {"note": "test"})
    card = json.loads(shipped.with_suffix(".json").read_text())
    assert card["config"] == "defectseg-s" and card["epoch"] == 2 and card["note"] == "test"
    assert card["training"]["bf16"] and [h["epoch"] for h in card["history"]] == [1, 2]
    assert {t.dtype for t in load_file(shipped).values() if t.is_floating_point()} == {torch.float16}
    assert main(["eval", "defectseg", "--data", str(root), "--checkpoint", str(shipped), "--size", "64",
                 "--threshold", "0.4", "--out", str(tmp_path / "eval-shipped")]) == 0
    from_shipped = json.loads((tmp_path / "eval-shipped" / "results.json").read_text())["results"]
    for key in ("S", "MAE", "wF"):
        assert from_shipped[key] == pytest.approx(report["results"][key], abs=2e-3), key  # fp16 rounding only

    synthetic_eval = tmp_path / "eval-synthetic"  # shipped weights on a few held-out synthetic images
    assert main(["eval", "defectseg", "--data", "synthetic", "--count", "8", "--size", "64", "--out",
                 str(synthetic_eval)]) == 0
    report = json.loads((synthetic_eval / "results.json").read_text())
    textures = [r for r in report["by_kind_and_texture"] if r["by"] == "texture"]
    assert sum(r["positives"] + r["negatives"] for r in textures) == 8
    assert {r["group"] for r in report["by_kind_and_texture"] if r["by"] == "kind"} <= set(synthetic.DEFECTS)
    assert "| kind |" in (synthetic_eval / "results.md").read_text()


def test_eval_refuses_checkpoints_of_other_models_and_unreadable_files(tmp_path, capsys):
    torch.save({"config": "detector-student", "state_dict": {"w": torch.zeros(1)}}, tmp_path / "detector.pt")
    (tmp_path / "corrupt.pt").write_bytes(b"not a torch file")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    for name in ("detector", "corrupt", "list"):
        assert main(["eval", "defectseg", "--data", "synthetic", "--count", "1", "--size", "64", "--checkpoint",
                     str(tmp_path / f"{name}.pt"), "--out", str(tmp_path / "eval")]) == 2
    err = capsys.readouterr().err
    assert "detector.pt holds detector-student weights, of the detector model, not defectseg; pass a defectseg " \
           "checkpoint" in err
    assert "checkpoint " + str(tmp_path / "corrupt.pt") in err and "Traceback" not in err  # models.checkpoints' words
    assert "list.pt does not hold a state dict of tensors" in err


def test_diverged_training_stops_and_says_lower_lr(cds2k, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "defectseg-s", "--data", str(cds2k[0]), "--size", "64", "--batch-size", "4", "--epochs",
                 "2", "--lr", "1e6", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "epoch 1" in err and "lower --lr" in err and "TensorRT" not in err
    assert not (out / "best.pt").exists()


def test_cli_bad_input_exit_2(tmp_path, capsys):
    assert main(["train", "defectseg", "--data", str(tmp_path / "none"), "--epochs", "1"]) == 2
    assert main(["train", "pspnet-r18", "--data", "synthetic", "--epochs", "1"]) == 2
    assert main(["eval", "defectseg-m", "--data", "synthetic"]) == 2  # no shipped weights for -m
    assert main(["train", "vglaw", "--data", "synthetic", "--epochs", "1", "--bf16"]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "defectseg only" in err and "no shipped weights" in err
    assert "--bf16 applies to defectseg only" in err


def test_synth_cli_writes_cds2k_layout(tmp_path, capsys):
    assert main(["synth", str(tmp_path / "s"), "--count", "6", "--size", "64"]) == 0
    written = list((tmp_path / "s").rglob("*.png"))
    assert len(list((tmp_path / "s").glob("*/Image/*.png"))) == 6 and len(written) > 6
    assert "CDS2K layout" in capsys.readouterr().out


def _sample64(index):  # module level: worker processes import it by name
    return synthetic.make_sample(synthetic.TRAIN_SEED, index, 64)


def test_a_pixel_exactly_at_a_float32_threshold_is_judged_alike_by_calibration_and_inspect():
    from edgestack.runtime.defects import assess
    from edgestack.train.metrics import area_rule

    mask = np.zeros((64, 64), np.uint8)
    mask[10:20, 10:20] = 255
    prob = np.zeros((64, 64), np.float32)
    prob[10:20, 10:20] = np.float32(0.7)  # a float32 map's 0.7 is just below the rule's 0.7
    metrics = DefectMetrics(sweep_thresholds=True)
    metrics.update(prob, mask)
    rule = metrics.calibrate(1.0)
    assert rule["threshold"] < 0.7 and rule["recall"] == 1.0  # calibration used to pick 0.7, which inspect misses
    assert assess(prob, area_rule(rule["threshold"], rule["min_area_px"])).status == "NG"
