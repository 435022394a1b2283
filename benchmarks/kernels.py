"""Kernel benchmark (GPU): each op as eager reference, torch.compile of the reference, our op, our kernel.

    python benchmarks/kernels.py --out results/kernels
    ncu --set full -k regex:edgestack python benchmarks/kernels.py --profile   # each kernel once, for Nsight Compute

Times are medians of device-event timings (triton.testing.do_bench) after warm-up. "op" is the torch custom op
as a model calls it (host dispatch included); "kernel" is the bare C ABI call captured in a CUDA graph and
replayed, i.e. device time. Inputs rotate over several sets so repeated runs do not time the L2 cache.
The DRAM floor is the op's compulsory bytes (inputs read once, outputs written once) over the measured
device-to-device copy rate (bytes read + bytes written per second). Writes kernels.json and kernels.md.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import itertools
import json
from pathlib import Path

import torch

import edgestack.kernels.pyramid_pooling.op  # noqa: F401  (registers the op)
import edgestack.kernels.window_attention.op  # noqa: F401  (registers the op)
from edgestack.kernels import loader
from edgestack.kernels.pyramid_pooling import reference as pp_reference
from edgestack.kernels.window_attention import reference as wa_reference

DTYPE = torch.float16
GRAPH_CALLS = 20


def median_us(fn) -> float:
    from triton.testing import do_bench  # imported here: --help and the checks in main work without Triton

    return do_bench(fn, warmup=100, rep=500, return_mode="median") * 1e3


def copy_bandwidth() -> float:
    """Bytes read + written per second by a 1 GiB device-to-device copy."""
    src = torch.empty(2**30, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    return 2 * src.numel() / (median_us(lambda: dst.copy_(src)) * 1e-6)


def graph_us(calls) -> float:
    """Device time per call: `calls` (one per input set) captured round-robin in a CUDA graph."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for call in calls:  # warm-up outside the capture
            call()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(GRAPH_CALLS):
            calls[i % len(calls)]()
    return median_us(graph.replay) / GRAPH_CALLS


def rotating(fn, inputs, nargs: int):
    """Each call runs `fn` on the next input set, so repeated runs do not time the L2 cache."""
    calls = itertools.count(1)
    return lambda: fn(*inputs[next(calls) % len(inputs)][:nargs])


def time_variants(reference, op, kernel_call, inputs, nargs: int) -> dict[str, float]:
    """Eager reference, torch.compile of it, our torch op and our bare kernel, on the same input sets.

    Each input set holds the op's `nargs` inputs followed by its preallocated outputs (for the kernel)."""
    return {
        "eager_us": median_us(rotating(reference, inputs, nargs)),
        "compile_us": median_us(rotating(torch.compile(reference), inputs, nargs)),
        "op_us": median_us(rotating(op, inputs, nargs)),
        "kernel_us": graph_us([kernel_call(*s) for s in inputs]),
    }


def window_attention_case(name, b, h, w, c, heads, window, shift, sets=16):
    lib = loader.library()
    scale = (c // heads) ** -0.5
    inputs = []
    for _ in range(sets):
        q, k, v = (torch.randn(b, h, w, c, device="cuda", dtype=DTYPE) for _ in range(3))
        mask = (torch.rand(b, h, w, 1, device="cuda") > 0.3).to(DTYPE)
        inputs.append((q, k, v, mask, torch.empty_like(q), torch.empty_like(mask)))

    def reference(q, k, v, mask):
        return wa_reference.window_masked_attention(q, k, v, mask, heads, window, shift, scale, -100.0)

    def op(q, k, v, mask):
        return torch.ops.edgestack.window_masked_attention(q, k, v, mask, heads, window, shift, scale, -100.0)

    def kernel_call(q, k, v, mask, out, mask_out):
        def call():
            status = lib.edgestack_window_attention(
                q.data_ptr(), k.data_ptr(), v.data_ptr(), mask.data_ptr(), out.data_ptr(), mask_out.data_ptr(),
                loader.FLOAT16, b, h, w, c, heads, window, shift, scale, -100.0,
                torch.cuda.current_stream().cuda_stream,
            )  # fmt: skip
            loader.check(status, "window attention")

        return call

    tokens = window * window
    flops = 4 * b * h * w * tokens * c  # q k^T and attn v, 2 flops per multiply-add
    nbytes = 2 * (4 * b * h * w * c + 2 * b * h * w)  # q, k, v read, out written; mask read, mask_out written
    return {"name": name, "flops": flops, "bytes": nbytes}, (reference, op, kernel_call, inputs, 4)


def pyramid_pooling_case(name, b, c, h, w, reduced, bins, sets=4):
    lib = loader.library()
    nbins = len(bins)
    bins_c = (ctypes.c_int * nbins)(*bins)
    size = lib.edgestack_pyramid_pooling_workspace_size(b, c, reduced, bins_c, nbins)
    inputs = []
    for _ in range(sets):
        x = torch.randn(b, c, h, w, device="cuda", dtype=DTYPE)
        weight = (torch.randn(nbins, reduced, c, device="cuda") * c**-0.5).to(DTYPE)
        bias = (torch.randn(nbins, reduced, device="cuda") * 0.1).to(DTYPE)
        y = torch.empty(b, c + nbins * reduced, h, w, device="cuda", dtype=DTYPE)
        workspace = torch.empty(size, dtype=torch.uint8, device="cuda")
        inputs.append((x, weight, bias, y, workspace))

    def reference(x, weight, bias):
        return pp_reference.pyramid_pooling(x, weight, bias, bins, True)

    def op(x, weight, bias):
        return torch.ops.edgestack.pyramid_pooling(x, weight, bias, list(bins), True)

    def kernel_call(x, weight, bias, y, workspace):
        def call():
            status = lib.edgestack_pyramid_pooling(
                x.data_ptr(), weight.data_ptr(), bias.data_ptr(), y.data_ptr(), workspace.data_ptr(), size,
                loader.FLOAT16, loader.FLOAT16, b, c, h, w, reduced, bins_c, nbins, 1,
                torch.cuda.current_stream().cuda_stream,
            )  # fmt: skip
            loader.check(status, "pyramid pooling")

        return call

    cells = sum(k * k for k in bins)
    flops = 2 * b * cells * c * reduced + b * c * h * w * nbins + 8 * b * nbins * reduced * h * w
    out_channels = c + nbins * reduced
    nbytes = 2 * (b * c * h * w + b * out_channels * h * w + nbins * reduced * (c + 1))  # x, y, weight, bias
    return {"name": name, "flops": flops, "bytes": nbytes}, (reference, op, kernel_call, inputs, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="directory for kernels.json and kernels.md")
    parser.add_argument("--profile", action="store_true", help="only launch each kernel twice (for ncu), no timing")
    args = parser.parse_args()
    if not args.out and not args.profile:
        parser.error("pass --out DIR (or --profile)")
    if not torch.cuda.is_available() or not loader.available():
        raise SystemExit("needs a CUDA GPU and a built libedgestack_kernels.so")
    if not args.profile and importlib.util.find_spec("triton") is None:
        raise SystemExit("needs Triton for device-event timing (triton.testing.do_bench): pip install triton")
    torch.manual_seed(0)
    cases = [
        window_attention_case("window attention 64x64 C180 h6 win8 shift4", 1, 64, 64, 180, 6, 8, 4),
        window_attention_case("window attention 32x32 C180 h6 win16 shift8", 1, 32, 32, 180, 6, 16, 8),
        pyramid_pooling_case("pyramid pooling C2048 60x60 R512 bins 1,2,3,6", 1, 2048, 60, 60, 512, (1, 2, 3, 6)),
    ]
    if args.profile:
        for row, (_, _, kernel_call, inputs, _) in cases:
            for input_set in inputs[:2]:  # the first launch warms up; ncu -c picks what it reports
                kernel_call(*input_set)()
            torch.cuda.synchronize()
            print(f"launched {row['name']} twice")
        return
    bandwidth = copy_bandwidth()
    rows = [row | time_variants(*timing) for row, timing in cases]
    for row in rows:
        row["floor_us"] = row["bytes"] / bandwidth * 1e6
        row["kernel_vs_floor"] = row["kernel_us"] / row["floor_us"]
        row["bandwidth_fraction"] = row["bytes"] / (row["kernel_us"] * 1e-6) / bandwidth
        row["compile_over_kernel"] = row["compile_us"] / row["kernel_us"]
    report = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "dtype": "float16",
        "batch": 1,
        "copy_bandwidth_bytes_per_s": bandwidth,
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kernels.json").write_text(json.dumps(report, indent=2))
    lines = [
        f"Device: {report['device']}, torch {report['torch']}, fp16, batch 1; "
        f"copy bandwidth {bandwidth / 1e12:.2f} TB/s (read + write). Medians, us.",
        "",
        "| op | eager | torch.compile | our op | our kernel | floor | kernel/floor | of copy BW | compile/kernel |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['eager_us']:.1f} | {r['compile_us']:.1f} | {r['op_us']:.1f} | {r['kernel_us']:.1f} "
            f"| {r['floor_us']:.1f} | {r['kernel_vs_floor']:.2f}x | {r['bandwidth_fraction']:.0%} "
            f"| {r['compile_over_kernel']:.1f}x |"
        )
    (args.out / "kernels.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
