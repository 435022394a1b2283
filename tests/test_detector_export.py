"""Export of the detector with NMS inside: bundle, portable parity vs PyTorch, EfficientNMS_TRT structure, infer."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import overflow_outputs
from onnx.utils import Extractor

from edgestack.cli import main
from edgestack.errors import EdgestackError
from edgestack.export import export_bundle
from edgestack.export.tensorrt import build_engine, version_compatible_problem
from edgestack.models import resolve
from edgestack.runtime import load
from edgestack.runtime.detection import detect


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A detector-student bundle whose classifier bias is zeroed, so every location scores ~0.5 and NMS has
    hundreds of candidates: parity then covers real suppression and top-K, not an empty output."""
    spec, config = resolve("detector-student")
    torch.manual_seed(0)
    model = spec.build(spec.configs[config])
    with torch.no_grad():
        model.head.cls_out.bias.zero_()
    folder = tmp_path_factory.mktemp("detector")
    torch.save(model.state_dict(), folder / "weights.pt")
    # one non-square size: exercises the dynamic axes and keeps the test short
    path, meta = export_bundle("detector-student", out=folder / "bundle", checkpoint=folder / "weights.pt",
                               parity_sizes=[(160, 224)], progress=lambda m: None)
    return path, meta, model


def test_portable_parity_with_pytorch_nms(bundle):
    _, meta, _ = bundle
    results = meta["parity"]["results"]
    assert [r["flavour"] for r in results] == ["portable"] and all(r["passed"] for r in results)
    assert all(r["detections"] == 100 and r["detection_agreement"] == 1.0 for r in results)
    assert "plugins" in meta["parity"]["not_run"]
    assert [o["name"] for o in meta["outputs"]] == ["boxes", "scores", "classes", "num_detections"]


def test_the_torch_backend_gives_the_output_dtypes_onnxruntime_gives(bundle):
    path, _, _ = bundle
    image = np.random.default_rng(0).standard_normal((1, 3, 160, 224)).astype(np.float32)
    by_backend = {name: load(path, backend=name)(image) for name in ("onnxruntime", "torch")}
    dtypes = {name: {k: v.dtype.name for k, v in out.items()} for name, out in by_backend.items()}
    assert dtypes["torch"] == dtypes["onnxruntime"] and dtypes["torch"]["classes"] == "int64"  # indices stay ints
    np.testing.assert_array_equal(by_backend["torch"]["num_detections"], by_backend["onnxruntime"]["num_detections"])


def test_portable_graph_outputs_and_nms_node(bundle):
    path, _, _ = bundle
    proto = onnx.load(str(path / "model.onnx"))
    types = {o.name: o.type.tensor_type.elem_type for o in proto.graph.output}
    assert types == {"boxes": onnx.TensorProto.FLOAT, "scores": onnx.TensorProto.FLOAT,
                     "classes": onnx.TensorProto.INT64, "num_detections": onnx.TensorProto.INT64}
    assert [n.op_type for n in proto.graph.node].count("NonMaxSuppression") == 1


def test_plugins_flavour_has_efficient_nms_on_the_pre_nms_tensors(bundle):
    path, _, model = bundle
    proto = onnx.load(str(path / "model.plugins.onnx"))
    nodes = [n for n in proto.graph.node if n.op_type == "EfficientNMS_TRT"]
    assert len(nodes) == 1 and not any(n.op_type == "NonMaxSuppression" for n in proto.graph.node)
    node = nodes[0]
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attributes == {"background_class": -1, "box_coding": 0, "iou_threshold": pytest.approx(0.6),
                          "max_output_boxes": 100, "plugin_version": b"1", "score_activation": 0,
                          "score_threshold": pytest.approx(0.05), "class_agnostic": 0}
    # its inputs, cut out as a graph of their own, are exactly the model's pre-NMS boxes and scores
    sub = Extractor(proto).extract_model(["image"], list(node.input))
    x = torch.randn(1, 3, 128, 160)
    boxes, scores = ort.InferenceSession(sub.SerializeToString()).run(None, {"image": x.numpy()})
    with torch.no_grad():
        expected_boxes, expected_scores = model.predict(x)
    np.testing.assert_allclose(boxes, expected_boxes.numpy(), atol=1e-3)
    np.testing.assert_allclose(scores, expected_scores.numpy(), atol=1e-5)


def test_version_compatible_plan_is_refused_for_efficient_nms(bundle, pspnet_bundle, capsys):
    """A version-compatible plan cannot carry TensorRT's own EfficientNMS_TRT; refused before TensorRT is imported,
    so on any machine. The portable flavour (int8's source) and our own plugins are fine."""
    path, _, _ = bundle
    assert "EfficientNMS_TRT" in version_compatible_problem(path / "model.plugins.onnx")
    assert version_compatible_problem(path / "model.onnx") is None
    ours = onnx.load(str(pspnet_bundle / "model.plugins.onnx")).graph.node
    assert any(n.op_type == "EdgePyramidPooling" and n.domain not in ("", "ai.onnx") for n in ours)
    assert version_compatible_problem(pspnet_bundle / "model.plugins.onnx") is None
    with pytest.raises(EdgestackError, match="--version-compatible: model.plugins.onnx uses TensorRT's own plugin "
                                             "EfficientNMS_TRT.*build without it"):
        build_engine(path, "fp16", version_compatible=True)
    assert main(["build", str(path), "--version-compatible"]) == 2
    assert "EfficientNMS_TRT" in capsys.readouterr().err


def test_infer_draws_boxes(bundle, tmp_path):
    path, _, _ = bundle
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (130, 150, 3), dtype=np.uint8)  # not a multiple of 32: padded inside detect
    engine = load(path, backend="onnxruntime")
    rgb, detections = detect(engine, image)
    assert rgb.shape == image.shape and 0 < len(detections) <= 100
    assert all(0 <= d["box"][0] <= d["box"][2] <= 150 and d["label"] == "defect" for d in detections)
    # Detections in the padding (160x160 here) are not reported as slivers on the image's edge.
    assert all(d["box"][2] - d["box"][0] >= 1 and d["box"][3] - d["box"][1] >= 1 for d in detections)
    import cv2

    cv2.imwrite(str(tmp_path / "in.png"), image)
    assert main(["infer", str(path), str(tmp_path / "in.png"), "--out", str(tmp_path / "out.png"),
                 "--backend", "onnxruntime"]) == 0
    assert (tmp_path / "out.png").is_file()
    assert json.loads((path / "meta.json").read_text())["postprocess"]["kind"] == "detection"
    with pytest.raises(EdgestackError, match="image is 150x1025; this detector takes at most 1024x1024: downscale"):
        detect(engine, np.zeros((1025, 150, 3), np.uint8))  # not the padded 1056 it used to name
    for min_score in (float("nan"), 7.0, -0.1, "0.5"):  # each dropped every detection without a word, or raised
        with pytest.raises(EdgestackError, match="min_score must be a number from 0 to 1"):  # a TypeError
            detect(engine, image, min_score=min_score)
    assert detect(engine, image, min_score=np.float32(0.0))[1] == detect(engine, image)[1]  # any scalar number


def test_an_int8_detector_is_judged_by_the_detections_it_keeps(bundle, tmp_path):
    import shutil

    from edgestack.export.quantize import quantize

    copy = tmp_path / "detector"
    shutil.copytree(bundle[0], copy)
    figures = quantize(copy, samples=2, progress=lambda message: None)["parity_vs_fp32"]
    assert figures["detections_fp32"] > 0 and 0 <= figures["fp32_detections_kept"] <= 1
    assert "detections int8 also makes" in (copy / "report.md").read_text()


def test_an_engine_giving_nan_gives_no_result_rather_than_fewer_results(bundle, pspnet_bundle, mat_edge_bundle,
                                                                        monkeypatch):
    # NaN boxes and scores were dropped as slivers and low scores (no detection: a missed defect), NaN class
    # scores became class 0, and NaN inpainting filled holes with black, each without a word.
    from edgestack.errors import EngineOutputError
    from edgestack.runtime.inpaint import inpaint
    from edgestack.runtime.segmentation import segment

    image = np.random.default_rng(0).integers(0, 255, (130, 150, 3), dtype=np.uint8)
    hole = np.zeros((130, 150), np.uint8)
    hole[40:60, 50:90] = 255
    for path, run, what in ((bundle[0], detect, "detected boxes"), (pspnet_bundle, segment, "class scores"),
                            (mat_edge_bundle, lambda engine, image: inpaint(engine, image, hole), "inpainted windows")):
        engine = load(path, backend="onnxruntime")
        run(engine, image)  # as it is: a result
        overflow_outputs(engine, monkeypatch)
        with pytest.raises(EngineOutputError, match=f"the {what} of image.* NaN/Inf value.*, so no result"):
            run(engine, image)


def test_infer_names_the_command_a_defect_bundle_needs(defectseg_bundle, tmp_path, capsys):
    import cv2

    cv2.imwrite(str(tmp_path / "in.png"), np.full((128, 128, 3), 90, np.uint8))
    assert main(["infer", str(defectseg_bundle), str(tmp_path / "in.png"), "--out", str(tmp_path / "o.png")]) == 2
    assert "not segmentation; run it with `edgestack inspect`" in capsys.readouterr().err
