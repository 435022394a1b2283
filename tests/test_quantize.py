"""int8 Q/DQ for real on CPU: pspnet-r18 calibrated at 97x97, run by onnxruntime, figures in meta and report."""

import json
import logging
import shutil

import cv2
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgestack import bundle as bundle_format
from edgestack.cli import main
from edgestack.errors import EdgestackError
from edgestack.export.parity import miou, parity_vs_fp32
from edgestack.export.quantize import quantize, synthetic_images
from edgestack.runtime import load
from edgestack.runtime.images import to_tensor


@pytest.fixture(scope="module")
def bundle(pspnet_bundle, tmp_path_factory):
    copy = tmp_path_factory.mktemp("q") / "pspnet-r18"
    shutil.copytree(pspnet_bundle, copy)  # quantizing writes model.int8.onnx into the bundle
    return copy


@pytest.fixture(scope="module")
def record(bundle):
    return quantize(bundle, samples=8, size=(97, 97), progress=lambda m: None)


def test_int8_backend_and_auto_before_quantize(bundle, caplog):
    with pytest.raises(EdgestackError, match="has no model.int8.onnx; create it with `edgestack quantize"):
        load(bundle, backend="onnxruntime-int8")
    with caplog.at_level(logging.INFO, logger="edgestack.runtime"):
        engine = load(bundle)
    assert engine.backend.name == "onnxruntime" and engine.backend.device == "CPUExecutionProvider"
    assert "tensorrt skipped: no model.plan" in caplog.text


def test_int8_parity_recorded(bundle, record):
    meta = bundle_format.read_meta(bundle, verify=True)  # the sha256 of model.int8.onnx is recorded and matches
    assert meta["int8"] == record and "model.int8.onnx" in meta["files"]
    assert record["calibration"]["samples"] == 8 and record["calibration"]["source"].startswith("synthetic")
    figures = record["parity_vs_fp32"]
    # Observed with random weights (seed 0), 8 synthetic calibration images: agreement 0.902, rel L2 0.032,
    # mIoU(int8 argmax, fp32 argmax) 0.62 (150 classes, many tiny regions).
    assert figures["finite"] and figures["images"] == 4
    assert figures["argmax_agreement"] >= 0.85
    assert figures["rel_l2"] <= 0.06
    assert 0.4 <= figures["miou_vs_fp32"] <= 1.0
    assert figures["miou_drop_proxy"] == pytest.approx(1 - figures["miou_vs_fp32"])
    report = (bundle / "report.md").read_text()
    assert "Parity vs PyTorch" in report and "## INT8 (Q/DQ) vs fp32" in report
    assert f"{figures['argmax_agreement']:.2%}" in report


def test_qdq_model_is_symmetric_int8_per_channel(bundle, record):
    model = onnx.load(str(bundle / "model.int8.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") > 10 and ops.count("DequantizeLinear") > 20
    assert record["quantization"]["qdq_nodes"] == ops.count("QuantizeLinear") + ops.count("DequantizeLinear")
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    weight_dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert weight_dq and all(inits[n.input[0]].dtype == np.int8 for n in weight_dq)
    assert all(inits[n.input[1]].size > 1 for n in weight_dq)  # one scale per output channel
    zero_points = [inits[n.input[2]] for n in model.graph.node
                   if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2]
    assert all(z.dtype == np.int8 and not z.any() for z in zero_points)  # symmetric: what TensorRT needs
    assert not [n for n in model.graph.node if n.domain not in ("", "ai.onnx")]


def test_onnxruntime_runs_int8_at_another_size(bundle, record):
    # Image-like inputs: noise far outside the calibrated ranges would only measure saturation.
    meta = bundle_format.read_meta(bundle)
    x = np.concatenate([to_tensor(image, meta["preprocess"]) for image in synthetic_images(2, (129, 97), seed=7)])
    engine = load(bundle, backend="onnxruntime-int8")
    assert engine.backend.name == "onnxruntime-int8"
    got, want = engine(x)["logits"], load(bundle, backend="onnxruntime")(x)["logits"]
    assert got.shape == want.shape == (2, 150, 129, 97)
    agreement = (got.argmax(1) == want.argmax(1)).mean()
    assert agreement >= 0.85, agreement


def test_quality_proxies():
    labels = np.array([[0, 0, 1, 1]])
    assert miou(labels, labels) == 1.0
    assert miou(labels, np.array([[0, 1, 1, 1]])) == pytest.approx((1 / 2 + 2 / 3) / 2)
    reference = np.linspace(-1, 1, 1000, dtype=np.float32).reshape(1, 1, 10, 100)
    figures = parity_vs_fp32([reference], [reference + 0.02], "inpainting")
    assert figures["psnr_db_vs_fp32"] == pytest.approx(10 * np.log10(4 / 0.02**2), rel=1e-4)  # peak = range 2
    # A detector's padded boxes compared rank by rank said nothing of which detections int8 keeps: two near-equal
    # scores swapped made a large error, a lost detection could make none.
    boxes = np.zeros((1, 4, 4), np.float32)
    boxes[0, :3] = [[0, 0, 10, 10], [20, 20, 40, 40], [50, 0, 60, 30]]
    fp32 = [boxes, np.array([[0.9, 0.8, 0.7, 0]]), np.array([[0, 1, 0, 0]]), np.array([3])]
    swapped = boxes[:, [1, 0, 3, 3]] + 1  # the first two swapped and shifted a pixel, the third lost
    int8 = [swapped, np.array([[0.85, 0.84, 0, 0]]), np.array([[1, 0, 0, 0]]), np.array([2])]
    figures = parity_vs_fp32(fp32, int8, "detection")
    assert (figures["detections_fp32"], figures["detections"]) == (3, 2)
    assert figures["fp32_detections_kept"] == pytest.approx(2 / 3) and figures["detections_in_fp32"] == 1.0


def test_cli_quantize_on_a_folder_of_real_images(bundle, tmp_path, capsys):
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        cv2.imwrite(str(images / f"{i}.png"), cv2.GaussianBlur(rng.integers(0, 255, (80, 120, 3), np.uint8), (9, 9), 3))
    (images / "notes.txt").write_text("not an image")
    (copy / "model.plan").write_bytes(b"an int8 plan of the earlier int8 model")  # as `edgestack build` records it
    meta = json.loads((copy / "meta.json").read_text())
    meta["files"]["model.plan"] = bundle_format.sha256(copy / "model.plan")
    bundle_format.write_meta(copy, meta | {"tensorrt": {"source": "model.int8.onnx", "precision": "int8"}})
    assert main(["quantize", str(copy), "--calib", str(images), "--samples", "2", "--size", "97x97"]) == 0
    output = capsys.readouterr().out
    assert "argmax_agreement" in output and "removed model.plan, built from the earlier int8 model" in output
    assert not (copy / "model.plan").exists() and "tensorrt" not in load(copy, backend="onnxruntime").meta
    meta = json.loads((copy / "meta.json").read_text())
    assert meta["int8"]["calibration"]["samples"] == 2
    assert meta["int8"]["parity_vs_fp32"]["source"] == f"1 held-out images of {images}"
    assert (copy / "report.md").read_text().count("## INT8") == 1  # replaced, not appended twice
    # Two images are weak evidence: said where it is seen (the output, meta.json, report.md).
    few = "calibrated on 2 images: so few rarely span a line's parts"
    assert f"warning: {few}" in output and meta["int8"]["warnings"][0].startswith(few)
    assert f"**Warning:** {few}" in (copy / "report.md").read_text()
    assert main(["quantize", str(copy), "--calib", str(images), "--samples", "3", "--size", "97x97"]) == 0
    output = capsys.readouterr().out
    assert "warning: int8 was compared with fp32 on its calibration images, which flatter it" in output


def test_cli_quantize_errors(bundle, tmp_path, capsys):
    assert main(["quantize", str(bundle), "--size", "33x97"]) == 2
    assert "height=33 is outside the model's allowed range" in capsys.readouterr().err
    assert main(["quantize", str(bundle), "--calib", str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main(["quantize", str(bundle), "--calib", str(tmp_path)]) == 2
    assert "holds no images" in capsys.readouterr().err
    assert main(["quantize", str(bundle), "--size", "97x97,65x65"]) == 2
    assert "must be one HEIGHTxWIDTH" in capsys.readouterr().err


def test_defectseg_quantizes_and_its_int8_bundle_is_evaluated_as_deployed(defectseg_bundle, tmp_path):
    # onnxruntime's symbolic shape inference gave up on defectseg's stride-32 sizes: quantize used to crash.
    copy = tmp_path / "defectseg-s"
    shutil.copytree(defectseg_bundle, copy)
    record = quantize(copy, samples=4, size=(128, 128), progress=lambda m: None)
    assert record["parity_vs_fp32"]["finite"] and record["quantization"]["qdq_nodes"] > 50
    from edgestack.train.evaluate import evaluate_defects

    int8, paths = evaluate_defects(count=6, out=tmp_path / "eval", bundle=copy, backend="onnxruntime-int8")
    assert "onnxruntime-int8" in json.loads(paths["json"].read_text())["title"]
    assert 0.0 <= int8["MAE"] < 0.05  # shipped weights: fp32 MAE on these six is about 0.01


def test_mat_quantizes_with_its_latent_inputs_and_keeps_its_fixed_size(mat_edge_bundle, tmp_path, monkeypatch):
    # MAT's z, mixing masks and noise are drawn as `edgestack inpaint` draws them; its size is static.
    copy = tmp_path / "mat-edge"
    shutil.copytree(mat_edge_bundle, copy)
    monkeypatch.chdir(tmp_path)  # onnxruntime's symbolic inference fails on MAT and leaves files in the cwd
    with pytest.raises(EdgestackError, match="height=128, but this model's height is fixed at 256"):
        quantize(copy, samples=1, size=(128, 128), progress=lambda m: None)
    record = quantize(copy, samples=2, progress=lambda m: None)
    figures = record["parity_vs_fp32"]
    # Observed with random weights, 2 calibration images: PSNR about 35 dB against fp32 (rel L2 about 0.27).
    assert figures["finite"] and figures["psnr_db_vs_fp32"] > 25
    assert load(copy, backend="onnxruntime-int8").backend.name == "onnxruntime-int8"
    assert [p.name for p in tmp_path.iterdir()] == ["mat-edge"]  # nothing left in the user's folder


def test_calibration_reads_a_12_bit_camera_folder_with_its_bit_depth(tmp_path):
    from edgestack.export.quantize import folder_images

    image = np.random.default_rng(1).integers(0, 256, (40, 60, 3), np.uint8)
    cv2.imwrite(str(tmp_path / "mono12.png"), image.astype(np.uint16) << 4)  # 12-bit data in a 16-bit file
    with pytest.raises(EdgestackError, match="--bit-depth 12"):  # quantize takes the flag it names
        folder_images(tmp_path, 1, (40, 60))
    np.testing.assert_array_equal(folder_images(tmp_path, 1, (40, 60), bit_depth=12)[0], image[..., ::-1])
