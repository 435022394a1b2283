"""The one CLI: `edgestack models|export|infer|bench ...`. User errors print one clear line and exit 2."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edgestack.errors import EdgestackError


def _console():
    from rich.console import Console

    return Console(stderr=False, highlight=False)


def cmd_models(args: argparse.Namespace) -> None:
    from rich.table import Table

    from edgestack.models import all_models

    table = Table("model", "configs (default first)", "task", "description")
    for spec in all_models().values():
        configs = [spec.default_config] + [c for c in spec.configs if c != spec.default_config]
        table.add_row(spec.name, ", ".join(configs), spec.task, spec.description)
    _console().print(table)


def cmd_export(args: argparse.Namespace) -> None:
    from edgestack import bundle as bundle_format
    from edgestack.export import export_bundle
    from edgestack.export.report import write_report
    from edgestack.runtime.bench import bench_bundle, markdown_table, speedups

    console = _console()
    bundle, meta = export_bundle(
        args.model, args.config, args.out, args.checkpoint, seed=args.seed, progress=lambda m: console.print(m)
    )
    console.print(f"[bold]parity[/bold] (tolerance {meta['parity']['tolerance']}):")
    from edgestack.export.report import parity_table

    console.print(parity_table(meta["parity"]["results"]))
    if args.bench_runs > 0:
        height, width = meta["default_size"]
        console.print(f"timing batch 1 at {height}x{width}, {args.bench_runs} runs per backend ...")
        records = bench_bundle(bundle, ["torch", "onnxruntime"], [1], [(height, width)], warmup=1,
                               runs=args.bench_runs)
        table = markdown_table(records)
        console.print(table)
        for row in speedups(records):
            console.print(f"{row['backend']} vs torch eager: {row['speedup_vs_torch']:.2f}x")
        meta["latency"] = {"results": records, "speedups": speedups(records)}
        bundle_format.write_meta(bundle, meta)
        write_report(bundle, meta, table)
    console.print(f"[bold green]bundle written:[/bold green] {bundle}")


def cmd_infer(args: argparse.Namespace) -> None:
    from edgestack.runtime import load
    from edgestack.runtime.images import write_image
    from edgestack.runtime.segmentation import segment, segmentation_overlay

    engine = load(args.bundle, backend=args.backend)
    print(f"backend: {engine.description}", file=sys.stderr)
    rgb, class_map = segment(engine, args.image, gray_to_rgb=args.gray_to_rgb)
    write_image(args.out, segmentation_overlay(engine, rgb, class_map))
    classes, counts = __import__("numpy").unique(class_map, return_counts=True)
    top = sorted(zip(counts, classes), reverse=True)[:5]
    print(f"wrote {args.out}; top classes: " + ", ".join(f"{c} ({n / class_map.size:.1%})" for n, c in top))


def cmd_bench(args: argparse.Namespace) -> None:
    from edgestack import bundle as bundle_format
    from edgestack.runtime.bench import bench_bundle, markdown_table, parse_sizes, write_results

    meta = bundle_format.read_meta(args.bundle)
    sizes = parse_sizes(args.sizes) if args.sizes else [tuple(meta["default_size"])]
    batches = [int(b) for b in args.batches.split(",")]
    console = _console()
    records = bench_bundle(args.bundle, args.backends.split(","), batches, sizes, args.warmup, args.runs,
                           progress=lambda m: console.print(f"[dim]{m}[/dim]"))
    out = Path(args.out) if args.out else Path(args.bundle) / "bench"
    paths = write_results(records, out, f"{meta['model']['config']} latency")
    console.print(markdown_table(records))
    console.print("wrote " + ", ".join(str(p) for p in paths))


def cmd_inspect(args: argparse.Namespace) -> None:
    from rich.progress import Progress

    from edgestack.runtime.defects import load_rules
    from edgestack.runtime.inspect import Inspector

    inspector = Inspector(args.bundle, load_rules(args.rules), backend=args.backend, batch=args.batch,
                          overlap=args.overlap, gray_to_rgb=args.gray_to_rgb)
    print(f"backend: {inspector.engine.description}", file=sys.stderr)
    counts = {"OK": 0, "NG": 0, "ERROR": 0}
    with Progress(transient=True) as progress:
        task = progress.add_task("inspecting", total=None)
        for result in inspector.run(args.source, args.out, overlay=args.overlay, max_frames=args.max_frames):
            counts[result["status"]] += 1
            progress.update(task, advance=1, description=f"{result['id']}: {result['status']}")
    summary = (Path(args.out) / "summary.md").read_text()
    print(summary.strip())
    print(f"this run: {counts['OK']} OK, {counts['NG']} NG, {counts['ERROR']} errors; results in {args.out}")


def cmd_serve(args: argparse.Namespace) -> None:
    import ipaddress

    from edgestack.runtime.defects import load_rules
    from edgestack.runtime.inspect import Inspector
    from edgestack.runtime.service import serve

    token = None
    if args.token_file:
        path = Path(args.token_file)
        if not path.is_file():
            raise EdgestackError(f"token file {path} does not exist")
        token = path.read_text().strip()
        if not token:
            raise EdgestackError(f"token file {path} is empty")
    try:
        host_is_loopback = args.host == "localhost" or ipaddress.ip_address(args.host).is_loopback
    except ValueError:  # a host name
        host_is_loopback = False
    if not host_is_loopback and token is None:
        print(f"warning: serving on {args.host} without --token-file: anyone on the network can call it",
              file=sys.stderr)
    inspector = Inspector(args.bundle, load_rules(args.rules), backend=args.backend, batch=args.batch)
    print(f"serving {inspector.engine.description} on http://{args.host}:{args.port}", file=sys.stderr)
    serve(inspector, args.host, args.port, token, args.max_bytes, args.max_pixels)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgestack", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("models", help="list registered models and configs").set_defaults(func=cmd_models)

    p = sub.add_parser("export", help="export a model to a bundle (both ONNX flavours, parity checked)")
    p.add_argument("model", help="model or config name (see `edgestack models`)")
    add_export_arguments(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("infer", help="run a segmentation bundle on one image and write a colour overlay")
    p.add_argument("bundle")
    p.add_argument("image")
    p.add_argument("--out", required=True, help="output PNG")
    p.add_argument("--backend", default="auto")
    p.add_argument("--gray-to-rgb", action="store_true", help="accept grayscale images by replicating the channel")
    p.set_defaults(func=cmd_infer)

    p = sub.add_parser("bench", help="latency of a bundle on every backend: JSON + markdown + PNG")
    p.add_argument("bundle")
    p.add_argument("--backends", default="torch,torch-compiled,onnxruntime")
    p.add_argument("--batches", default="1")
    p.add_argument("--sizes", help="HEIGHTxWIDTH list, e.g. 473x473,375x500 (default: the bundle's size)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--out", help="results folder (default: BUNDLE/bench)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("inspect", help="inspect images/video/camera with a defect bundle: OK/NG per item")
    p.add_argument("source", help="folder, glob, image, video file or camera index")
    p.add_argument("--bundle", required=True)
    p.add_argument("--out", required=True, help="run folder (results.jsonl/csv, overlays, summary); reruns resume")
    p.add_argument("--rules", help="rules file (JSON or TOML): threshold, min_area_px, min_score, max_count, rois")
    p.add_argument("--backend", default="auto")
    p.add_argument("--batch", type=int, default=4, help="tiles per engine call")
    p.add_argument("--overlap", type=int, default=32, help="tile overlap in pixels")
    p.add_argument("--overlay", choices=["ng", "all", "none"], default="ng", help="which items get overlay PNGs")
    p.add_argument("--max-frames", type=int, help="stop a video or camera after this many frames")
    p.add_argument("--gray-to-rgb", action="store_true", help="accept grayscale images")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("serve", help="HTTP service: POST an image, get verdict and defects as JSON")
    p.add_argument("--bundle", required=True)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token-file", help="file holding a bearer token that every request must carry")
    p.add_argument("--rules")
    p.add_argument("--backend", default="auto")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--max-bytes", type=int, default=64 << 20, help="largest accepted request body")
    p.add_argument("--max-pixels", type=int, default=64_000_000, help="largest accepted image (width*height)")
    p.set_defaults(func=cmd_serve)
    return parser


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    """Options shared by `edgestack export` and the root export.py."""
    p.add_argument("--config", help="config of the model (default: the model's default)")
    p.add_argument("--checkpoint", help="weights: .pth/.pt state dict or .safetensors (MAT also: official .pkl)")
    p.add_argument("--out", help="bundle folder (default: artifacts/MODEL)")
    p.add_argument("--seed", type=int, default=0, help="seed for random weights and parity inputs")
    p.add_argument("--bench-runs", type=int, default=3, help="timed runs per backend after export (0: skip)")


def run(argv: list[str] | None, parser: argparse.ArgumentParser) -> int:
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except EdgestackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(argv, build_parser())


if __name__ == "__main__":
    sys.exit(main())
