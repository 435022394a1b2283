"""Task-Balanced Distillation terms on small tensors whose values are worked out by hand here."""

import math

import pytest
import torch

from edgestack.train import tbd


def test_cls_probability_is_spatial_softmax_of_max_logit():
    # two classes at two locations: maxes are 3 (loc 0) and 2 (loc 1)
    logits = torch.tensor([[[[1.0, 2.0]], [[3.0, 0.0]]]])  # [1, 2, 1, 2]
    expected = [math.exp(3) / (math.exp(3) + math.exp(2)), math.exp(2) / (math.exp(3) + math.exp(2))]
    assert tbd.cls_probability(logits)[0].tolist() == pytest.approx(expected)


def test_reg_probability_is_max_iou_over_valid_ground_truths():
    boxes = torch.tensor([[[0.0, 0, 2, 2], [10, 10, 12, 12]]])
    gt = torch.tensor([[[1.0, 1, 3, 3], [0, 0, 2, 2]]])
    # the second ground truth would give box 0 an IoU of 1 but it is padding: IoU with the first is 1/(4+4-1)
    p_r = tbd.reg_probability(boxes, gt, torch.tensor([[True, False]]))
    assert p_r[0].tolist() == pytest.approx([1 / 7, 0.0])
    assert tbd.reg_probability(boxes, torch.zeros(1, 0, 4), torch.zeros(1, 0, dtype=torch.bool)).tolist() == [[0, 0]]


def test_harmony_score():
    assert float(tbd.harmony_score(torch.tensor(0.2), torch.tensor(0.7))) == pytest.approx(1 - math.tanh(0.5))
    assert float(tbd.harmony_score(torch.tensor(0.4), torch.tensor(0.4))) == 1.0


def test_hd_loss_weights_by_psi_and_normalises():
    pc_t, pr_t = torch.tensor([[0.6, 0.4, 0.5]]), torch.tensor([[0.8, 0.5, 0.0]])
    pc_s, pr_s = torch.tensor([[0.5, 0.5, 0.1]]), torch.tensor([[0.4, 0.2, 0.9]])
    hs_t = [1 - math.tanh(0.2), 1 - math.tanh(0.1)]
    hs_s = [1 - math.tanh(0.1), 1 - math.tanh(0.3)]
    psi = [0.8 * math.sqrt(1 + 0.1), 0.5 * math.sqrt(1 + 0.1)]  # location 2: teacher p_r = 0 -> psi = 0
    expected = (psi[0] * abs(hs_t[0] - hs_s[0]) + psi[1] * abs(hs_t[1] - hs_s[1])) / (psi[0] + psi[1])
    assert float(tbd.hd_loss(pc_t, pr_t, pc_s, pr_s)) == pytest.approx(expected, rel=1e-5)


def test_hd_loss_without_ground_truth_is_zero_not_nan():
    loss = tbd.hd_loss(torch.tensor([[0.5, 0.5]]), torch.zeros(1, 2), torch.tensor([[0.9, 0.1]]), torch.zeros(1, 2))
    assert float(loss) == 0.0


def test_tfd_loss_uses_both_task_masks_and_weights():
    feat_t = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])  # C=2, locations (1,3) and (2,4)
    feat_s = torch.zeros_like(feat_t)
    d = [(1 + 9) / 2, (4 + 16) / 2]  # mean over channels of the squared difference
    pc_t, pr_t = torch.tensor([[0.75, 0.25]]), torch.tensor([[0.0, 0.5]])
    weights = torch.tensor([[0.3, 0.7]])
    cls_term = (0.75 * d[0] + 0.25 * d[1]) / 1.0
    reg_term = (0.0 * d[0] + 0.5 * d[1]) / 0.5
    assert float(tbd.tfd_loss(feat_t, feat_s, pc_t, pr_t, weights)) == pytest.approx(0.3 * cls_term + 0.7 * reg_term)


def test_twg_pools_fc_fc_softmax():
    twg = tbd.TaskWeightGenerator(hidden=2)
    with torch.no_grad():
        twg.fc1.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0]]))
        twg.fc2.weight.copy_(torch.eye(2))
        twg.fc1.bias.zero_()
        twg.fc2.bias.zero_()
    masks = torch.tensor([[[0.75, 0.25], [0.0, 0.5], [0.3, 0.7], [0.1, 0.1]]])  # pooled: 0.5, 0.25, ...
    t0 = math.exp(0.5) / (math.exp(0.5) + math.exp(0.25))
    assert twg(masks)[0].tolist() == pytest.approx([t0, 1 - t0])


def _level(channels: int, requires_grad: bool) -> tbd.LevelOutputs:
    feature = torch.randn(2, channels, 4, 4, requires_grad=requires_grad)
    logits = torch.randn(2, 1, 4, 4, requires_grad=requires_grad)
    centres = torch.rand(2, 16, 2) * 32
    boxes = torch.cat([centres - 4, centres + 4], -1)
    if requires_grad:
        boxes.requires_grad_(True)
    return tbd.LevelOutputs(feature, logits, boxes)


def test_tbd_total_is_alpha_hd_plus_beta_tfd_and_trains_only_the_student_side():
    distill = tbd.TBD(student_channels=3, teacher_channels=5, levels=2, alpha=2.0, beta=0.5)
    teacher = [_level(5, False) for _ in range(2)]
    student = [_level(3, True) for _ in range(2)]
    gt = torch.tensor([[[0.0, 0, 16, 16]], [[0, 0, 0, 0]]])
    valid = torch.tensor([[True], [False]])  # the second image has no boxes
    out = distill(teacher, student, gt, valid)
    assert all(torch.isfinite(v) for v in out.values())
    hd, tfd = float(out["hd"].detach()), float(out["tfd"].detach())
    assert float(out["loss"].detach()) == pytest.approx(2.0 * hd + 0.5 * tfd)
    out["loss"].backward()
    assert all(s.feature.grad is not None and s.logits.grad is not None and s.boxes.grad is not None for s in student)
    assert distill.adapt[0].weight.grad is not None and distill.twg.fc1.weight.grad is not None
    # no boxes anywhere: HD and the regression half of TFD vanish, nothing is NaN
    empty = distill(teacher, student, torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.bool))
    assert float(empty["hd"].detach()) == 0.0 and torch.isfinite(empty["tfd"].detach())
