"""Whole-model GPU latency at batch 1, and MAT's fp16 robustness over random free-form masks.

    python benchmarks/models_gpu.py --out results/gpu                              # eager + CUDA graph rows
    python benchmarks/models_gpu.py --out results/gpu --variants compile_reference  # adds torch.compile rows
    python benchmarks/models_gpu.py --out results/gpu --robustness 100             # mat-512 fp16 on 100 masks

Models: MAT-512 (512x512) and PSPNet-r50 (473x473), random weights (seed 0), one fixed input set.
Variants: eager without our kernels (`loader.disabled()`: the ops run their PyTorch references), eager with our
kernels, each of those replayed from one captured CUDA graph, and torch.compile (inductor, default mode) of the
reference path (our ops decomposed into their references, so inductor sees plain PyTorch ops).
Timing: one CUDA event pair around each call, synchronized after each (end-to-end latency, host launch gaps
included), after warm-up; median and p90 over --runs calls. Default PyTorch numerics (cuDNN TF32 on for fp32 convs).
Every row also records whether the output is finite and its relative L2 difference to eager-reference.
Rows are merged into <out>/models_gpu.json (keyed by model, dtype, variant) and <out>/models_gpu.md is
rewritten after each row, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from edgestack.kernels import loader
from edgestack.kernels.pyramid_pooling import op as pp_op
from edgestack.kernels.window_attention import op as wa_op
from edgestack.models import resolve
from edgestack.models.mat.masks import random_masks

MODELS = {"mat-512": (512, 512), "pspnet-r50": (473, 473)}
VARIANTS = ["eager_reference", "eager_kernels", "graph_reference", "graph_kernels", "compile_reference"]
DTYPES = {"fp16": torch.float16, "fp32": torch.float32}
ANCHORS = "Official MAT-512 on an H100 (DESIGN.md): eager fp32 78 ms; fp16 autocast NaN/Inf; torch.compile 93 ms."


def time_ms(fn, warmup: int, runs: int) -> list[float]:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return times


def captured(model, inputs):
    """One CUDA graph of model(*inputs) (warm-up on a side stream first); returns (replay, static output)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            model(*inputs)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = model(*inputs)
    return graph.replay, out


def compiled_reference(model):
    """torch.compile with our ops decomposed into their PyTorch references (inductor fuses those)."""
    from torch._inductor import decomposition

    decomposition.decompositions[torch.ops.edgestack.window_masked_attention.default] = wa_op._reference
    decomposition.decompositions[torch.ops.edgestack.pyramid_pooling.default] = pp_op.reference.pyramid_pooling
    return torch.compile(model)


@functools.cache
def _cpu_model(name: str):
    spec, config = resolve(name)
    cfg = spec.configs[config]
    torch.manual_seed(0)
    model = spec.build(cfg)
    torch.manual_seed(1)
    return model, spec.example_inputs(cfg, 1, *MODELS[name])


def measure(name: str, dtype: str, variant: str, runs: int, warmup: int) -> dict:
    model, inputs = _cpu_model(name)
    model = copy.deepcopy(model).to("cuda", DTYPES[dtype])
    inputs = [x.to("cuda", DTYPES[dtype]) for x in inputs]
    row = {"model": name, "dtype": dtype, "variant": variant, "size": list(MODELS[name]), "batch": 1}
    with torch.no_grad():
        with loader.disabled():
            reference = model(*inputs).float()
        with contextlib.nullcontext() if variant.endswith("_kernels") else loader.disabled():
            if variant.startswith("graph"):
                fn, out = captured(model, inputs)
                fn()
            else:
                if variant == "compile_reference":
                    model = compiled_reference(model)
                    start = time.perf_counter()
                    model(*inputs)
                    torch.cuda.synchronize()
                    row["compile_s"] = round(time.perf_counter() - start, 1)

                def fn():
                    return model(*inputs)

                out = fn()
            torch.cuda.synchronize()
            out = out.float()
            row["finite"] = bool(torch.isfinite(out).all())
            row["rel_l2_vs_eager_reference"] = ((out - reference).norm() / reference.norm()).item()
            times = time_ms(fn, warmup, runs)
    row.update(
        status="measured",
        runs=runs,
        median_ms=round(statistics.median(times), 3),
        p90_ms=round(statistics.quantiles(times, n=10)[-1], 3),
        min_ms=round(min(times), 3),
    )
    return row


def smooth_image(seed: int, size: int) -> torch.Tensor:
    """A smooth synthetic RGB image in [-1, 1]: 8x8 uniform noise upsampled bicubically."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 8, 8, generator=gen) * 2 - 1
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)


def robustness(count: int, name: str = "mat-512") -> dict:
    """MAT in fp16 (model.half()), our kernels and the reference path, on `count` random free-form masks."""
    spec, config = resolve(name)
    cfg = spec.configs[config]
    res = cfg["resolution"]
    torch.manual_seed(0)
    model32 = spec.build(cfg).cuda()
    model16 = copy.deepcopy(model32).half()
    rows = []
    with torch.no_grad():
        for seed in range(count):
            torch.manual_seed(seed)
            _, _, z, mix1, mix2, noise = spec.example_inputs(cfg, 1, res, res)
            mask = random_masks(1, res, seed=seed)
            inputs = [x.cuda() for x in (smooth_image(seed, res), mask, z, mix1, mix2, noise)]
            ref32 = model32(*inputs).double()
            half = [x.half() for x in inputs]
            out16 = model16(*half).double()
            with loader.disabled():
                ref16 = model16(*half).double()
            rows.append(
                {
                    "seed": seed,
                    "hole_ratio": round(1 - mask.mean().item(), 4),
                    "finite_fp16_kernels": bool(torch.isfinite(out16).all()),
                    "finite_fp16_reference": bool(torch.isfinite(ref16).all()),
                    "finite_fp32_kernels": bool(torch.isfinite(ref32).all()),
                    "rel_l2_fp16_kernels_vs_fp32": ((out16 - ref32).norm() / ref32.norm()).item(),
                }
            )
    errors = [r["rel_l2_fp16_kernels_vs_fp32"] for r in rows if r["finite_fp16_kernels"]]
    return {
        "model": name,
        "masks": count,
        "mask_sampler": f"random_masks(1, {res}, seed) large setting, hole ratio in (0, 1); image smooth synthetic",
        "nonfinite_fp16_kernels": sum(not r["finite_fp16_kernels"] for r in rows),
        "nonfinite_fp16_reference": sum(not r["finite_fp16_reference"] for r in rows),
        "nonfinite_fp32_kernels": sum(not r["finite_fp32_kernels"] for r in rows),
        "rel_l2_fp16_vs_fp32_median": statistics.median(errors) if errors else None,
        "rel_l2_fp16_vs_fp32_max": max(errors) if errors else None,
        "device": torch.cuda.get_device_name(),
        "rows": rows,
    }


def environment() -> dict:
    return {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "kernels_library": str(next((p for p in loader.candidates() if p.is_file()), None)),
    }


def write(out: Path, results: dict) -> None:
    (out / "models_gpu.json").write_text(json.dumps(results, indent=2))
    lines = [
        "# Whole models, batch 1, GPU latency (ms)",
        "",
        f"{results['environment']['device']}, torch {results['environment']['torch']}, "
        f"CUDA {results['environment']['cuda']}. {ANCHORS}",
        "",
        "| model | dtype | variant | median | p90 | runs | finite | rel L2 vs eager reference | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        if row["status"] == "measured":
            note = f"compile {row['compile_s']} s" if "compile_s" in row else ""
            lines.append(
                f"| {row['model']} | {row['dtype']} | {row['variant']} | {row['median_ms']:.2f} | {row['p90_ms']:.2f} "
                f"| {row['runs']} | {row['finite']} | {row['rel_l2_vs_eager_reference']:.2e} | {note} |"
            )
        else:
            cells = [row["model"], row["dtype"], row["variant"], "-", "-", "-", "-", "-", row["reason"]]
            lines.append("| " + " | ".join(cells) + " |")
    (out / "models_gpu.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/gpu"))
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--dtypes", default=",".join(DTYPES))
    parser.add_argument("--variants", default=",".join(v for v in VARIANTS if v != "compile_reference"))
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--robustness", type=int, default=0, help="run only the fp16 robustness check on N masks")
    parser.add_argument("--robustness-model", default="mat-512")
    parser.add_argument("--skip-reason", default="", help="record the selected rows as skipped with this reason")
    args = parser.parse_args()
    # A misspelt name would otherwise run as another variant (or fail per row) under the name given.
    for flag, allowed in (("models", MODELS), ("dtypes", DTYPES), ("variants", VARIANTS)):
        unknown = sorted(set(getattr(args, flag).split(",")) - set(allowed))
        if unknown:
            parser.error(f"--{flag}: unknown {', '.join(unknown)}; choose from {','.join(allowed)}")
    args.out.mkdir(parents=True, exist_ok=True)
    if not torch.cuda.is_available() or not loader.available():
        raise SystemExit("needs a CUDA GPU and the built kernels library")

    if args.robustness:
        result = robustness(args.robustness, args.robustness_model)
        (args.out / "mat_fp16_robustness.json").write_text(json.dumps(result, indent=2))
        print(
            f"{result['model']} fp16 on {result['masks']} masks: non-finite outputs with our kernels "
            f"{result['nonfinite_fp16_kernels']}, reference path {result['nonfinite_fp16_reference']}; "
            f"rel L2 fp16 vs fp32 median {result['rel_l2_fp16_vs_fp32_median']}"
        )
        return

    path = args.out / "models_gpu.json"
    results = json.loads(path.read_text()) if path.is_file() else {"rows": []}
    results["environment"] = environment()
    results["anchors"] = ANCHORS
    for name in args.models.split(","):
        for dtype in args.dtypes.split(","):
            for variant in args.variants.split(","):
                if args.skip_reason:
                    row = {
                        "model": name,
                        "dtype": dtype,
                        "variant": variant,
                        "status": "skipped",
                        "reason": args.skip_reason,
                    }
                else:
                    try:
                        row = measure(name, dtype, variant, args.runs, args.warmup)
                    except Exception as error:  # one failed variant (e.g. a graph capture) must not lose the rest
                        row = {"model": name, "dtype": dtype, "variant": variant, "status": "failed",
                               "reason": f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:200]}"}
                    torch.cuda.empty_cache()
                key = (name, dtype, variant)
                results["rows"] = [r for r in results["rows"] if (r["model"], r["dtype"], r["variant"]) != key]
                results["rows"].append(row)
                write(args.out, results)
                print(json.dumps(row), flush=True)
    print(f"\n{(args.out / 'models_gpu.md').read_text()}")


if __name__ == "__main__":
    main()
