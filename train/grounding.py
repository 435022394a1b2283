"""`edgestack train|eval vglaw`: the synthetic referring set, VG-LAW's losses, the loop, Prec@0.5 and mIoU.

Losses as in the paper: L1 + GIoU on the box (weights 1, 1), focal + dice on the mask (4, 4). Augmentation is
the paper's horizontal flip, with "left" and "right" swapped in the expression so it still names the target.
Metrics: Prec@0.5 = share of expressions whose predicted box has IoU >= 0.5 with the target's; mIoU = mean
over expressions of the mask IoU at the paper's 0.35 threshold.
"""

from __future__ import annotations

import json
import re
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from edgestack.errors import EdgestackError
from edgestack.models import resolve
from edgestack.models.vglaw import MASK_THRESHOLD
from edgestack.models.vglaw.model import box_to_corners
from edgestack.models.vglaw.tokenizer import encode, load_tokenizer
from edgestack.train import referring
from edgestack.train.datasets import MEAN, STD, generate
from edgestack.train.loop import (
    check_full_batch,
    cosine_schedule,
    device_name,
    progress_bar,
    resume_run,
    run_epochs,
    run_folder,
    shuffled_loader,
    starting_state,
    training_device,
)


def mirror_text(text: str) -> str:
    """The expression for the horizontally flipped image: left <-> right."""
    return re.sub(r"\b(left|right)\b", lambda m: "right" if m.group(1) == "left" else "left", text)


class GroundingDataset(torch.utils.data.Dataset):
    """Samples 0..count-1 of a split, in memory; `train` adds random horizontal flips, drawn from torch's RNG so
    DataLoader workers (seeded per worker and epoch) flip differently. `workers` > 1 generates the samples in
    that many processes (the same samples: each depends only on its split and index)."""

    def __init__(self, split: str, count: int, tokenizer, train: bool = False, progress=None, workers: int = 1):
        if split not in referring.SPLIT_SEEDS:
            raise EdgestackError(f"unknown split {split!r}; choose one of {', '.join(referring.SPLIT_SEEDS)}")
        self.samples = generate(partial(referring.make_referring, referring.SPLIT_SEEDS[split]), count, workers,
                                progress)
        self.prompts = [encode(tokenizer, s.expression) for s in self.samples]
        self.mirrored = [encode(tokenizer, mirror_text(s.expression)) for s in self.samples] if train else None
        self.train = train

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        sample = self.samples[index]
        image, mask, box, prompt = sample.image, sample.mask, sample.box.copy(), self.prompts[index]
        if self.train and torch.rand(()) < 0.5:
            width = image.shape[1]
            image, mask = image[:, ::-1], mask[:, ::-1]
            box[[0, 2]] = width - box[[2, 0]]
            prompt = self.mirrored[index]
        return (to_input(image), torch.from_numpy(prompt.ids), torch.from_numpy(prompt.attention_mask),
                torch.from_numpy(box / image.shape[0]), torch.from_numpy(mask.astype(np.float32))[None])


def to_input(image: np.ndarray) -> torch.Tensor:
    x = (image.astype(np.float32) / 255.0 - MEAN) / STD
    return torch.from_numpy(x.transpose(2, 0, 1).copy())


def box_iou(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(IoU, GIoU) of matching rows of two [N, 4] x1,y1,x2,y2 tensors."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    inter = ((torch.minimum(a[:, 2], b[:, 2]) - torch.maximum(a[:, 0], b[:, 0])).clamp(min=0)
             * (torch.minimum(a[:, 3], b[:, 3]) - torch.maximum(a[:, 1], b[:, 1])).clamp(min=0))
    union = area_a + area_b - inter
    iou = inter / union.clamp(min=1e-9)
    hull = ((torch.maximum(a[:, 2], b[:, 2]) - torch.minimum(a[:, 0], b[:, 0]))
            * (torch.maximum(a[:, 3], b[:, 3]) - torch.minimum(a[:, 1], b[:, 1])))
    return iou, iou - (hull - union) / hull.clamp(min=1e-9)


def grounding_loss(box: torch.Tensor, logits: torch.Tensor, target_box: torch.Tensor,
                   target_mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """VG-LAW's loss. `box` is (cx, cy, w, h) in 0..1, `target_box` x1,y1,x2,y2 in 0..1."""
    target_center = torch.stack([(target_box[:, 0] + target_box[:, 2]) / 2, (target_box[:, 1] + target_box[:, 3]) / 2,
                                 target_box[:, 2] - target_box[:, 0], target_box[:, 3] - target_box[:, 1]], -1)
    l1 = F.l1_loss(box, target_center)
    giou = (1 - box_iou(box_to_corners(box), target_box)[1]).mean()
    prob = logits.sigmoid()
    focal = sigmoid_focal_loss(logits, target_mask, prob)
    inter = (prob * target_mask).flatten(1).sum(1)
    dice = (1 - (2 * inter + 1) / (prob.flatten(1).sum(1) + target_mask.flatten(1).sum(1) + 1)).mean()
    total = l1 + giou + 4 * focal + 4 * dice
    return total, {"l1": l1.item(), "giou": giou.item(), "focal": focal.item(), "dice": dice.item()}


def sigmoid_focal_loss(logits: torch.Tensor, target: torch.Tensor, prob: torch.Tensor,
                           alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Sigmoid focal loss (Lin et al.), mean over pixels."""
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = prob * target + (1 - prob) * (1 - target)
    weight = alpha * target + (1 - alpha) * (1 - target)
    return (weight * ce * (1 - p_t) ** gamma).mean()


def predict(model, loader, device: str = "cpu") -> dict[str, np.ndarray]:
    """Boxes (pixels, x1y1x2y2), mask IoU at MASK_THRESHOLD and box IoU for every sample of `loader`."""
    model.eval()
    box_ious, mask_ious, boxes, probs = [], [], [], []
    with torch.no_grad():
        for batch in loader:
            images, ids, masks, target_box, target_mask = (t.to(device) for t in batch)
            box, logits = model(images, ids, masks)
            corners = box_to_corners(box)
            box_ious.append(box_iou(corners, target_box)[0])
            predicted = logits.sigmoid() >= MASK_THRESHOLD
            truth = target_mask > 0.5
            inter = (predicted & truth).flatten(1).sum(1).float()
            union = (predicted | truth).flatten(1).sum(1).float()
            mask_ious.append(inter / union.clamp(min=1))
            boxes.append(corners * images.shape[-1])
            probs.append(logits.sigmoid()[:, 0])
    return {"box_iou": torch.cat(box_ious).cpu().numpy(), "mask_iou": torch.cat(mask_ious).cpu().numpy(),
            "boxes": torch.cat(boxes).cpu().numpy(), "probs": torch.cat(probs).cpu().numpy()}


def summarize(predictions: dict[str, np.ndarray]) -> dict[str, float]:
    return {"prec@0.5": float((predictions["box_iou"] >= 0.5).mean()), "mIoU": float(predictions["mask_iou"].mean()),
            "mean_box_iou": float(predictions["box_iou"].mean()), "count": int(len(predictions["box_iou"]))}


def train(config: str | None = None, out: str | Path = "runs/vglaw", epochs: int = 10, batch_size: int = 32,
          lr: float = 4e-4, weight_decay: float = 1e-4, train_count: int = 6000, val_count: int = 300,
          seed: int = 0, resume: bool = False, threads: int = 2, device: str | None = None, workers: int = 1,
          log=lambda message: print(message, flush=True)) -> dict[str, Any]:
    """Train vglaw (or vglaw-s-static) on the synthetic referring set; OUT/last.pt, best.pt, curves.png.

    `device` defaults to CUDA when available; `workers` processes generate the synthetic samples."""
    spec, config_name = resolve("vglaw", config)
    device = training_device(device)
    out, last = run_folder(out, resume)
    args = {"data": "synthetic-referring", "batch_size": batch_size, "lr": lr, "epochs": epochs,
            "weight_decay": weight_decay, "train_count": train_count, "seed": seed, "device": device_name(device)}
    state = starting_state(last, config_name, args, resume)
    check_full_batch(train_count, batch_size, "synthetic")
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    tokenizer = load_tokenizer()
    model = spec.build(spec.configs[config_name]).train()
    started = time.perf_counter()
    with progress_bar() as bar:
        task = bar.add_task("generating referring samples", total=train_count + val_count, status="")
        train_set = GroundingDataset("train", train_count, tokenizer, train=True, workers=workers,
                                     progress=lambda i, n: bar.update(task, completed=i))
        val_set = GroundingDataset("val", val_count, tokenizer, workers=workers,
                                   progress=lambda i, n: bar.update(task, completed=train_count + i))
    log(f"data: {train_count} train / {val_count} val referring samples ({time.perf_counter() - started:.0f} s)")
    model.to(device)  # after the generation pool has forked: its processes never see a CUDA context
    generator = torch.Generator().manual_seed(seed)
    train_loader = shuffled_loader(train_set, batch_size, generator, workers, device)  # flips use torch's RNG
    val_loader = torch.utils.data.DataLoader(val_set, 64)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = cosine_schedule(optimizer, epochs * len(train_loader), len(train_loader), 0.05)
    history, first_epoch, best = (resume_run(last, state, model, optimizer, schedule, train_loader, log) if state
                                  else ([], 1, -1.0))

    def batch_loss(batch) -> torch.Tensor:
        images, ids, masks, target_box, target_mask = (t.to(device, non_blocking=True) for t in batch)
        box, logits = model(images, ids, masks)
        return grounding_loss(box, logits, target_box, target_mask)[0]

    def score(val: dict[str, float]) -> float:
        return val["prec@0.5"]

    history = run_epochs(
        model, optimizer, schedule, train_loader, batch_loss, lambda: summarize(predict(model, val_loader, device)),
        score, epochs=epochs, first_epoch=first_epoch, history=history, best=best, out=out,
        last=last, config_name=config_name, log=log, curve_keys=("prec@0.5", "mIoU"),
        loss_name="L1 + GIoU + 4 focal + 4 dice", clip_grad=1.0,
        describe=lambda val: f"val Prec@0.5 {val['prec@0.5']:.3f}  mIoU {val['mIoU']:.3f}", args=args,
    )
    train_seconds = sum(h["seconds"] for h in history)
    summary = {"config": config_name, "epochs": epochs, "train_seconds": round(train_seconds, 1), "threads": threads,
               "device": device_name(device),
               "best_val": max(history, key=lambda h: score(h["val"]))["val"], "final_val": history[-1]["val"]}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def examples_grid(samples, predictions: dict[str, np.ndarray], path: Path, count: int = 12, cell: int = 256) -> None:
    """Image with target box (green) and predicted box (red), the expression, and the predicted mask."""
    import cv2

    from edgestack.runtime.images import write_image

    tiles = []
    for i in range(min(count, len(samples))):
        sample = samples[i]
        scale = cell / sample.image.shape[0]
        shown = cv2.resize(sample.image, (cell, cell), interpolation=cv2.INTER_NEAREST).copy()
        for box, color in ((sample.box, (0, 255, 0)), (predictions["boxes"][i], (255, 0, 0))):
            x1, y1, x2, y2 = (np.asarray(box) * scale).round().astype(int)
            cv2.rectangle(shown, (x1, y1), (x2, y2), color, 1)
        verdict = "ok" if predictions["box_iou"][i] >= 0.5 else "MISS"
        cv2.putText(shown, f"{sample.expression[:38]}", (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (255, 255, 0), 1,
                    cv2.LINE_AA)
        cv2.putText(shown, f"{verdict} IoU {predictions['box_iou'][i]:.2f}", (3, cell - 6), cv2.FONT_HERSHEY_SIMPLEX,
                    0.38, (255, 255, 0), 1, cv2.LINE_AA)
        mask = cv2.resize((predictions["probs"][i] >= MASK_THRESHOLD).astype(np.uint8) * 255, (cell, cell),
                          interpolation=cv2.INTER_NEAREST)
        tiles.append(np.hstack([shown, np.repeat(mask[:, :, None], 3, axis=2)]))
    if len(tiles) % 2:  # an odd count: the last example beside a blank tile, not dropped (one alone gave no row)
        tiles.append(np.zeros_like(tiles[-1]))
    rows = [np.hstack(tiles[i:i + 2]) for i in range(0, len(tiles), 2)]
    write_image(path, np.vstack(rows))


def evaluate(checkpoint: str | Path | None = None, config: str | None = None, split: str = "test", count: int = 500,
             out: str | Path | None = None, threads: int = 2) -> tuple[dict[str, Any], dict[str, Path]]:
    """Prec@0.5 and mIoU on a referring split: results.json, results.md, examples.png."""
    from edgestack.train.evaluate import load_trained

    torch.set_num_threads(threads)
    model, config_name, source = load_trained("vglaw", config, checkpoint)
    data = GroundingDataset(split, count, load_tokenizer())
    predictions = predict(model, torch.utils.data.DataLoader(data, 64))
    results = summarize(predictions)
    by_kind: dict[str, list[float]] = {}
    for sample, iou in zip(data.samples, predictions["box_iou"]):
        by_kind.setdefault(sample.defects[sample.target].kind, []).append(float(iou >= 0.5))
    results["prec@0.5_by_kind"] = {k: float(np.mean(v)) for k, v in sorted(by_kind.items())}
    out = Path(out) if out else Path("runs") / f"eval-{config_name}"
    out.mkdir(parents=True, exist_ok=True)
    title = f"{config_name} on the synthetic referring {split} split ({count} expressions; {source})"
    paths = {"json": out / "results.json", "markdown": out / "results.md", "examples": out / "examples.png"}
    paths["json"].write_text(json.dumps({"title": title, "config": config_name, "checkpoint": source, "split": split,
                                         "results": results}, indent=2))
    lines = [f"# {title}", "", "| metric | value |", "|---|---|",
             f"| Prec@0.5 | {results['prec@0.5']:.4f} |",
             f"| mIoU (mask >= {MASK_THRESHOLD}) | {results['mIoU']:.4f} |",
             f"| mean box IoU | {results['mean_box_iou']:.4f} |", "", "| target kind | Prec@0.5 |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in results["prec@0.5_by_kind"].items()]
    paths["markdown"].write_text("\n".join(lines) + "\n")
    examples_grid(data.samples, predictions, paths["examples"])
    return results, paths
