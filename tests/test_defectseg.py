"""defectseg: size budget, deploy form, export through the bundle path, and the shipped weights' quality."""

import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from edgestack.bundle import read_meta
from edgestack.errors import EdgestackError
from edgestack.models import resolve
from edgestack.runtime import load
from edgestack.train.evaluate import evaluate_defects
from edgestack.train.synthetic import HELDOUT_SEED, make_sample

SHIPPED = Path(resolve("defectseg-s")[0].extras["default_checkpoint"]["defectseg-s"])


def params_and_gmacs(config: str, size: int = 352) -> tuple[int, float]:
    spec, name = resolve(config)
    model = spec.build(spec.configs[name])
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    return sum(p.numel() for p in model.parameters()), counter.get_total_flops() / 2 / 1e9


def test_small_config_fits_the_edge_budget():
    params, gmacs = params_and_gmacs("defectseg-s")
    assert params <= 5_000_000 and gmacs <= 5.0
    params_m, gmacs_m = params_and_gmacs("defectseg-m")
    assert params_m > params and gmacs_m > gmacs


def test_deploy_form_gives_probabilities_training_gives_logits():
    spec, name = resolve("defectseg-s")
    model = spec.build(spec.configs[name])
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        prob = model(x)
    assert prob.shape == (2, 1, 96, 128) and 0 <= prob.min() and prob.max() <= 1
    model.train()
    logits, aux = model(x)
    assert logits.shape == aux.shape == (2, 1, 96, 128) and logits.min() < 0  # raw logits, not squashed
    assert spec.axes(spec.configs[name])["height"].multiple_of == 32


def test_bundle_with_shipped_weights(defectseg_bundle):
    bundle, meta = defectseg_bundle, read_meta(defectseg_bundle)
    assert meta["weights"]["shipped"] and not meta["weights"]["random"]
    assert meta["onnx"]["plugin_nodes"] == {"EdgePyramidPooling": 1} and meta["onnx"]["portable_custom_nodes"] == {}
    assert [o["name"] for o in meta["outputs"]] == ["prob"] and meta["postprocess"]["kind"] == "defect_probability"
    assert all(r["passed"] for r in meta["parity"]["results"]) and len(meta["parity"]["results"]) == 2
    plugins = onnx.load(str(bundle / "model.plugins.onnx"))
    assert [n.op_type for n in plugins.graph.node].count("EdgePyramidPooling") == 1
    assert plugins.graph.output[0].name == "prob"
    engine = load(bundle, backend="onnxruntime")
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 128)).astype(np.float32)
    prob = engine(x)["prob"]
    assert prob.shape == (1, 1, 64, 128) and 0 <= prob.min() and prob.max() <= 1


@pytest.fixture(scope="module")
def shipped_heldout(tmp_path_factory):
    # What the card's command runs (`edgestack eval defectseg --data synthetic --count 400`): no checkpoint means
    # the shipped weights, no network. The whole held-out set: a slice is too noisy to judge the goals.
    results, paths = evaluate_defects(count=400, out=tmp_path_factory.mktemp("heldout"))
    assert json.loads(paths["json"].read_text())["config"] == "defectseg-s"
    return results


def test_shipped_weights_load_offline_and_match_their_card(shipped_heldout):
    assert SHIPPED.is_file(), "models/defectseg/weights/defectseg-s.safetensors is missing"
    card = json.loads(SHIPPED.with_suffix(".json").read_text())
    recorded = card["heldout"]
    assert card["config"] == "defectseg-s" and recorded["count"] == 400
    # The card was measured on the fp32 checkpoint; these are its fp16 weights as shipped.
    for key in ("S", "wF", "MAE"):
        assert shipped_heldout[key] == pytest.approx(recorded[key], abs=2e-3), key
    assert abs(shipped_heldout["accuracy"] - recorded["accuracy"]) <= 1 / 400
    # Better than an all-zero map, which scores S 0.505 and recall 0.
    assert shipped_heldout["S"] > 0.55 and shipped_heldout["recall"] > 0.5


def test_shipped_weights_meet_the_mae_and_ok_ng_accuracy_goals(shipped_heldout):
    assert shipped_heldout["MAE"] <= 0.02 and shipped_heldout["accuracy"] >= 0.95, shipped_heldout


def test_shipped_weights_meet_the_s_measure_goal(shipped_heldout):
    assert shipped_heldout["S"] >= 0.85, shipped_heldout


def test_calibrated_rules_give_inspect_the_verdicts_eval_reported(defectseg_bundle, tmp_path):
    # --tiled runs the bundle as inspect does; the rule calibrated there, written as a rules file, must give
    # inspect exactly the calibrated recall and false rejects on the same images.
    from edgestack.runtime.defects import load_rules
    from edgestack.runtime.inspect import Inspector

    rules_path = tmp_path / "line" / "rules.json"
    resized, _ = evaluate_defects(count=10, out=tmp_path / "resized", bundle=defectseg_bundle, backend="onnxruntime")
    _, paths = evaluate_defects(count=10, out=tmp_path / "tiled", bundle=defectseg_bundle, backend="onnxruntime",
                                tiled=True, target_recall=0.5, rules_out=rules_path)
    report = json.loads(paths["json"].read_text())
    # 256-px images fit one 352-px tile: the same maps as resizing to 256, so the same verdicts.
    assert report["results"]["accuracy"] == resized["accuracy"] and "inspect runs them" in report["title"]
    chosen = report["calibration"]
    assert chosen["reachable"] and chosen["recall"] >= 0.5 and paths["rules"] == rules_path
    assert "Calibrated for recall >= 0.5" in paths["markdown"].read_text()
    # The trade-off table calibrates for each standard target; more recall never costs fewer false rejects.
    trade = report["trade_off"]
    assert [c["target_recall"] for c in trade] == [0.8, 0.9, 0.95, 0.99, 1.0]
    reachable = [c for c in trade if c["reachable"]]
    assert reachable and all(c["recall"] >= c["target_recall"] for c in reachable)
    assert [c["fp"] for c in reachable] == sorted(c["fp"] for c in reachable)
    assert "| recall target | threshold |" in paths["markdown"].read_text()
    inspector = Inspector(defectseg_bundle, load_rules(rules_path), backend="onnxruntime")
    verdicts = []
    for i in range(10):
        sample = make_sample(HELDOUT_SEED, i)
        verdicts.append((inspector.inspect(sample.image)[0]["status"] == "NG", sample.positive))
    assert sum(ng and positive for ng, positive in verdicts) == chosen["tp"]
    assert sum(ng and not positive for ng, positive in verdicts) == chosen["fp"]
    # eval --rules judges by the whole file as inspect does: the written rules give the calibrated verdicts, and
    # a max_count no image reaches turns every verdict OK.
    judged, _ = evaluate_defects(count=10, out=tmp_path / "judged", bundle=defectseg_bundle, backend="onnxruntime",
                                 tiled=True, rules=rules_path)
    assert (judged["tp"], judged["fp"], judged["rules"]["min_area_px"]) == (chosen["tp"], chosen["fp"],
                                                                          chosen["min_area_px"])
    lenient = tmp_path / "lenient.json"
    lenient.write_text(json.dumps(json.loads(rules_path.read_text()) | {"max_count": 100000}))
    all_ok, paths = evaluate_defects(count=10, out=tmp_path / "lenient", bundle=defectseg_bundle,
                                     backend="onnxruntime", tiled=True, rules=lenient)
    assert (all_ok["tp"], all_ok["fp"], all_ok["recall"]) == (0, 0, 0.0)
    assert '"max_count": 100000' in paths["markdown"].read_text()
    with pytest.raises(EdgestackError, match="pass --bundle"):
        evaluate_defects(count=1, tiled=True, out=tmp_path / "x")
    with pytest.raises(EdgestackError, match="pass --target-recall"):
        evaluate_defects(count=1, rules_out=rules_path, out=tmp_path / "x")
    # Calibrating again into a rules file the line has added to would drop its additions (a lenient file here).
    for added in (lenient, tmp_path / "report.md"):
        if added.suffix == ".md":
            added.write_text("# notes")
        with pytest.raises(EdgestackError, match=f"--rules-out {added} exists and holds more than a calibrated rule"):
            evaluate_defects(count=1, target_recall=0.5, rules_out=added, out=tmp_path / "x",
                             bundle=defectseg_bundle, backend="onnxruntime", tiled=True)
    assert "max_count" in lenient.read_text()
    with pytest.raises(EdgestackError, match="calibrate without --rules"):  # it would drop the file's rois
        evaluate_defects(count=1, target_recall=0.5, rules=rules_path, rules_out=rules_path, out=tmp_path / "x",
                         bundle=defectseg_bundle, backend="onnxruntime", tiled=True)
    # A rule calibrated on resized frames would miss its target recall in inspect, which runs them tiled.
    for untiled in ({"bundle": defectseg_bundle, "backend": "onnxruntime"}, {"checkpoint": SHIPPED}):
        with pytest.raises(EdgestackError, match="--rules-out writes a rule for inspect.*pass --tiled with --bundle"):
            evaluate_defects(count=1, target_recall=0.5, rules_out=tmp_path / "untiled.json", out=tmp_path / "x",
                             **untiled)
    assert not (tmp_path / "untiled.json").exists()


def test_tiled_eval_reports_the_images_inspect_gives_no_verdict_and_evaluates_the_rest(defectseg_bundle, tmp_path):
    from edgestack.train.synthetic import write_synthetic

    write_synthetic(tmp_path / "set", 4, seed=3, size=96)
    cv2.imwrite(str(tmp_path / "set" / "Negative" / "Image" / "tiny.png"), np.full((40, 40, 3), 90, np.uint8))
    # Judged as inspect judges: a blank frame, and an image no region of interest of the rules meets, get no
    # verdict there and are reported here (the second aborted the whole evaluation).
    cv2.imwrite(str(tmp_path / "set" / "Negative" / "Image" / "blank.png"), np.full((96, 96, 3), 90, np.uint8))
    wide = np.random.default_rng(0).integers(80, 100, (96, 200, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "set" / "Negative" / "Image" / "wide.png"), wide)
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"rois": [[100, 0, 200, 96]]}))  # inside wide.png only
    results, paths = evaluate_defects(data=str(tmp_path / "set"), out=tmp_path / "eval", bundle=defectseg_bundle,
                                      backend="onnxruntime", tiled=True, rules=rules)
    assert (results["positives"], results["negatives"]) == (0, 1)
    skipped = {Path(name).name: reason for name, reason in json.loads(paths["json"].read_text())["skipped"]}
    assert "at least 64x64" in skipped.pop("tiny.png") and "blank frame" in skipped.pop("blank.png")
    assert len(skipped) == 4 and all("no region of interest" in reason for reason in skipped.values())
    assert "**6 image(s) skipped, without a verdict" in paths["markdown"].read_text()  # not in results.json alone


def test_target_recall_with_every_positive_skipped_keeps_the_figures_and_says_why(defectseg_bundle, tmp_path):
    # The only defective part is too small for --tiled: the evaluation of the rest is written, then the
    # calibration is refused (it raised a bare "calibration needs ..." and lost the written figures' path).
    folder = tmp_path / "line"
    for sub in ("Positive/Image", "Positive/GroundTruth", "Negative/Image"):
        (folder / sub).mkdir(parents=True)
    mask = np.zeros((40, 40), np.uint8)
    mask[10:20, 10:20] = 255
    cv2.imwrite(str(folder / "Positive" / "Image" / "tiny.png"), np.full((40, 40, 3), 90, np.uint8))
    cv2.imwrite(str(folder / "Positive" / "GroundTruth" / "tiny.png"), mask)
    good = np.random.default_rng(0).integers(80, 100, (128, 128, 3), dtype=np.uint8)  # not blank: judged
    cv2.imwrite(str(folder / "Negative" / "Image" / "good.png"), good)
    rules_path = tmp_path / "rules.json"
    with pytest.raises(EdgestackError, match=r"no image of a defective part in .*line was evaluated \(1 skipped, "
                                             r"listed in .*results.json\).*rules.json not written"):
        evaluate_defects(data=str(folder), out=tmp_path / "eval", bundle=defectseg_bundle, backend="onnxruntime",
                         tiled=True, target_recall=0.9, rules_out=rules_path)
    report = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert report["results"]["negatives"] == 1 and report["calibration"] is None and not rules_path.exists()


def test_a_bundle_giving_nan_stops_the_evaluation_rather_than_skipping_frames(defectseg_bundle, tmp_path,
                                                                            monkeypatch):
    # Its frames were skipped like blank ones, and the figures covered the rest without a word.
    from edgestack.errors import EngineOutputError
    from edgestack.runtime.inspect import Inspector
    from edgestack.train.synthetic import write_synthetic

    write_synthetic(tmp_path / "set", 2, seed=3, size=96)
    monkeypatch.setattr(Inspector, "probability", lambda self, rgb: np.full(rgb.shape[:2], np.nan, np.float32))
    with pytest.raises(EngineOutputError, match="NaN"):
        evaluate_defects(data=str(tmp_path / "set"), out=tmp_path / "eval", bundle=defectseg_bundle,
                         backend="onnxruntime", tiled=True)


def test_rules_are_not_written_from_defective_parts_alone(defectseg_bundle, tmp_path):
    # The fewest false rejects over no good part is any rule at all: it was written, reporting 0 false rejects.
    from edgestack.train.synthetic import write_synthetic

    write_synthetic(tmp_path / "set", 3, seed=3, size=96, negative_fraction=0.0)
    rules_path = tmp_path / "rules.json"
    with pytest.raises(EdgestackError, match=r"--rules-out: no image of a good part in .*set was evaluated, so the "
                                             r"rule's false rejects are unknown; .*rules.json not written"):
        evaluate_defects(data=str(tmp_path / "set"), out=tmp_path / "eval", bundle=defectseg_bundle,
                         backend="onnxruntime", tiled=True, target_recall=0.5, rules_out=rules_path)
    assert not rules_path.exists() and (tmp_path / "eval" / "results.json").is_file()


def test_an_unreachable_target_recall_writes_no_rules(defectseg_bundle, tmp_path):
    # A defect the model cannot see (a flat image): no threshold finds it, so no rules file claims it would.
    folder = tmp_path / "line"
    for sub in ("Image", "GroundTruth"):
        (folder / "Positive" / sub).mkdir(parents=True)
    flat = np.random.default_rng(0).integers(127, 130, (128, 128, 3), dtype=np.uint8)  # flat, not blank (judged)
    cv2.imwrite(str(folder / "Positive" / "Image" / "part1.png"), flat)
    mask = np.zeros((128, 128), np.uint8)
    mask[40:60, 40:60] = 255
    cv2.imwrite(str(folder / "Positive" / "GroundTruth" / "part1.png"), mask)
    rules_path = tmp_path / "rules.json"
    with pytest.raises(EdgestackError, match="no rule reaches recall 1"):
        evaluate_defects(data=str(folder), out=tmp_path / "eval", bundle=defectseg_bundle, backend="onnxruntime",
                         tiled=True, target_recall=1.0, rules_out=rules_path)
    assert not rules_path.exists()
    report = (tmp_path / "eval" / "results.md").read_text()
    assert "is out of reach here" in report and "| 0.8 | out of reach (best recall 0.000) |" in report


@pytest.mark.parametrize("config", ["defectseg-s", "defectseg-m"])
def test_configs_resolve(config):
    spec, name = resolve(config)
    assert spec.name == "defectseg" and name == config


def test_the_exported_bundle_scores_as_its_checkpoint(defectseg_bundle, tmp_path):
    # What a line deploys is measured by the same protocol: the bundle on onnxruntime, with the preprocessing
    # meta.json records, against the shipped PyTorch weights it was exported from, image by image.
    checkpoint, _ = evaluate_defects(count=12, out=tmp_path / "checkpoint")
    deployed, paths = evaluate_defects(count=12, out=tmp_path / "bundle", bundle=defectseg_bundle,
                                       backend="onnxruntime")
    report = json.loads(paths["json"].read_text())
    assert ", onnxruntime (CPUExecutionProvider)" in report["title"] and report["config"] == "defectseg-s"
    reference = json.loads((tmp_path / "checkpoint" / "results.json").read_text())["per_image"]
    assert [r["predicted_ng"] for r in report["per_image"]] == [r["predicted_ng"] for r in reference]
    assert max(abs(a.get("S", 0) - b.get("S", 0)) for a, b in zip(report["per_image"], reference)) < 1e-3
    assert abs(deployed["MAE"] - checkpoint["MAE"]) < 1e-4
    with pytest.raises(EdgestackError, match="drop --checkpoint"):
        evaluate_defects(count=1, checkpoint=SHIPPED, bundle=defectseg_bundle, out=tmp_path / "x")
    with pytest.raises(EdgestackError, match="holds defectseg-s, not defectseg-m"):
        evaluate_defects("defectseg-m", count=1, bundle=defectseg_bundle, out=tmp_path / "x")
