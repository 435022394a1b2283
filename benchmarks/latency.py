"""Latency of one or more bundles on every backend available here, in one run.

    python benchmarks/latency.py artifacts/pspnet-r18 artifacts/pspnet-r50 --sizes 473x473 --out results/pspnet
    python benchmarks/latency.py --export pspnet-r18,pspnet-r50 ...   # export missing bundles first

Writes latency.json (all records, environment, speedups vs torch eager), latency.md and latency.png.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from edgestack.errors import EdgestackError
from edgestack.export import export_bundle
from edgestack.runtime.bench import bench_bundle, markdown_table, parse_sizes, speedups, write_results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundles", nargs="*", help="bundle folders")
    parser.add_argument("--export", default="", help="comma-separated models to export to artifacts/ if missing")
    parser.add_argument("--backends", default="torch,torch-compiled,onnxruntime")
    parser.add_argument("--batches", default="1")
    parser.add_argument("--sizes", default="473x473", help="HEIGHTxWIDTH list")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--out", default="benchmarks/results/latency")
    args = parser.parse_args(argv)
    console = Console(highlight=False)
    try:
        bundles = [Path(b) for b in args.bundles]
        for name in filter(None, args.export.split(",")):
            path = Path("artifacts") / name
            if not (path / "meta.json").is_file():
                export_bundle(name, out=path, progress=lambda m: console.print(f"[dim]{m}[/dim]"))
            bundles.append(path)
        if not bundles:
            raise EdgestackError("name at least one bundle, or models with --export")
        records = []
        for bundle in bundles:
            records += bench_bundle(bundle, args.backends.split(","), [int(b) for b in args.batches.split(",")],
                                    parse_sizes(args.sizes), args.warmup, args.runs,
                                    progress=lambda m, b=bundle: console.print(f"[dim]{b.name}: {m}[/dim]"))
        paths = write_results(records, args.out, "latency, " + ", ".join(b.name for b in bundles))
    except EdgestackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    console.print(markdown_table(records))
    for row in speedups(records):
        console.print(f"{row['model']}: {row['backend']} vs torch eager {row['speedup_vs_torch']:.2f}x")
    console.print("wrote " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
