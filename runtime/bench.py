"""Latency benchmarks of a bundle across backends, batch sizes and resolutions.

Each case: warm-up runs, then N timed runs (backends return host arrays, so every run ends synchronized);
median, p90, p99 and throughput. Results go to JSON + markdown + a PNG plot.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgestack.bundle import axis_problem, read_meta, refuse_several_graphs
from edgestack.errors import EdgestackError
from edgestack.runtime.engine import Engine, check_backends, load, random_feed


def time_calls(fn: Callable[[], Any], warmup: int, runs: int) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    t = np.asarray(times)
    return {
        "median_ms": float(np.median(t)),
        "p90_ms": float(np.percentile(t, 90)),
        "p99_ms": float(np.percentile(t, 99)),
        "mean_ms": float(t.mean()),
        "min_ms": float(t.min()),
        "runs": runs,
    }


def random_inputs(engine: Engine, batch: int, height: int, width: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs of the right shapes; batch/height/width fill the dynamic axes of those names."""
    return random_feed(engine.meta, {"batch": batch, "height": height, "width": width}, seed)


def check_request(bundle: str | Path, backends: list[str], batches: list[int], sizes: list[tuple[int, int]],
                  warmup: int, runs: int) -> dict[str, Any]:
    """The bundle's meta.json, once the request is one that can work somewhere: known backends, one graph, batch
    and sizes in the model's range, warm-up >= 0 and runs >= 1."""
    meta = read_meta(bundle, verify=False)
    refuse_several_graphs(bundle, meta, "benchmark each sub-bundle")
    check_backends(backends)
    if warmup < 0 or runs < 1:
        raise EdgestackError(f"need warm-up >= 0 and runs >= 1, got {warmup} and {runs}")
    cases = [("batch", b) for b in batches] + [(a, v) for size in sizes for a, v in zip(("height", "width"), size)]
    for axis, value in cases:
        problem = axis_problem(meta, axis, value)
        if problem:
            raise EdgestackError(f"cannot benchmark {axis} {value}: {problem}")
    return meta


def bench_bundle(
    bundle: str | Path,
    backends: list[str],
    batches: list[int],
    sizes: list[tuple[int, int]],
    warmup: int = 2,
    runs: int = 10,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """One record per (backend, batch, size); a backend that fails to load or run gets an `error` record.
    What cannot work anywhere is refused first (check_request)."""
    meta = check_request(bundle, backends, batches, sizes, warmup, runs)
    records = []
    model = meta["model"]["config"]
    for backend in backends:
        try:
            engine = load(bundle, backend=backend)
        except Exception as exc:  # a backend that does not work here is a result, not a crash
            records.append({"model": model, "backend": backend, "error": f"{exc.__class__.__name__}: {exc}"})
            continue
        for batch in batches:
            for height, width in sizes:
                if progress:
                    progress(f"{backend} batch {batch} {height}x{width}")
                feed = random_inputs(engine, batch, height, width)
                # The backend that ran (auto resolves to one), and how: a record says what it measured.
                record = {"model": model, "backend": engine.backend.name, "device": engine.backend.device,
                          "batch": batch, "height": height, "width": width, "warmup": warmup} | (
                    {"requested": backend} if backend != engine.backend.name else {})
                try:
                    record |= time_calls(lambda e=engine, f=feed: e(**f), warmup, runs)
                    record["throughput_per_s"] = batch / (record["median_ms"] / 1e3)
                except Exception as exc:  # e.g. torch.compile failing on this machine
                    record["error"] = f"{exc.__class__.__name__}: {exc}"
                records.append(record)
    return records


def shown_backend(record: dict[str, Any]) -> str:
    """The backend as tables and plots name it: `auto` runs beside the one it chose are told apart."""
    return record["backend"] + (f" ({record['requested']})" if "requested" in record else "")


def speedups(records: list[dict[str, Any]], baseline: str = "torch") -> list[dict[str, Any]]:
    """Median-latency ratio baseline / backend for each case both ran."""
    def key(r):
        return r["model"], r.get("batch"), r.get("height"), r.get("width")

    base = {key(r): r["median_ms"] for r in records if r["backend"] == baseline and "median_ms" in r}
    return [
        {"model": r["model"], "backend": shown_backend(r), "batch": r["batch"], "height": r["height"],
         "width": r["width"], "speedup_vs_" + baseline: base[key(r)] / r["median_ms"]}
        for r in records
        if r["backend"] != baseline and "median_ms" in r and key(r) in base
    ]


def markdown_table(records: list[dict[str, Any]]) -> str:
    lines = [
        "| model | backend | device | batch | size | median ms | p90 ms | p99 ms | items/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        if "error" in r:
            size = f"{r['height']}x{r['width']}" if "height" in r else ""
            lines.append(f"| {r['model']} | {shown_backend(r)} | {r.get('device', '')} | {r.get('batch', '')} | "
                         f"{size} | failed: {r['error'][:120]} | | | |")
            continue
        lines.append(
            f"| {r['model']} | {shown_backend(r)} | {r['device']} | {r['batch']} | {r['height']}x{r['width']} | "
            f"{r['median_ms']:.1f} | {r['p90_ms']:.1f} | {r['p99_ms']:.1f} | {r['throughput_per_s']:.2f} |"
        )
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    import onnxruntime
    import torch

    return {
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": __import__("os").cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def write_results(records: list[dict[str, Any]], out_dir: str | Path, title: str) -> list[Path]:
    """latency.json, latency.md and latency.png in `out_dir`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    env = environment()
    paths = [out_dir / "latency.json", out_dir / "latency.md", out_dir / "latency.png"]
    paths[0].write_text(json.dumps({"title": title, "environment": env, "results": records,
                                    "speedups": speedups(records)}, indent=2) + "\n")
    timed = next((r for r in records if "median_ms" in r), None)
    how = f"; {timed['warmup']} warm-up and {timed['runs']} timed runs per case" if timed else ""
    paths[1].write_text(f"# {title}\n\n{env['processor']}, {env['cpu_count']} CPUs, torch {env['torch']}, "
                        f"onnxruntime {env['onnxruntime']}{how}\n\n{markdown_table(records)}\n")
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ok = [r for r in records if "median_ms" in r]
    for model, backend in dict.fromkeys((r["model"], shown_backend(r)) for r in ok):
        rows = [r for r in ok if (r["model"], shown_backend(r)) == (model, backend)]
        labels = [f"b{r['batch']} {r['height']}x{r['width']}" for r in rows]
        ax.plot(labels, [r["median_ms"] for r in rows], marker="o", label=f"{model} {backend}")
    ax.set_yscale("log")
    ax.set_ylabel("median latency (ms)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ok:  # every case failed: an empty plot, the table says why
        ax.legend()
    fig.tight_layout()
    fig.savefig(paths[2], dpi=110)
    plt.close(fig)
    return paths


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """"473x473,375x500" -> [(473, 473), (375, 500)] as (height, width)."""
    try:
        sizes = [tuple(int(v) for v in part.lower().split("x")) for part in text.split(",") if part]
    except ValueError:
        sizes = []
    if not sizes or any(len(size) != 2 for size in sizes):
        raise EdgestackError(f"sizes {text!r} must look like 473x473,375x500 (HEIGHTxWIDTH)")
    return sizes  # type: ignore[return-value]
