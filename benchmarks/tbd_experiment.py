"""Task-Balanced Distillation on the synthetic defect set: teacher once, then per seed a plain student and a
TBD student with the same schedule; COCO mAP on the held-out seed, the harmony table and CPU latency.

    python benchmarks/tbd_experiment.py --out results/tbd          # the reported run (1 CPU thread)

Writes results.json and results.md (tables) under --out, the teacher's and every student's weights under
--checkpoints (runs/, not committed).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.utils.flop_counter

from edgestack.models import resolve
from edgestack.models.detector.model import Detector
from edgestack.train import detection, synthetic
from edgestack.train.datasets import DefectDataset


def latency_ms(model: Detector, size: int, runs: int) -> dict[str, float]:
    """Median and p90 of batch-1 eager forward (backbone to NMS) in ms, after two warm-up runs."""
    x = torch.randn(1, 3, size, size)
    times = []
    with torch.inference_mode():
        for i in range(runs + 2):
            started = time.perf_counter()
            model(x)
            if i >= 2:
                times.append((time.perf_counter() - started) * 1e3)
    return {"median_ms": statistics.median(times), "p90_ms": float(np.percentile(times, 90)), "runs": runs}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean, sample std and min..max spread of mAP and mAP50 over seeds; mean harmony shares."""
    out: dict[str, Any] = {"seeds": [r["seed"] for r in runs]}
    for key in ("mAP", "mAP50"):
        values = [r["eval"][key] for r in runs]
        out[key] = {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                    "min": min(values), "max": max(values), "values": values}
    bins = runs[0]["eval"]["harmony"]["share"]
    out["harmony"] = {b: statistics.fmean(r["eval"]["harmony"]["share"][b] for r in runs) for b in bins}
    out["easy_predictions"] = statistics.fmean(r["eval"]["harmony"]["easy_predictions"] for r in runs)
    return out


def markdown(results: dict[str, Any]) -> str:
    groups = results["groups"]
    setup = results["setup"]
    lines = [
        "# Task-Balanced Distillation: detector-student distilled from detector-teacher",
        "",
        f"Synthetic defects at {setup['size']}x{setup['size']}: {setup['train_count']} training images (seed "
        f"{synthetic.TRAIN_SEED}), {setup['heldout_count']} held-out images (seed {synthetic.HELDOUT_SEED}, "
        f"{results['heldout_boxes']} boxes from mask components), one class. Teacher {setup['teacher_epochs']} "
        f"epochs; each student {setup['student_epochs']} epochs (same schedule with and without TBD), seeds "
        f"{setup['seeds']}. {setup['threads']} CPU thread(s) on a shared machine. Whole run: "
        f"{results['wall_seconds'] / 60:.1f} min.",
        "",
        "| model | mAP (mean ± std) | mAP range | mAP@50 (mean ± std) | mAP@50 range |",
        "|---|---|---|---|---|",
    ]
    def cells(figure: dict[str, Any]) -> str:
        if len(figure["values"]) == 1:  # the teacher is trained once: no spread to show
            return f"{figure['mean']:.4f} (1 run) | -"
        return f"{figure['mean']:.4f} ± {figure['std']:.4f} | {figure['min']:.4f}..{figure['max']:.4f}"

    for name, g in groups.items():
        lines.append(f"| {name} | {cells(g['mAP'])} | {cells(g['mAP50'])} |")
    bins = list(groups["teacher"]["harmony"])
    lines += ["", "Harmony table: share of easy predictions (max class score >= 0.5, before NMS) by IoU with the "
              "best-matching ground truth (mean over seeds).", "",
              "| model | easy predictions | " + " | ".join(f"IoU {b}" for b in bins) + " |",
              "|---|---|" + "---|" * len(bins)]
    for name, g in groups.items():
        lines.append(f"| {name} | {g['easy_predictions']:.0f} | "
                     + " | ".join(f"{g['harmony'][b]:.1%}" for b in bins) + " |")
    lines += ["", "CPU latency, PyTorch eager, batch 1, 1 thread, backbone to NMS:", "",
              "| config | GFLOPs | params (M) | median ms | p90 ms |", "|---|---|---|---|---|"]
    for name, lat in results["latency"].items():
        size = results["sizes"][name]
        lines.append(f"| {name} | {size['gflops']:.3f} | {size['params_m']:.2f} | {lat['median_ms']:.2f} | "
                     f"{lat['p90_ms']:.2f} |")
    lines += ["", "Wall time per phase (s): " + ", ".join(f"{k} {v:.0f}" for k, v in results["phase_seconds"].items()),
              "", "![mAP and harmony](results.png)"]
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    """mAP / mAP@50 per group (every seed as a dot) and the harmony shares."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = results["groups"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for offset, key in ((-0.15, "mAP"), (0.15, "mAP50")):
        for i, g in enumerate(groups.values()):
            left.bar(i + offset, g[key]["mean"], 0.3, color="C0" if key == "mAP" else "C1",
                     label=key if i == 0 else None)
            left.scatter([i + offset] * len(g[key]["values"]), g[key]["values"], color="k", s=10, zorder=3)
    left.set(xticks=range(len(groups)), xticklabels=list(groups), title="held-out COCO mAP (dots: seeds)")
    left.legend()
    bins = list(groups["teacher"]["harmony"])
    for i, (name, g) in enumerate(groups.items()):
        right.bar([b + (i - 1) * 0.27 for b in range(len(bins))], [g["harmony"][b] for b in bins], 0.27, label=name)
    right.set(xticks=range(len(bins)), xticklabels=[f"IoU {b}" for b in bins], ylabel="share of easy predictions",
              title="harmony: easy predictions (score >= 0.5) by IoU")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="results/tbd")
    parser.add_argument("--checkpoints", default="runs/tbd")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--train-count", type=int, default=2000)
    parser.add_argument("--heldout-count", type=int, default=300)
    parser.add_argument("--teacher-epochs", type=int, default=10)
    parser.add_argument("--student-epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--latency-runs", type=int, default=30)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    seeds = [int(s) for s in args.seeds.split(",")]
    spec, _ = resolve("detector")
    started = time.perf_counter()
    phases: dict[str, float] = {}

    def phase(name: str, since: float) -> float:
        now = time.perf_counter()
        phases[name] = phases.get(name, 0.0) + now - since
        return now

    t = time.perf_counter()
    samples = [synthetic.make_sample(synthetic.TRAIN_SEED, i, args.size) for i in range(args.train_count)]
    train_images, train_masks = [s.image for s in samples], [s.mask for s in samples]
    heldout_images, heldout_boxes = detection.heldout(args.heldout_count, args.size)
    t = phase("data", t)
    print(f"data: {len(samples)} train, {len(heldout_images)} held-out images ({phases['data']:.0f} s)", flush=True)

    def run(config: str, epochs: int, seed: int, teacher: Detector | None, name: str) -> tuple:
        data = DefectDataset(train_images, train_masks, train=True, seed=seed)  # same augmentation stream per seed
        model, history = detection.train_detector(spec.configs[config], data, epochs, args.batch_size, args.lr, seed,
                                                  teacher, log=lambda m: print(f"  {name}: {m}", flush=True))
        checkpoint = Path(args.checkpoints) / f"{name}.pt"
        detection.save_checkpoint(checkpoint, model, config, {"epochs": epochs, "seed": seed})
        return model, history

    teacher, teacher_history = run("detector-teacher", args.teacher_epochs, 0, None, "teacher")
    t = phase("teacher_train", t)
    records: dict[str, list[dict[str, Any]]] = {"teacher": [], "student": [], "student+TBD": []}
    records["teacher"].append({"seed": 0, "history": teacher_history,
                               "eval": detection.evaluate(teacher, heldout_images, heldout_boxes)})
    t = phase("eval", t)
    print(f"teacher: {records['teacher'][0]['eval']}", flush=True)
    for seed in seeds:
        for group, with_teacher in (("student", None), ("student+TBD", teacher)):
            name = f"{'student' if with_teacher is None else 'student_tbd'}_seed{seed}"
            model, history = run("detector-student", args.student_epochs, seed, with_teacher, name)
            t = phase(f"{group}_train", t)
            result = detection.evaluate(model, heldout_images, heldout_boxes)
            t = phase("eval", t)
            print(f"{name}: mAP {result['mAP']:.4f} mAP50 {result['mAP50']:.4f} harmony {result['harmony']}",
                  flush=True)
            records[group].append({"seed": seed, "history": history, "eval": result})

    latency, sizes = {}, {}
    for name, timed in (("detector-teacher", teacher), ("detector-student", model)):
        latency[name] = latency_ms(timed.eval(), args.size, args.latency_runs)
        with torch.utils.flop_counter.FlopCounterMode(display=False) as counter, torch.no_grad():
            timed.raw(torch.randn(1, 3, args.size, args.size))
        sizes[name] = {"gflops": counter.get_total_flops() / 1e9,
                       "params_m": sum(p.numel() for p in timed.parameters()) / 1e6}
    phase("latency", t)
    results = {
        "setup": {"size": args.size, "train_count": args.train_count, "heldout_count": args.heldout_count,
                  "teacher_epochs": args.teacher_epochs, "student_epochs": args.student_epochs,
                  "batch_size": args.batch_size, "lr": args.lr, "seeds": seeds, "threads": args.threads,
                  "tbd_alpha": detection.ALPHA, "tbd_beta": detection.BETA, "torch": torch.__version__,
                  "machine": platform.machine(), "processor": platform.processor()},
        "heldout_boxes": sum(len(b) for b in heldout_boxes),
        "groups": {name: summarize(runs) for name, runs in records.items()},
        "runs": records,
        "latency": latency,
        "sizes": sizes,
        "phase_seconds": phases,
        "wall_seconds": time.perf_counter() - started,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(markdown(results))
    plot(results, out / "results.png")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
