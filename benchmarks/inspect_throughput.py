"""Inspection throughput: images/s and per-image latency for whole frames, tiles included.

    python benchmarks/inspect_throughput.py --bundle artifacts/defectseg-s --sizes 1024x1024,3000x4096

Synthetic frames (textures with defects) are generated in memory; each size runs warm-up + N frames
through `Inspector.run` (prefetching reader thread, tiling, batching, defects, verdict).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from edgestack.runtime.bench import environment, parse_sizes
from edgestack.runtime.inspect import Inspector


def frames(height: int, width: int, count: int) -> list[np.ndarray]:
    from edgestack.train.synthetic import HELDOUT_SEED, make_sample

    return [cv2.resize(make_sample(HELDOUT_SEED, i, 512).image, (width, height), interpolation=cv2.INTER_LINEAR)
            for i in range(count)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--sizes", default="1024x1024,3000x4096", help="HEIGHTxWIDTH list")
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--out", default="results/inspect")
    args = parser.parse_args()
    inspector = Inspector(args.bundle, backend=args.backend, batch=args.batch)
    rows = []
    for height, width in parse_sizes(args.sizes):
        images = frames(height, width, args.frames)
        inspector.inspect(images[0])  # warm-up
        started = time.perf_counter()
        latencies = [r["latency_ms"] for r in inspector.run(iter(images))]
        seconds = time.perf_counter() - started
        rows.append({"height": height, "width": width, "frames": len(latencies), "images_per_s": len(latencies) /
                     seconds, "median_ms": float(np.median(latencies)), "p99_ms": float(np.percentile(latencies, 99))})
        print(rows[-1], flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = environment()
    (out / "inspect_throughput.json").write_text(json.dumps({"backend": inspector.engine.description,
                                                             "environment": env, "results": rows}, indent=2))
    lines = ["| size (HxW) | frames | images/s | median ms | p99 ms |", "|---|---|---|---|---|"]
    lines += [f"| {r['height']}x{r['width']} | {r['frames']} | {r['images_per_s']:.2f} | {r['median_ms']:.0f} | "
              f"{r['p99_ms']:.0f} |" for r in rows]
    (out / "inspect_throughput.md").write_text(f"# Inspection throughput ({inspector.engine.description}, "
                                               f"{env['cpu_count']} CPUs)\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
