"""Detection on the defect data: boxes from masks, target assignment, losses, training (plain or TBD), COCO mAP
and the harmony table.

Boxes are the connected components of a defect mask (x1, y1, x2, y2 in pixel-edge coordinates, one class).
Annotations are sanitized before use: clipped to the image, non-finite or degenerate (side < MIN_BOX_SIDE
pixels after clipping) boxes dropped and counted, so bad input can never produce a NaN loss.
Assignment is FCOS's (centre sampling, one size range per level, smallest box wins) plus a fallback that gives
a box too small to contain any centre its nearest stride-8 location. Losses are GFL's quality focal loss
(classification target = IoU of the predicted box with its ground truth) and GIoU.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from edgestack.bundle import sha256
from edgestack.errors import EdgestackError
from edgestack.models import resolve
from edgestack.models.detector.model import STRIDES, Detector, decode, flatten, points
from edgestack.runtime.detection import MIN_BOX_SIDE, clip_to_image
from edgestack.train import synthetic, tbd
from edgestack.train.datasets import DefectDataset, load_datasets, to_tensors
from edgestack.train.loop import (
    check_epochs_left,
    check_finite_loss,
    random_state,
    restore_random_state,
    run_folder,
    save_checkpoint_file,
    starting_state,
)

MIN_COMPONENT_PIXELS = 4  # smaller mask components are anti-aliasing specks, not defects one can box
CENTRE_RADIUS = 1.5  # in strides
LEVEL_RANGES = ((0.0, 32.0), (32.0, 64.0), (64.0, math.inf))  # max(l, t, r, b) handled by each level
EASY_SCORE = 0.5
IOU_BINS = (0.0, 0.5, 0.7, 0.9, 1.0)
ALPHA, BETA = 1.0, 1.0  # TBD loss weights


def sanitize_boxes(boxes: np.ndarray, height: int, width: int) -> tuple[np.ndarray, dict[str, int]]:
    """Clip [G, 4] boxes to the image; drop non-finite and degenerate (a side < MIN_BOX_SIDE after clipping,
    e.g. reversed or wholly outside the image) ones. Returns (boxes, counts of each)."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    finite = np.isfinite(boxes).all(1)
    clipped = boxes[finite].copy()
    clipped[:, 0::2] = clipped[:, 0::2].clip(0, width)
    clipped[:, 1::2] = clipped[:, 1::2].clip(0, height)
    moved = (clipped != boxes[finite]).any(1)
    keep = ((clipped[:, 2] - clipped[:, 0]) >= MIN_BOX_SIDE) & ((clipped[:, 3] - clipped[:, 1]) >= MIN_BOX_SIDE)
    counts = {"non_finite": int((~finite).sum()), "degenerate": int((~keep).sum()),
              "clipped": int((moved & keep).sum())}
    return clipped[keep], counts


def boxes_from_mask(mask: np.ndarray) -> np.ndarray:
    """Boxes [G, 4] of the connected components (8-connectivity) of a 0/255 (or 0/1) mask."""
    _, _, stats, _ = cv2.connectedComponentsWithStats((mask > 0).astype(np.uint8), connectivity=8)
    stats = stats[1:][stats[1:, cv2.CC_STAT_AREA] >= MIN_COMPONENT_PIXELS]
    x, y, w, h = (stats[:, i].astype(np.float32) for i in range(4))
    boxes, _ = sanitize_boxes(np.stack([x, y, x + w, y + h], 1), *mask.shape[:2])
    return boxes


def pad_boxes(boxes: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image boxes -> (gt [B, G, 4] zero-padded, valid [B, G])."""
    most = max((len(b) for b in boxes), default=0)
    gt = torch.zeros(len(boxes), most, 4)
    valid = torch.zeros(len(boxes), most, dtype=torch.bool)
    for i, b in enumerate(boxes):
        gt[i, : len(b)], valid[i, : len(b)] = b, True
    return gt, valid


def location_strides(sizes: list[tuple[int, int]]) -> torch.Tensor:
    return torch.cat([torch.full((h * w,), float(s)) for (h, w), s in zip(sizes, STRIDES)])


def assign(centres: torch.Tensor, strides: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Index of the ground truth each location [N] regresses (-1: background). gt [G, 4]."""
    if len(gt) == 0:
        return torch.full((len(centres),), -1, dtype=torch.long)
    x, y = centres[:, 0:1], centres[:, 1:2]
    ltrb = torch.stack([x - gt[:, 0], y - gt[:, 1], gt[:, 2] - x, gt[:, 3] - y], -1)  # [N, G, 4]
    cx, cy = (gt[:, 0] + gt[:, 2]) / 2, (gt[:, 1] + gt[:, 3]) / 2
    radius = CENTRE_RADIUS * strides[:, None]
    near_centre = ((x - cx).abs() < radius) & ((y - cy).abs() < radius) & (ltrb.min(-1).values > 0)
    ranges = torch.tensor(LEVEL_RANGES)[torch.log2(strides / STRIDES[0]).round().long()]
    reach = ltrb.max(-1).values
    candidate = near_centre & (reach >= ranges[:, 0:1]) & (reach <= ranges[:, 1:2])
    # boxes too small to hold a location in their centre region: the nearest finest-level location
    finest = strides == STRIDES[0]
    for g in torch.nonzero(~candidate.any(0))[:, 0]:
        dist = (centres[:, 0] - cx[g]) ** 2 + (centres[:, 1] - cy[g]) ** 2
        candidate[torch.argmin(dist.masked_fill(~finest, math.inf)), g] = True
    area = ((gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1]))[None].expand_as(candidate)
    area = area.masked_fill(~candidate, math.inf)
    best_area, best = area.min(1)
    return torch.where(torch.isfinite(best_area), best, -1)


def giou_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - GIoU for matched box pairs [M, 4]."""
    lt, rb = torch.maximum(pred[:, :2], target[:, :2]), torch.minimum(pred[:, 2:], target[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_p = (pred[:, 2:] - pred[:, :2]).clamp(min=0).prod(-1)
    area_t = (target[:, 2:] - target[:, :2]).clamp(min=0).prod(-1)
    union = (area_p + area_t - inter).clamp(min=tbd.EPS)
    hull = (torch.maximum(pred[:, 2:], target[:, 2:]) - torch.minimum(pred[:, :2], target[:, :2])).prod(-1)
    return 1 - inter / union + (hull - union) / hull.clamp(min=tbd.EPS)


def detection_loss(raw: tuple[list[torch.Tensor], ...], boxes: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Quality focal loss (sum over locations / positives) + 2 * mean GIoU loss over positives."""
    _, logits, distances = raw
    sizes = [tuple(m.shape[-2:]) for m in logits]
    centres, strides = points(sizes), location_strides(sizes)
    logit, pred = flatten(logits), decode(centres, flatten(distances))  # [B, N, C], [B, N, 4]
    target = torch.zeros_like(logit)
    giou, positives = [], 0
    for b, gt in enumerate(boxes):
        matched = assign(centres, strides, gt)
        pos = torch.nonzero(matched >= 0)[:, 0]
        if len(pos) == 0:
            continue
        positives += len(pos)
        pairs = gt[matched[pos]]
        giou.append(giou_loss(pred[b, pos], pairs))
        with torch.no_grad():
            iou = tbd.pairwise_iou(pred[b, pos][None], pairs[None])[0].diagonal()
        target[b, pos, 0] = iou.clamp(min=0.01)  # one class; a positive's quality target is its IoU
    prob = logit.sigmoid()
    qfl = F.binary_cross_entropy_with_logits(logit, target, reduction="none") * (prob - target).abs().pow(2)
    qfl = qfl.sum() / max(positives, 1)
    reg = torch.cat(giou).mean() if giou else logit.new_zeros(())
    return {"loss": qfl + 2.0 * reg, "qfl": qfl, "giou": reg, "positives": torch.tensor(positives)}


def mask_batch_boxes(masks: torch.Tensor) -> list[torch.Tensor]:
    """Boxes of every mask of a [B, 1, H, W] 0/1 batch."""
    return [torch.from_numpy(boxes_from_mask(m[0].numpy())) for m in masks]


def _cosine(step: int, total: int, warmup: int = 50) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train_detector(
    config: dict[str, Any],
    data: DefectDataset,
    epochs: int,
    batch_size: int = 16,
    lr: float = 2e-3,
    seed: int = 0,
    teacher: Detector | None = None,
    log: Callable[[str], None] = print,
    last: Path | None = None,
    state: dict[str, Any] | None = None,
    config_name: str = "",
    args: dict[str, Any] | None = None,
) -> tuple[Detector, list[dict[str, float]]]:
    """Train a detector from scratch on `data` (images + masks); with `teacher`, add TBD. Returns (model, history).

    With `last`, the whole training state (and the run's options, `args`) is saved there after every epoch, so
    an interrupted run loses at most one epoch; `state` (loop.starting_state's, of `last`) continues it."""
    torch.manual_seed(seed)
    model = Detector(**config).train()
    params = list(model.parameters())
    distill = None
    if teacher is not None:
        teacher.eval()
        distill = tbd.TBD(model.fpn_channels, teacher.fpn_channels, len(STRIDES), ALPHA, BETA)
        params += list(distill.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=True, drop_last=True,
                                         generator=torch.Generator().manual_seed(seed))
    total = epochs * len(loader)
    if total == 0:
        raise EdgestackError(f"{len(data)} training images are fewer than one batch of {batch_size}; "
                             "lower --batch-size or add images")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _cosine(s, total))
    history, done = [], 0
    if state is not None:
        history, done = _resume(last, state, distill, model, optimizer, scheduler, loader)
        log(f"resumed {last} after epoch {done}")
    check_epochs_left(epochs, done, last)
    for epoch in range(done, epochs):
        model.train()
        sums: dict[str, float] = {}
        started = time.perf_counter()
        for images, masks in loader:
            boxes = mask_batch_boxes(masks)
            raw = model.raw(images)
            losses = detection_loss(raw, boxes)
            if distill is not None:
                with torch.no_grad():
                    raw_t = teacher.raw(images)
                gt, valid = pad_boxes(boxes)
                extra = distill(tbd.level_outputs(raw_t), tbd.level_outputs(raw), gt, valid)
                losses |= {"hd": extra["hd"], "tfd": extra["tfd"], "loss": losses["loss"] + extra["loss"]}
            check_finite_loss(losses["loss"], epoch + 1, losses)
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            optimizer.step()
            scheduler.step()
            for key, value in losses.items():
                sums[key] = sums.get(key, 0.0) + float(value.detach())
        record = {"epoch": epoch + 1, "seconds": round(time.perf_counter() - started, 1),
                  **{k: v / len(loader) for k, v in sums.items()}}
        history.append(record)
        if last is not None:
            save_checkpoint_file({"state_dict": model.state_dict(), "config": config_name, "epoch": epoch + 1,
                                  "history": history, "optimizer": optimizer.state_dict(),
                                  "scheduler": scheduler.state_dict(), "args": args or {},
                                  "distill": distill.state_dict() if distill is not None else None,
                                  "random": random_state(loader)}, last)
        log(f"epoch {epoch + 1}/{epochs}: " + ", ".join(f"{k} {v:.4g}" for k, v in record.items() if k != "epoch"))
    return model.eval(), history


def _resume(last: Path, state: dict[str, Any], distill, model, optimizer, scheduler,
            loader: torch.utils.data.DataLoader) -> tuple[list[dict], int]:
    """Load a detector run's `state` (of `last`), its random streams too (a last.pt written before they were
    saved goes on without them); returns (history, epochs done)."""
    if (state["distill"] is None) != (distill is None):
        raise EdgestackError(f"{last} was trained {'without' if state['distill'] is None else 'with'} TBD; "
                             "resume it with the same --teacher/--distill")
    model.load_state_dict(state["state_dict"])
    if distill is not None:
        distill.load_state_dict(state["distill"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if "random" in state:
        restore_random_state(state["random"], loader)
    return state["history"], state["epoch"]


def heldout(count: int, size: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """`count` held-out synthetic images (seed HELDOUT_SEED) at `size` and their mask boxes."""
    samples = [synthetic.make_sample(synthetic.HELDOUT_SEED, i, size) for i in range(count)]
    return np.stack([s.image for s in samples]), [boxes_from_mask(s.mask) for s in samples]


def _batches(images: np.ndarray, batch_size: int):
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        yield start, torch.stack([to_tensors(im, np.zeros(im.shape[:2], np.uint8))[0] for im in chunk])


def evaluate(model: Detector, images: np.ndarray, boxes: list[np.ndarray], batch_size: int = 32) -> dict[str, Any]:
    """COCO box mAP (0.5:0.95) and mAP@50 of the model's final (NMS) detections, clipped to the image as
    `edgestack infer` reports them, plus the harmony table; mAP None when there is no box to find."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    model.eval()
    detections, easy_ious = [], []
    with torch.no_grad():
        for start, batch in _batches(images, batch_size):
            det_boxes, det_scores, det_classes, count = model(batch)
            pre_boxes, pre_scores = model.predict(batch)
            for i in range(len(batch)):
                clipped, inside = clip_to_image(det_boxes[i, : count[i]].numpy(), *batch.shape[2:])
                for box, score, cls in zip(clipped[inside], det_scores[i, : count[i]][inside],
                                           det_classes[i, : count[i]][inside]):
                    x1, y1, x2, y2 = box.tolist()
                    detections.append({"image_id": start + i, "category_id": int(cls) + 1, "score": float(score),
                                       "bbox": [x1, y1, x2 - x1, y2 - y1]})
                easy = pre_scores[i].max(-1).values >= EASY_SCORE
                gt = torch.from_numpy(boxes[start + i])
                iou = tbd.pairwise_iou(pre_boxes[i, easy][None], gt[None])[0] if len(gt) else None
                easy_ious.append(iou.max(-1).values if iou is not None else torch.zeros(int(easy.sum())))
    annotations = [
        {"id": n + 1, "image_id": i, "category_id": 1, "iscrowd": 0, "area": float((b[2] - b[0]) * (b[3] - b[1])),
         "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]}
        for n, (i, b) in enumerate((i, b) for i, bs in enumerate(boxes) for b in bs)
    ]
    height, width = images.shape[1:3]
    coco_gt = COCO()
    coco_gt.dataset = {"images": [{"id": i, "height": height, "width": width} for i in range(len(images))],
                       "annotations": annotations, "categories": [{"id": 1, "name": "defect"}]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt.createIndex()
        if not annotations:  # COCOeval's -1 ("no ground truth") would read as a score
            ap = ap50 = None
        elif detections:
            evaluator = COCOeval(coco_gt, coco_gt.loadRes(detections), "bbox")
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
            ap, ap50 = float(evaluator.stats[0]), float(evaluator.stats[1])
        else:
            ap = ap50 = 0.0
    return {"mAP": ap, "mAP50": ap50, "images": len(images), "boxes": len(annotations),
            "detections": len(detections), "harmony": harmony_table(torch.cat(easy_ious))}


def harmony_table(easy_ious: torch.Tensor) -> dict[str, Any]:
    """Share of easy predictions (score >= 0.5) per IoU bin [0,0.5), [0.5,0.7), [0.7,0.9), [0.9,1]."""
    edges = torch.tensor(IOU_BINS[1:-1])
    counts = torch.bincount(torch.bucketize(easy_ious, edges, right=True), minlength=len(IOU_BINS) - 1)
    total = int(counts.sum())
    names = [f"[{lo},{hi})" if hi < 1 else f"[{lo},{hi}]" for lo, hi in zip(IOU_BINS[:-1], IOU_BINS[1:])]
    return {"easy_predictions": total, "share": {n: (int(c) / total if total else 0.0) for n, c in zip(names, counts)}}


def save_checkpoint(path: Path, model: Detector, config_name: str, extra: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint_file({"state_dict": model.state_dict(), "config": config_name, **extra}, path)


def check_size(size: int) -> None:
    """Training and evaluation sizes: square, a multiple of the coarsest stride, at least two of it."""
    if size % STRIDES[-1] or size < 2 * STRIDES[-1]:
        raise EdgestackError(f"--size {size} must be a multiple of {STRIDES[-1]} and at least {2 * STRIDES[-1]}")


def train_command(
    model_name: str, config: str | None, data: str, out: str | Path, epochs: int, batch_size: int, size: int,
    lr: float, synthetic_count: int, seed: int, teacher: str | None, distill: str | None, threads: int,
    resume: bool = False, log: Callable[[str], None] = print, bit_depth: int | None = None,
    native_scale: bool = False,
) -> dict[str, Any]:
    """`edgestack train detector-...`: train (OUT/last.pt after every epoch), evaluate mAP on the validation split,
    write OUT/best.pt (the final weights) + summary.json. `bit_depth`: of a folder's 16-bit camera images."""
    from edgestack.train.evaluate import load_trained

    spec, config_name = resolve(model_name, config)
    check_size(size)
    if (teacher is None) != (distill is None):
        raise EdgestackError("distillation needs both --teacher CKPT and --distill tbd")
    if distill not in (None, "tbd"):
        raise EdgestackError(f"unknown --distill {distill!r}; the one method is `tbd`")
    out, last = run_folder(out, resume)
    torch.set_num_threads(threads)
    teacher_model, teacher_config, _ = load_trained(spec.name, None, teacher) if teacher else (None, None, None)
    # What the run is: a resume with other options (data, lr, another teacher) is refused before the data loads.
    args = {"data": data, "size": size, "batch_size": batch_size, "lr": lr, "epochs": epochs,
            "synthetic_count": synthetic_count, "seed": seed, "bit_depth": bit_depth, "distill": distill,
            "teacher": teacher_config, "teacher_sha256": sha256(Path(teacher)) if teacher else None,
            "native_scale": native_scale}
    state = starting_state(last, config_name, args, resume)
    train_set, val_set, info = load_datasets(data, size, 0.1, seed, synthetic_count, bit_depth=bit_depth,
                                             native_scale=native_scale)
    model, history = train_detector(spec.configs[config_name], train_set, epochs, batch_size, lr, seed,
                                    teacher_model, log, last, state, config_name, args)
    # Before the evaluation: a run stopped during it has nothing left to train, and keeps its weights here.
    save_checkpoint(out / "best.pt", model, config_name, {"epochs": epochs})
    images = np.stack(val_set.images)  # native scale: each frame's validation window
    val = evaluate(model, images, [boxes_from_mask(m) for m in val_set.masks])
    summary = {"config": config_name, "distill": distill, "teacher": teacher, "data": info, "epochs": epochs,
               "train_seconds": sum(h["seconds"] for h in history), "history": history, "val": val}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def eval_command(
    model_name: str, config: str | None, checkpoint: str | None, out: str | Path, size: int, count: int,
    threads: int,
) -> tuple[dict[str, Any], Path]:
    """`edgestack eval detector-... --data synthetic`: COCO mAP + harmony table on the held-out seed."""
    from edgestack.train.evaluate import load_trained

    check_size(size)
    torch.set_num_threads(threads)
    model, config_name, source = load_trained(model_name, config, checkpoint)
    images, boxes = heldout(count, size)
    results = {"config": config_name, "checkpoint": source, "size": size, **evaluate(model, images, boxes)}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return results, out / "results.json"
