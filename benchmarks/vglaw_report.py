"""VG-LAW figures: held-out Prec@0.5/mIoU with language-adaptive vs static weights, and prompt-cache latency.

    python benchmarks/vglaw_report.py --adaptive runs/vglaw-s/best.pt --static runs/vglaw-s-static/best.pt \\
        --bundle artifacts/vglaw --out results/vglaw

Both checkpoints are evaluated on the same synthetic referring test split. Latency (batch 1, this machine):
the vision graph alone (prompt cached) vs text + vision graphs (prompt not cached), per backend.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from edgestack.models.vglaw.tokenizer import encode
from edgestack.runtime.bench import environment, time_calls
from edgestack.runtime.grounding import Grounder
from edgestack.train import referring
from edgestack.train.grounding import evaluate


def latency(bundle: str, backend: str, runs: int, warmup: int) -> dict:
    grounder = Grounder(bundle, backend=backend)
    sample = referring.make_referring(referring.SPLIT_SEEDS["test"], 0)
    _, x = grounder.preprocess(sample.image)
    prompt = encode(grounder.tokenizer, sample.expression)

    def text():
        return grounder.text_engine(prompt.ids[None], prompt.attention_mask[None])

    def vision(encoded):
        return grounder.vision_engine(x, encoded["phi"], encoded["text_feature"])

    cached = text()
    figures = {
        "text_only": time_calls(text, warmup, runs),
        "vision_only": time_calls(lambda: vision(cached), warmup, runs),
        "text_plus_vision": time_calls(lambda: vision(text()), warmup, runs),
    }
    return {"backend": backend, "device": grounder.vision_engine.backend.device, **figures}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adaptive", required=True, help="vglaw-s checkpoint")
    parser.add_argument("--static", required=True, help="vglaw-s-static checkpoint trained with the same budget")
    parser.add_argument("--bundle", required=True, help="vglaw bundle for the latency figures")
    parser.add_argument("--count", type=int, default=1000, help="test-split expressions")
    parser.add_argument("--backends", default="onnxruntime,torch")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="results/vglaw")
    args = parser.parse_args(argv)
    out = Path(args.out)
    torch.set_num_threads(args.threads)
    # Latency first: measured after the evaluation in the same process, onnxruntime's figures on a 2-core
    # machine came out about 1.5x slower (cause not pinned down; a fresh process matches a standalone timing).
    timings = [latency(args.bundle, backend, args.runs, args.warmup) for backend in args.backends.split(",")]
    accuracy = {}
    for name, checkpoint in (("adaptive", args.adaptive), ("static", args.static)):
        results, _ = evaluate(checkpoint, None, "test", args.count, out / f"eval-{name}", args.threads)
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        accuracy[name] = results | {"checkpoint": checkpoint, "epochs": state["epoch"],
                                    "train_seconds": sum(h["seconds"] for h in state["history"]),
                                    "training": state["args"]}
    report = {"accuracy": accuracy, "latency": timings, "environment": environment()}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=2))
    lines = [f"# VG-LAW on the synthetic referring test split ({args.count} expressions)", "",
             "| weights | Prec@0.5 | mIoU (mask >= 0.35) | mean box IoU | best epoch of | training s | trained on |",
             "|---|---|---|---|---|---|---|"]
    for name, r in accuracy.items():
        t = r["training"]
        lines.append(f"| {name} | {r['prec@0.5']:.4f} | {r['mIoU']:.4f} | {r['mean_box_iou']:.4f} | {r['epochs']} of "
                     f"{t['epochs']} | {r['train_seconds']:.0f} | {t.get('device', 'cpu')}, {t['train_count']} "
                     f"samples, batch {t['batch_size']}, lr {t['lr']} |")
    kinds = sorted(accuracy["adaptive"]["prec@0.5_by_kind"])
    lines += ["", "| Prec@0.5 by target kind | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
    for name, r in accuracy.items():
        lines.append(f"| {name} | " + " | ".join(f"{r['prec@0.5_by_kind'][k]:.3f}" for k in kinds) + " |")
    lines += ["", f"## Latency, batch 1 ({environment()['processor']}, {args.runs} runs after {args.warmup} warm-up)",
              "", "| backend | vision only (prompt cached) | text + vision | text only |", "|---|---|---|---|"]
    for t in timings:
        cells = [f"{t[k]['median_ms']:.2f} ms (p90 {t[k]['p90_ms']:.2f})"
                 for k in ("vision_only", "text_plus_vision", "text_only")]
        lines.append(f"| {t['backend']} ({t['device']}) | " + " | ".join(cells) + " |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
