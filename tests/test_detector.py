"""The detector: sizes, boxes from masks, bad annotations, assignment, NMS semantics, losses and a few steps."""

import math

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from edgestack.models import resolve
from edgestack.models.detector.model import Detector
from edgestack.models.detector.nms import nms_indices
from edgestack.train import detection
from edgestack.train.datasets import DefectDataset


def _config(name: str) -> dict:
    spec, config = resolve(name)
    return spec.configs[config]


def _flops(name: str) -> int:
    model = Detector(**_config(name)).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.raw(torch.randn(1, 3, 128, 128))
    return counter.get_total_flops()


def test_student_has_at_most_a_quarter_of_the_teachers_flops():
    assert _flops("detector-student") <= _flops("detector-teacher") / 4


def test_deploy_forward_gives_padded_detections():
    model = Detector(**_config("detector-student")).eval()
    boxes, scores, classes, count = model(torch.randn(2, 3, 128, 160))
    assert boxes.shape == (2, 100, 4) and scores.shape == (2, 100)
    assert classes.dtype == torch.int64 and count.dtype == torch.int64 and count.shape == (2,)


def test_boxes_from_mask_are_connected_components_without_specks():
    mask = np.zeros((20, 30), np.uint8)
    mask[2:5, 3:10] = 255  # 3 rows x 7 columns
    mask[10:18, 20:22] = 255
    mask[0, 29] = 255  # a one-pixel speck: not a defect box
    boxes = detection.boxes_from_mask(mask)
    assert sorted(boxes.tolist()) == [[3, 2, 10, 5], [20, 10, 22, 18]]
    assert detection.boxes_from_mask(np.zeros((8, 8), np.uint8)).shape == (0, 4)


def test_sanitize_clips_and_drops_bad_boxes_and_counts_them():
    boxes = np.array([
        [-5, 2, 10, 8],  # partly outside: clipped
        [40, 40, 50, 50],  # wholly outside a 32x32 image: degenerate after clipping
        [5, 5, 5, 9],  # zero width
        [9, 9, 3, 3],  # reversed
        [1, 1, np.nan, 4],  # non-finite
        [2, 2, 6, 6],  # fine
    ], np.float32)
    kept, counts = detection.sanitize_boxes(boxes, 32, 32)
    assert kept.tolist() == [[0, 2, 10, 8], [2, 2, 6, 6]]
    assert counts == {"non_finite": 1, "degenerate": 3, "clipped": 1}


def test_assign_centre_sampling_levels_and_tiny_box_fallback():
    sizes = [(16, 16), (8, 8), (4, 4)]
    centres = detection.points(sizes)
    strides = detection.location_strides(sizes)
    # a 20x20 box (reach <= 32: stride 8); stride-8 centres are 4, 12, 20, ...: those within 1.5 strides (12 px)
    # of its centre (30, 30) and strictly inside it are 28 and 36 on each axis
    matched = detection.assign(centres, strides, torch.tensor([[20.0, 20, 40, 40]]))
    pos = centres[matched == 0]
    assert (strides[matched == 0] == 8).all()
    assert sorted(map(tuple, pos.tolist())) == [(x, y) for x in (28.0, 36.0) for y in (28.0, 36.0)]
    # a 2x2 box between location centres still gets its nearest stride-8 location
    matched = detection.assign(centres, strides, torch.tensor([[9.0, 9, 11, 11]]))
    assert centres[matched == 0].tolist() == [[12.0, 12.0]]
    assert (detection.assign(centres, strides, torch.zeros(0, 4)) == -1).all()


def test_nms_reference_semantics():
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 0, 10, 9]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95])
    # box 3 (0.95) first; box 0 has IoU 0.9 with it, box 1 IoU 90/110 = 0.818 > 0.6 -> both suppressed
    assert nms_indices(boxes, scores, 0.6, 100).tolist() == [3, 2]
    assert nms_indices(boxes, scores, 0.95, 100).tolist() == [3, 0, 1, 2]
    assert nms_indices(boxes, scores, 0.95, 2).tolist() == [3, 0]
    out_boxes, out_scores, classes, count = torch.ops.edgestack.detection_nms(
        boxes[None], scores[None, :, None], 3, 0.6, 0.75)
    assert count.tolist() == [1] and out_scores[0].tolist() == pytest.approx([0.95, 0, 0])
    assert out_boxes[0, 1:].abs().sum() == 0 and classes.tolist() == [[0, 0, 0]]


@pytest.mark.gpu
def test_nms_on_cuda_tensors_gives_the_hosts_detections_on_the_device():
    # Its working tensors were made on the host: the torch backend of a detector bundle failed on any CUDA machine.
    generator = torch.Generator().manual_seed(0)
    corners = torch.rand(2, 300, 2, generator=generator) * 200
    boxes = torch.cat([corners, corners + 5 + torch.rand(2, 300, 2, generator=generator) * 40], dim=2)
    scores = torch.rand(2, 300, 3, generator=generator)
    on_host = torch.ops.edgestack.detection_nms(boxes, scores, 50, 0.5, 0.3)
    on_cuda = torch.ops.edgestack.detection_nms(boxes.cuda(), scores.cuda(), 50, 0.5, 0.3)
    for want, got in zip(on_host, on_cuda):
        assert got.device.type == "cuda" and torch.equal(got.cpu(), want)


def test_harmony_table_bins():
    table = detection.harmony_table(torch.tensor([0.1, 0.5, 0.95, 0.7, 1.0, 0.69]))
    assert table["easy_predictions"] == 6
    assert list(table["share"].values()) == pytest.approx([1 / 6, 2 / 6, 1 / 6, 2 / 6])


def test_losses_finite_with_empty_images_and_bad_boxes():
    model = Detector(**_config("detector-student")).train()
    images = torch.randn(3, 3, 128, 128)
    bad = np.array([[200, 200, 260, 240], [5, 5, 5, 5], [-10, -10, 30, 20]], np.float32)
    kept, counts = detection.sanitize_boxes(bad, 128, 128)
    boxes = [torch.zeros(0, 4), torch.from_numpy(kept), torch.zeros(0, 4)]
    losses = detection.detection_loss(model.raw(images), boxes)
    assert all(math.isfinite(float(v.detach())) for v in losses.values())
    assert int(losses["positives"]) > 0 and counts["degenerate"] == 2
    losses["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    nothing = detection.detection_loss(model.raw(images), [torch.zeros(0, 4)] * 3)
    assert float(nothing["giou"]) == 0.0 and math.isfinite(float(nothing["loss"].detach()))


def test_a_few_training_steps_plain_and_distilled_stay_finite():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (128, 128, 3), dtype=np.uint8) for _ in range(8)]
    masks = [np.zeros((128, 128), np.uint8) for _ in range(8)]
    for mask in masks[:4]:
        mask[30:60, 40:90] = 255
    data = DefectDataset(images, masks, train=True, seed=0)
    teacher = Detector(**_config("detector-teacher")).eval()  # distillation only needs its forward
    student, history = detection.train_detector(_config("detector-student"), data, 1, 4, teacher=teacher,
                                                log=lambda m: None)
    assert all(math.isfinite(history[0][k]) for k in ("loss", "qfl", "giou", "hd", "tfd"))
    boxes = [detection.boxes_from_mask(m) for m in masks[3:5]]  # one image with a box, one without
    results = detection.evaluate(student, np.stack(images[3:5]), boxes)
    assert 0.0 <= results["mAP"] <= results["mAP50"] <= 1.0 and results["boxes"] == 1


class DetectsGivenBoxes(torch.nn.Module):
    """Stands in for a trained detector in `evaluate`: detects exactly the boxes given for each image."""

    def __init__(self, boxes):
        super().__init__()
        self.boxes, self.seen = [torch.tensor(b, dtype=torch.float32).reshape(-1, 4) for b in boxes], 0

    def forward(self, batch):
        given = self.boxes[self.seen: self.seen + len(batch)]
        out = torch.zeros(len(batch), 100, 4)
        for i, b in enumerate(given):
            out[i, : len(b)] = b
        counts = torch.tensor([len(b) for b in given])
        return out, torch.full((len(batch), 100), 0.9), torch.zeros(len(batch), 100, dtype=torch.long), counts

    def predict(self, batch):
        boxes, scores, _, _ = self.forward(batch)
        self.seen += len(batch)
        return boxes, scores[..., None]


def test_map_scores_boxes_as_infer_reports_them_and_is_none_without_ground_truth():
    # Defects running off the frame: the model's boxes reach past it, infer clips them to exactly the truth, and
    # evaluate scored the unclipped ones as misses (mAP 0). A validation split without boxes gave COCOeval's -1.
    truth = [np.array([[0, 10, 30, 40]], np.float32), np.array([[100, 100, 128, 128]], np.float32)]
    past_the_edge = [[[-40, 10, 30, 40]], [[100, 100, 170, 170], [130, 0, 160, 20]]]  # the last: off the image
    images = np.zeros((2, 128, 128, 3), np.uint8)
    results = detection.evaluate(DetectsGivenBoxes(past_the_edge), images, truth)
    assert (results["mAP"], results["mAP50"], results["detections"]) == (1.0, 1.0, 2)
    nothing_to_find = detection.evaluate(DetectsGivenBoxes(past_the_edge), images, [np.zeros((0, 4))] * 2)
    assert nothing_to_find["mAP"] is None and nothing_to_find["mAP50"] is None


def test_an_interrupted_detector_run_keeps_its_last_epoch_and_resumes(tmp_path):
    from edgestack.errors import EdgestackError

    def stop_after_first_epoch(message):
        if message.startswith("epoch 1/"):
            raise KeyboardInterrupt

    out = tmp_path / "run"
    common = dict(model_name="detector-student", config=None, data="synthetic", out=out, batch_size=8, size=64,
                  lr=2e-3, synthetic_count=20, seed=0, teacher=None, distill=None, threads=1)
    with pytest.raises(KeyboardInterrupt):
        detection.train_command(epochs=3, log=stop_after_first_epoch, **common)
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and len(state["history"]) == 1 and not (out / "best.pt").exists()
    with pytest.raises(EdgestackError, match="pass --resume to continue that run"):
        detection.train_command(epochs=3, log=lambda m: None, **common)
    with pytest.raises(EdgestackError, match=r"was trained with other options \(distill None -> tbd; teacher None "
                                             "-> detector-teacher"):
        teacher = tmp_path / "teacher.pt"
        detection.save_checkpoint(teacher, Detector(**_config("detector-teacher")), "detector-teacher", {})
        detection.train_command(epochs=3, resume=True, log=lambda m: None,
                                **(common | {"teacher": str(teacher), "distill": "tbd"}))
    with pytest.raises(EdgestackError, match=r"was trained with other options \(lr 0.002 -> 0.01\)"):
        detection.train_command(epochs=3, resume=True, log=lambda m: None, **(common | {"lr": 1e-2}))
    # A stop while last.pt is being written leaves the previous epoch's file, not a damaged one.
    before = (out / "last.pt").read_bytes()

    def interrupted(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch, "save", interrupted)
        with pytest.raises(KeyboardInterrupt):
            detection.save_checkpoint(out / "last.pt", Detector(**_config("detector-student")), "x", {})
    assert (out / "last.pt").read_bytes() == before and not list(out.glob("*.tmp"))
    messages = []

    def stopped_in_the_final_evaluation(*args, **kwargs):
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as patch:  # the final weights were written after it: a stop there lost them
        patch.setattr(detection, "evaluate", stopped_in_the_final_evaluation)
        with pytest.raises(KeyboardInterrupt):
            detection.train_command(epochs=2, resume=True, log=messages.append, **common)
    assert messages[0] == f"resumed {out / 'last.pt'} after epoch 1" and messages[1].startswith("epoch 2/2")
    resumed = torch.load(out / "best.pt", weights_only=True)
    assert resumed["config"] == "detector-student" and not (out / "summary.json").exists()
    # Resumed, the run went on with epoch 2's shuffles and augmentations: the weights of a run never stopped.
    summary = detection.train_command(epochs=2, log=lambda m: None, **(common | {"out": tmp_path / "whole"}))
    whole = torch.load(tmp_path / "whole" / "best.pt", weights_only=True)
    assert all(torch.equal(resumed["state_dict"][key], value) for key, value in whole["state_dict"].items())
    assert [h["epoch"] for h in summary["history"]] == [1, 2]
    # The resumed run kept epoch 1's record as it was (the run never stopped took its own time for it).
    assert torch.load(out / "last.pt", weights_only=True)["history"][0] == state["history"][0]
    with pytest.raises(EdgestackError, match="already holds 2 epoch"):
        detection.train_command(epochs=2, resume=True, log=lambda m: None, **common)
    for damaged, why in ((b"not a checkpoint", "not a readable torch file"),
                         ((out / "best.pt").read_bytes()[:3000], "could not be read"),
                         (None, "not the state of an edgestack training run")):
        if damaged is None:
            torch.save({"weights": torch.zeros(1)}, out / "last.pt")
        else:
            (out / "last.pt").write_bytes(damaged)
        with pytest.raises(EdgestackError, match=f"{out / 'last.pt'}.*{why}"):
            detection.train_command(epochs=3, resume=True, log=lambda m: None, **common)
    with pytest.raises(EdgestackError, match="--size 100 must be a multiple of 32"):  # as train and the bundle
        detection.eval_command("detector-student", None, str(out / "best.pt"), tmp_path / "eval", 100, 4, 1)


def test_a_teacher_checkpoint_of_another_model_is_refused_by_name(tmp_path):
    from edgestack.errors import EdgestackError

    teacher = tmp_path / "defectseg.pt"
    torch.save({"config": "defectseg-s", "state_dict": {"w": torch.zeros(1)}}, teacher)
    with pytest.raises(EdgestackError, match="holds defectseg-s weights, of the defectseg model, not detector; pass "
                                             "a detector checkpoint"):
        detection.train_command("detector-student", None, "synthetic", tmp_path / "run", 1, 8, 64, 2e-3, 8, 0,
                                str(teacher), "tbd", 1)


def test_weights_are_read_as_the_config_they_record_or_whose_tensors_they_are(tmp_path, capsys):
    # A teacher's best.pt was exported as the default student (a 2.4 KB dump of mismatched keys), and a teacher's
    # weights.safetensors could not be a --teacher: both were built as detector-student.
    from safetensors.torch import save_file

    from edgestack.cli import main
    from edgestack.errors import EdgestackError
    from edgestack.models import resolve_recorded
    from edgestack.train.evaluate import load_trained

    teacher = Detector(**_config("detector-teacher"))
    detection.save_checkpoint(tmp_path / "teacher" / "best.pt", teacher, "detector-teacher", {})
    save_file(teacher.state_dict(), tmp_path / "weights.safetensors")
    assert resolve_recorded("detector", None, "detector-teacher", "best.pt")[1] == "detector-teacher"
    assert resolve_recorded("detector", None, None, "w.safetensors")[1] == "detector-student"  # the default
    for name, config in (("detector-student", None), ("detector", "detector-student")):
        with pytest.raises(EdgestackError, match="holds detector-teacher weights, not detector-student; name "
                                                 "detector-teacher"):
            resolve_recorded(name, config, "detector-teacher", "best.pt")
    for path in (tmp_path / "teacher" / "best.pt", tmp_path / "weights.safetensors"):
        model, config, _ = load_trained("detector", None, path)
        assert config == "detector-teacher" and model.fpn_channels == teacher.fpn_channels
    with pytest.raises(EdgestackError, match="does not fit this model config"):  # named: no guessing
        load_trained("detector-student", None, tmp_path / "weights.safetensors")
    assert main(["export", "detector-student", "--checkpoint", str(tmp_path / "teacher" / "best.pt"), "--out",
                 str(tmp_path / "bundle")]) == 2
    assert "holds detector-teacher weights, not detector-student" in capsys.readouterr().err


def test_the_detector_trains_on_a_12_bit_camera_folder_with_its_bit_depth(tmp_path):
    import cv2

    from edgestack.errors import EdgestackError
    from edgestack.train.synthetic import write_synthetic

    folder = tmp_path / "line"
    write_synthetic(folder, 10, size=64)
    for path in folder.glob("*/Image/*.png"):  # as a 12-bit camera stores them: 16-bit files, values < 4096
        cv2.imwrite(str(path), cv2.imread(str(path)).astype(np.uint16) << 4)
    common = dict(model_name="detector-student", config=None, data=str(folder), epochs=1, batch_size=4, size=64,
                  lr=2e-3, synthetic_count=0, seed=0, teacher=None, distill=None, threads=1, log=lambda m: None)
    with pytest.raises(EdgestackError, match="--bit-depth 12"):  # the hint the detector used to refuse
        detection.train_command(out=tmp_path / "dark", **common)
    summary = detection.train_command(out=tmp_path / "run", bit_depth=12, **common)
    assert summary["data"]["bit_depth"] == 12 and summary["data"]["count"] == 10
