"""Bad arguments across the CLI: each is one clear line on stderr and exit code 2, never a traceback.

Most cases here were a traceback (or a silent success that did nothing) before they were listed."""

import cv2
import numpy as np
import pytest

from edgestack.cli import main

CASES = [
    (["export", "no-such-model"], "unknown model 'no-such-model'"),
    (["export", "pspnet", "--config", "pspnet-r999"], "unknown config 'pspnet-r999'"),
    (["export", "pspnet", "--seed", "99999999999999999999999"], "'99999999999999999999999' is not a whole number"),
    (["inpaint", "{psp}", "{image}", "{image}", "{tmp}/o.png", "--seed", "-1"], "argument --seed: '-1' is not"),
    (["export", "pspnet-r18", "--checkpoint", "{tmp}/missing.pth"], "does not exist"),
    (["infer", "{psp}", "{image}", "--out", "{tmp}/out.xyz"], "'{tmp}/out.xyz' is not an image file to write"),
    (["infer", "{psp}", "{image}", "--out", "{tmp}"], "'{tmp}' is not an image file to write"),
    (["infer", "{psp}", "{image}", "--out", "{tmp}/o.png", "--min-score", "nan"],
     "argument --min-score: 'nan' is not a number from 0 to 1"),
    (["infer", "{psp}", "{image}", "--out", "{tmp}/o.png", "--min-score", "7"], "'7' is not a number from 0 to 1"),
    (["inpaint", "--bundle", "{psp}", "--image", "{image}", "--mask", "{image}", "--out", "."],
     "argument --out: '.' is not an image file to write"),
    (["infer", "{psp}", "{image}", "--out", "{tmp}/o.png", "--backend", "nope"],
     "unknown backend(s) nope; choose from auto, onnxruntime"),
    (["bench", "{psp}", "--backends", "nope"], "unknown backend(s) nope"),
    (["bench", "{psp}", "--sizes", "0x0", "--out", "{tmp}/bench"], "cannot benchmark height 0: height=0 is outside"),
    (["bench", "{psp}", "--batches", "0", "--out", "{tmp}/bench"], "cannot benchmark batch 0"),
    (["bench", "{psp}", "--backends", "nope", "--out", "{tmp}/bench"], "nope"),
    (["bench", "{psp}", "--batches", "x"], "--batches 'x' must be comma-separated integers"),
    (["bench", "{psp}", "--sizes", "473"], "sizes '473' must look like 473x473,375x500"),
    (["bench", "{psp}", "--sizes", "97x97x97"], "sizes '97x97x97' must look like"),
    (["bench", "{psp}", "--sizes", ",,"], "sizes ',,' must look like"),
    (["bench", "{psp}", "--runs", "0"], "argument --runs: '0' is not a whole number > 0"),
    (["bench", "{psp}", "--backends", "tensorrt", "--out", "{tmp}/b"], "no case ran; the first failure"),
    (["bench", "{psp}", "--out", "{image}"], "cannot create the results folder {image}"),
    (["quantize", "{psp}", "--bit-depth", "12"], "--bit-depth is for a --calib folder of 16-bit camera images"),
    (["inspect", "{image}", "--bundle", "{ds}", "--out", "{tmp}/r", "--overlap", "100000"], "tile overlap 100000 px"),
    (["inspect", "{image}", "--bundle", "{ds}", "--out", "{tmp}/r", "--batch", "0"], "argument --batch: '0' is not"),
    (["inspect", "{image}", "--bundle", "{ds}", "--out", "{image}/r"], "cannot use {image}/r as a run folder"),
    (["inspect", "{image}", "--bundle", "{ds}", "--out", "{tmp}/r", "--idle-exit", "3"], "options of --watch"),
    (["inspect", "{image}", "--bundle", "{ds}", "--out", "{tmp}/r", "--watch"], "watch needs a folder"),
    (["eval", "defectseg", "--data", "synthetic", "--count", "0"], "argument --count: '0' is not a whole number"),
    (["eval", "defectseg", "--data", "synthetic", "--count", "2", "--out", "{image}/e"],
     "cannot create the results folder {image}/e: Not a directory; choose another --out"),
    (["eval", "defectseg", "--data", "synthetic", "--target-recall", "1.5"], "--target-recall must be in (0, 1]"),
    (["eval", "defectseg", "--data", "synthetic", "--rules-out", "{tmp}/r.json"], "pass --target-recall too"),
    (["eval", "defectseg", "--data", "synthetic", "--tiled"], "--tiled runs an exported bundle"),
    (["eval", "defectseg", "--data", "synthetic", "--rules", "{tmp}/r.json", "--threshold", "0.3"],
     "drop --threshold/--min-area"),
    (["eval", "defectseg", "--data", "synthetic", "--rules", "{tmp}/none.json"], "rules file"),
    (["eval", "defectseg", "--data", "synthetic", "--bit-depth", "12"], "the synthetic set is 8-bit"),
    (["train", "detector-student", "--data", "synthetic", "--epochs", "1", "--bit-depth", "12", "--out", "{tmp}/d"],
     "--bit-depth is for folders of 16-bit camera images; the synthetic set is 8-bit"),
    (["train", "vglaw", "--data", "synthetic", "--epochs", "1", "--bit-depth", "12"],
     "--bit-depth applies to camera folders; vglaw trains on its synthetic set only"),
    (["eval", "detector", "--data", "synthetic", "--target-recall", "0.9"], "are for defectseg, not detector"),
    (["synth", "{tmp}/s", "--negative-fraction", "2"], "--negative-fraction must be between 0 and 1"),
    (["synth", "{tmp}/s", "--size", "10"], "--size must be at least 64"),
    (["train", "defectseg", "--data", "synthetic", "--epochs", "0", "--synthetic-count", "40", "--out", "{tmp}/t"],
     "argument --epochs: '0' is not a whole number > 0"),
    (["train", "defectseg", "--data", "synthetic", "--epochs", "1", "--lr", "nan"], "argument --lr: 'nan' is not a "
                                                                                     "number > 0"),
    (["train", "defectseg", "--data", "synthetic", "--epochs", "1", "--size", "-32"], "argument --size: '-32'"),
    (["train", "defectseg", "--data", "synthetic", "--epochs", "1", "--threads", "0"], "argument --threads: '0'"),
    (["train", "defectseg", "--data", "synthetic", "--epochs", "1", "--batch-size", "x"], "argument --batch-size"),
    (["train", "defectseg", "--data", "synthetic", "--epochs", "1", "--out", "{image}/t"],
     "cannot create the run folder {image}/t: Not a directory"),
    (["train", "defectseg", "--data", "synthetic", "--epochs", "1", "--synthetic-count", "20", "--batch-size", "32",
      "--out", "{tmp}/t"], "18 training images are fewer than --batch-size 32"),
    (["serve", "--bundle", "{ds}", "--max-bytes", "0"], "argument --max-bytes: '0' is not a whole number > 0"),
    (["serve", "--bundle", "{ds}", "--token-file", "{tmp}/token-latin1"], "must hold one line of printable ASCII"),
    (["serve", "--bundle", "{ds}", "--port", "99999"], "--port 99999 is not a TCP port"),
    # An --out naming an input would replace the user's original (a replaced mask then read as a colour image).
    (["infer", "{psp}", "{image}", "--out", "{image}"], "--out would write {image} over the input image {image}"),
    (["inpaint", "--bundle", "{psp}", "--image", "{image}", "--mask", "{tmp}/mask.png", "--out", "{tmp}/mask.png"],
     "--out would write {tmp}/mask.png over the --mask {tmp}/mask.png"),
    (["ground", "--bundle", "{psp}", "--image", "{image}", "--text", "dent", "--out", "{image}"],
     "--out would write {image} over the --image {image}"),
]


@pytest.mark.parametrize("argv, message", CASES, ids=[" ".join(c[0][:2]) + f" {i}" for i, c in enumerate(CASES)])
def test_bad_arguments_exit_2_with_one_clear_line(argv, message, pspnet_bundle, defectseg_bundle, tmp_path, capsys):
    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), np.full((128, 160, 3), 120, np.uint8))
    names = {"psp": pspnet_bundle, "ds": defectseg_bundle, "image": image, "tmp": tmp_path}
    (tmp_path / "token-latin1").write_bytes(b"t\xf6k\n")
    try:
        code = main([arg.format(**names) for arg in argv])
    except SystemExit as exit:  # argparse's own check of a value's type: usage and the error line
        code = exit.code
    assert code == 2
    error = capsys.readouterr().err
    assert message.format(**names) in error and "Traceback" not in error
    assert not (tmp_path / "bench").exists()  # a refused bench leaves no results folder (a re-export refuses one)
    assert cv2.imread(str(image)).shape == (128, 160, 3)  # never written over
