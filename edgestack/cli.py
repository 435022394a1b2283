"""The one CLI: `edgestack models|export|infer|bench ...`. User errors print one clear line and exit 2."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
import threading
from contextlib import closing, contextmanager
from pathlib import Path

from edgestack.errors import EdgestackError, make_folder

BIT_DEPTH_HELP = "the camera's bit depth (10, 12, 14) when its images are stored as 16-bit files"
RULES_HELP = ("rules file (JSON or TOML): threshold, min_area_px, min_area_mm2, mm_per_px, min_score, max_count, "
              "rois, max_listed, min_frame_std (documented in edgestack.runtime.defects)")


def positive(kind: type):
    """An argparse type: a finite number > 0 of `kind` (int or float); a bad value is a usage error, exit 2."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not 0 < value < float("inf"):
            raise argparse.ArgumentTypeError(f"{text!r} is not a {'whole ' if kind is int else ''}number > 0")
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse


def fraction(text: str) -> float:
    """An argparse type: a number from 0 to 1 (NaN, which every comparison fails, is refused)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number from 0 to 1")
    return value


def image_file(text: str) -> str:
    """An argparse type: a file name OpenCV can write an image to, checked before any work is done."""
    import cv2

    path = Path(text)
    if path.is_dir() or not path.name or not cv2.haveImageWriter(path.name):
        raise argparse.ArgumentTypeError(f"{text!r} is not an image file to write; give a .png or .jpg file name")
    return text


def seed(text: str) -> int:
    """An argparse type: a whole number from 0 to 2**63 - 1, the range torch, numpy and the samplers all accept."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from 0 to {2**63 - 1}")
    return value


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


def cmd_doctor(args: argparse.Namespace) -> None:
    from edgestack.runtime.environment import findings, print_findings

    found = findings(args.bundle)
    if args.json:
        print(json.dumps([f.as_dict() for f in found], indent=2))
    else:
        print_findings(found)
    problems = [f.component for f in found if f.status == "problem"]
    if problems:
        raise EdgestackError(f"{len(problems)} problem(s): {', '.join(problems)} (fixes above)")


def cmd_export(args: argparse.Namespace) -> None:
    from edgestack import bundle as bundle_format
    from edgestack.export import export_bundle
    from edgestack.export.report import write_report
    from edgestack.runtime.bench import bench_bundle, markdown_table, speedups

    console = _console()
    bundle, meta = export_bundle(
        args.model, args.config, args.out, args.checkpoint, seed=args.seed, progress=lambda m: console.print(m)
    )
    from edgestack.export.report import parity_table

    if "graphs" in meta:  # text + vision graphs (vglaw): parity per graph; latency in benchmarks/vglaw_report.py
        for graph, parity in meta["parity"].items():
            console.print(f"[bold]parity of the {graph} graph[/bold] (tolerance {parity['tolerance']}):")
            console.print(parity_table(parity["results"]))
        console.print(f"[bold green]bundle written:[/bold green] {bundle}")
        return
    console.print(f"[bold]parity[/bold] (tolerance {meta['parity']['tolerance']}):")
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


def refuse_writing_over_inputs(outputs: list[Path], inputs: dict[str, str]) -> None:
    """An --out that names an input (`--out frame.png` for `frame.png`) would replace the user's original."""
    for out in outputs:
        for flag, given in inputs.items():
            if out.resolve() == Path(given).resolve():
                raise EdgestackError(f"--out would write {out} over the {flag} {given}; choose another --out")


def cmd_infer(args: argparse.Namespace) -> None:
    from edgestack.runtime import load
    from edgestack.runtime.images import write_image
    from edgestack.runtime.segmentation import segment, segmentation_overlay

    refuse_writing_over_inputs([Path(args.out)], {"input image": args.image})
    engine = load(args.bundle, backend=args.backend)
    print(f"backend: {engine.description}", file=sys.stderr)
    if engine.meta["postprocess"].get("kind") == "detection":
        from edgestack.runtime.detection import detect, draw_detections

        rgb, detections = detect(engine, args.image, args.gray_to_rgb, args.min_score, args.bit_depth)
        write_image(args.out, draw_detections(rgb, detections, len(engine.meta["postprocess"]["classes"])))
        print(f"wrote {args.out}; {len(detections)} detections"
              + "".join(f"\n  {d['label']} {d['score']:.3f} at {d['box']}" for d in detections[:10]))
        return
    rgb, class_map = segment(engine, args.image, args.gray_to_rgb, args.bit_depth)
    write_image(args.out, segmentation_overlay(engine, rgb, class_map))
    classes, counts = __import__("numpy").unique(class_map, return_counts=True)
    top = sorted(zip(counts, classes), reverse=True)[:5]
    print(f"wrote {args.out}; top classes: " + ", ".join(f"{c} ({n / class_map.size:.1%})" for n, c in top))


def cmd_bench(args: argparse.Namespace) -> None:
    from edgestack import bundle as bundle_format
    from edgestack.runtime.bench import bench_bundle, check_request, markdown_table, parse_sizes, write_results

    meta = bundle_format.read_meta(args.bundle)
    sizes = parse_sizes(args.sizes) if args.sizes else [tuple(meta["default_size"])]
    try:
        batches = [int(b) for b in args.batches.split(",")]
    except ValueError:
        raise EdgestackError(f"--batches {args.batches!r} must be comma-separated integers, e.g. 1,4") from None
    console = _console()
    out = Path(args.out) if args.out else Path(args.bundle) / "bench"
    check_request(args.bundle, args.backends.split(","), batches, sizes, args.warmup, args.runs)  # before the
    make_folder(out, "results folder")  # folder is made (a re-export would refuse it), before the cases run
    records = bench_bundle(args.bundle, args.backends.split(","), batches, sizes, args.warmup, args.runs,
                           progress=lambda m: console.print(f"[dim]{m}[/dim]"))
    paths = write_results(records, out, f"{meta['model']['config']} latency")
    console.print(markdown_table(records))
    console.print("wrote " + ", ".join(str(p) for p in paths))
    if not any("median_ms" in r for r in records):
        raise EdgestackError(f"no case ran; the first failure: {records[0]['error']}")


def cmd_inpaint(args: argparse.Namespace) -> None:
    from edgestack.runtime import load
    from edgestack.runtime.images import write_image
    from edgestack.runtime.inpaint import inpaint, side_by_side

    out = Path(args.out)
    compare = out.with_name(out.stem + ".side_by_side.png")
    refuse_writing_over_inputs([out, compare], {"--image": args.image, "--mask": args.mask})
    engine = load(args.bundle, backend=args.backend)
    print(f"backend: {engine.description}", file=sys.stderr)
    if engine.meta["weights"]["random"]:
        print("warning: this bundle has random weights; the fill will be noise. Export with --checkpoint",
              file=sys.stderr)
    rgb, result, hole = inpaint(engine, args.image, args.mask, args.invert_mask, args.seed, args.noise_mode,
                                args.gray_to_rgb, args.bit_depth)
    write_image(out, result)  # both files only after the whole image is done: nothing half-written
    write_image(compare, side_by_side(rgb, hole, result))
    print(f"wrote {out} and {compare} ({hole.mean():.1%} of the image filled)")


def cmd_inspect(args: argparse.Namespace) -> None:
    from rich.progress import Progress

    from edgestack.runtime.defects import load_rules
    from edgestack.runtime.inspect import Inspector
    from edgestack.runtime.sources import Watch

    if not args.watch and (args.settle is not None or args.idle_exit is not None):
        raise EdgestackError("--settle and --idle-exit are options of --watch; add --watch or drop them")
    settle = Watch.settle_s if args.settle is None else args.settle
    watch = Watch(settle, args.idle_exit) if args.watch else None
    inspector = Inspector(args.bundle, load_rules(args.rules), backend=args.backend, batch=args.batch,
                          overlap=args.overlap, gray_to_rgb=args.gray_to_rgb, bit_depth=args.bit_depth)
    print(f"backend: {inspector.engine.description}", file=sys.stderr)
    if watch:
        print(f"watching {args.source} for new images (Ctrl-C or SIGTERM ends the run)", file=sys.stderr)
    counts = {"OK": 0, "NG": 0, "ERROR": 0}
    interrupted = False
    with Progress(transient=True) as progress, closing(inspector.run(
            args.source, args.out, overlay=args.overlay, max_frames=args.max_frames, watch=watch)) as results:
        task = progress.add_task("inspecting", total=None)
        try:
            for result in results:
                counts[result["status"]] += 1
                progress.update(task, advance=1, description=f"{result['id']}: {result['status']}")
        except KeyboardInterrupt:  # the run folder is complete up to here: report it
            interrupted = True
    summary = (Path(args.out) / "summary.md").read_text()
    print(summary.strip())
    print(f"this run: {counts['OK']} OK, {counts['NG']} NG, {counts['ERROR']} errors; results in {args.out}")
    if interrupted and not watch:  # the usual end of a watch; for a finite source, say it was cut short
        raise KeyboardInterrupt


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
        token = path.read_bytes().strip()
        if not token:
            raise EdgestackError(f"token file {path} is empty")
        if not (token.isascii() and token.decode().isprintable()):  # HTTP headers carry ASCII
            raise EdgestackError(f"token file {path} must hold one line of printable ASCII (e.g. from "
                                 "`openssl rand -hex 32`)")
        token = token.decode()
    if not 1 <= args.port <= 65535:
        raise EdgestackError(f"--port {args.port} is not a TCP port (1..65535)")
    try:
        host_is_loopback = args.host == "localhost" or ipaddress.ip_address(args.host).is_loopback
    except ValueError:  # a host name
        host_is_loopback = False
    if not host_is_loopback and token is None:
        print(f"warning: serving on {args.host} without --token-file: anyone on the network can call it",
              file=sys.stderr)
    inspector = Inspector(args.bundle, load_rules(args.rules), backend=args.backend, batch=args.batch,
                          overlap=args.overlap, gray_to_rgb=args.gray_to_rgb, bit_depth=args.bit_depth)
    serve(inspector, args.host, args.port, token, args.max_bytes, args.max_pixels, args.out, args.overlay,
          args.max_pending, args.body_timeout)


def cmd_build(args: argparse.Namespace) -> None:
    from edgestack.export.tensorrt import build_engine

    record = build_engine(args.bundle, args.precision, args.calib, args.workspace, args.profile,
                          args.version_compatible, args.hardware_compatible)
    figures = record["parity_vs_onnxruntime"]
    print(f"plan: TensorRT {record['version']}, {record['gpu']} (sm {record['compute_capability']}), "
          f"{record['precision']}; vs onnxruntime fp32: max abs / max ref {figures['max_abs_over_max_ref']:.3g}"
          + _quality_figures(figures))


def cmd_quantize(args: argparse.Namespace) -> None:
    from edgestack.export.quantize import quantize
    from edgestack.runtime.bench import parse_sizes

    sizes = parse_sizes(args.size) if args.size else [None]
    if len(sizes) != 1:
        raise EdgestackError(f"--size {args.size!r} must be one HEIGHTxWIDTH, e.g. 97x97")
    record = quantize(args.bundle, args.calib, args.samples, sizes[0], bit_depth=args.bit_depth)
    figures = record["parity_vs_fp32"]
    print(f"wrote {Path(args.bundle) / record['file']} ({record['quantization']['qdq_nodes']} Q/DQ nodes); "
          f"vs fp32 on {figures['images']} images ({figures['source']}): rel L2 {figures['rel_l2']:.3g}"
          + _quality_figures(figures))


def _quality_figures(figures: dict) -> str:
    """The task's figures against fp32 (parity_vs_fp32) of an int8 model or a plan, as `, name value` text."""
    return "".join(f", {key} {figures[key]:.4f}" for key in ("argmax_agreement", "miou_vs_fp32", "psnr_db_vs_fp32",
                                                             "fp32_detections_kept", "detections_in_fp32")
                   if key in figures)


def cmd_triton(args: argparse.Namespace) -> None:
    from edgestack.export.triton import write_repository
    from edgestack.tensorrt_env import AUTOLOAD_LIBRARY

    model_dir = write_repository(args.bundle, args.repo, args.name, args.max_batch, args.instances, args.format,
                                 args.cpu, args.replace)
    command = ["tritonserver", "--model-repository", args.repo] + [
        f"--backend-config=tensorrt,plugins={p}" for p in model_dir.glob(AUTOLOAD_LIBRARY)]
    print(f"wrote {model_dir}; serve with `{shlex.join(command)}`")  # quoted: a path may hold spaces


def _is_detector(name: str, config: str | None) -> bool:
    from edgestack.models import resolve

    return resolve(name, config)[0].name == "detector"


def _is_grounding(name: str, config: str | None) -> bool:
    from edgestack.models import resolve

    return resolve(name, config)[0].name == "vglaw"


def cmd_train(args: argparse.Namespace) -> None:
    from edgestack.train.loop import train

    grounding = _is_grounding(args.model, args.config)
    if args.bf16 and (grounding or _is_detector(args.model, args.config)):
        raise EdgestackError("--bf16 applies to defectseg only; drop it for vglaw and the detector")
    if args.native_scale and grounding:
        raise EdgestackError("--native-scale applies to camera folders; vglaw trains on its synthetic set only")
    if args.bit_depth is not None and grounding:
        raise EdgestackError("--bit-depth applies to camera folders; vglaw trains on its synthetic set only")
    if args.init is not None and grounding:  # it was accepted and the run trained from random weights
        raise EdgestackError("--init applies to defectseg; vglaw trains from scratch (or goes on with --resume)")
    defaults = ({"batch_size": 32, "lr": 4e-4, "synthetic_count": 6000} if grounding else
                {"batch_size": 16, "lr": 2e-3, "synthetic_count": 3000})
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if grounding:
        from edgestack.train.grounding import train as train_grounding

        if args.data != "synthetic":
            raise EdgestackError(f"vglaw trains on the synthetic referring set; pass --data synthetic, "
                                 f"not {args.data!r}")
        out = args.out or f"runs/{args.config or args.model}"
        summary = train_grounding(args.config or (None if args.model == "vglaw" else args.model), out, args.epochs,
                                  args.batch_size, args.lr, train_count=args.synthetic_count,
                                  seed=args.seed, resume=args.resume, threads=args.threads, device=args.device,
                                  workers=args.workers)
        best = summary["best_val"]
        print(f"trained {summary['config']} for {summary['epochs']} epochs in {summary['train_seconds']:.0f} s on "
              f"{summary['device']}; "
              f"best val Prec@0.5 {best['prec@0.5']:.4f}, mIoU {best['mIoU']:.4f}; checkpoints in {out}")
        return
    if _is_detector(args.model, args.config):
        from edgestack.train.detection import train_command

        if args.device or args.workers != 1:
            raise EdgestackError("--device and --workers apply to defectseg and vglaw; the detector trains on the "
                                 "CPU with --threads")

        out = args.out or f"runs/{args.config or args.model}"
        summary = train_command(args.model, args.config, args.data, out, args.epochs, args.batch_size, args.size,
                                args.lr, args.synthetic_count, args.seed, args.teacher, args.distill, args.threads,
                                args.resume, bit_depth=args.bit_depth, native_scale=args.native_scale)
        val = summary["val"]
        print(f"trained {summary['config']}{' with TBD' if args.distill else ''} for {summary['epochs']} epochs in "
              f"{summary['train_seconds']:.0f} s; val {_map_text(val)}; {out}/best.pt")
        return
    if args.teacher or args.distill:
        raise EdgestackError("--teacher/--distill apply to the detector only")

    summary = train(args.model, args.config, args.data, args.out or f"runs/{args.config or args.model}", args.epochs,
                    args.batch_size, args.size, args.lr, synthetic_count=args.synthetic_count, seed=args.seed,
                    resume=args.resume, init=args.init, threads=args.threads, device=args.device,
                    workers=args.workers, bf16=args.bf16, bit_depth=args.bit_depth, native_scale=args.native_scale)
    best = summary["best_val"]
    print(f"trained {summary['config']} for {summary['epochs']} epochs in {summary['train_seconds']:.0f} s; best val "
          f"S {best.get('S', float('nan')):.4f}, MAE {best.get('MAE', float('nan')):.4f}, OK/NG acc "
          f"{best['accuracy']:.3f}; checkpoints in {args.out or f'runs/{args.config or args.model}'}")


def _map_text(figures: dict) -> str:
    if figures["mAP"] is None:
        return f"no mAP (its {figures['images']} images hold no defect box to find)"
    return f"mAP {figures['mAP']:.4f}, mAP@50 {figures['mAP50']:.4f}"


def cmd_eval(args: argparse.Namespace) -> None:
    from edgestack.train.evaluate import evaluate_defects

    if _is_detector(args.model, args.config) or _is_grounding(args.model, args.config):
        if args.bundle:
            raise EdgestackError(f"--bundle evaluation is for defectseg bundles; evaluate {args.model} with "
                                 "--checkpoint")
        if args.tiled or args.target_recall is not None or args.rules_out or args.rules or args.bit_depth is not None \
                or args.threshold is not None or args.min_area is not None or args.backend != "auto":
            raise EdgestackError(f"--tiled, --rules, --target-recall, --rules-out, --bit-depth, --threshold, "
                                 f"--min-area and --backend are for defectseg, not {args.model}")
        if args.size is not None and _is_grounding(args.model, args.config):
            raise EdgestackError("--size is not for vglaw: it is evaluated at its graph's own size")
    if _is_detector(args.model, args.config):
        from edgestack.train.detection import eval_command

        if args.data != "synthetic":
            raise EdgestackError(f"detector evaluation reads the held-out synthetic set; pass --data synthetic, "
                                 f"not {args.data!r}")
        results, path = eval_command(args.model, args.config, args.checkpoint, args.out or
                                     f"runs/eval-{args.config or args.model}", args.size or 256, args.count,
                                     args.threads)
        print(f"{results['config']}: {_map_text(results)} on {results['images']} held-out images ({results['boxes']} "
              f"boxes); harmony {results['harmony']}; wrote {path}")
        return

    if _is_grounding(args.model, args.config):
        from edgestack.train.grounding import evaluate

        if args.data != "synthetic":
            raise EdgestackError(f"vglaw evaluation reads the synthetic referring test split; pass --data synthetic, "
                                 f"not {args.data!r}")
        config = args.config or (None if args.model == "vglaw" else args.model)
        results, paths = evaluate(args.checkpoint, config, "test", args.count, args.out, args.threads)
        print(paths["markdown"].read_text())
        print("wrote " + ", ".join(str(p) for p in paths.values()))
        return
    results, paths = evaluate_defects(args.model, args.config, args.data, args.checkpoint, args.out,
                                      args.size or 256, args.count, args.min_area, args.threads,
                                      threshold=args.threshold, bundle=args.bundle, backend=args.backend,
                                      tiled=args.tiled, target_recall=args.target_recall, rules_out=args.rules_out,
                                      rules=args.rules, bit_depth=args.bit_depth)
    print(paths["markdown"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))


def cmd_ground(args: argparse.Namespace) -> None:
    from edgestack.runtime.grounding import Grounder, draw_grounding
    from edgestack.runtime.images import read_image, write_image

    if args.out:
        refuse_writing_over_inputs([Path(args.out)], {"--image": args.image})
    grounder = Grounder(args.bundle, backend=args.backend)
    print(f"backend: {grounder.description}", file=sys.stderr)
    if grounder.meta["weights"]["random"]:  # confident boxes from random weights (vglaw-s-static ships none)
        print("warning: this bundle has random weights; its boxes and masks mean nothing. Export with --checkpoint",
              file=sys.stderr)
    rgb = read_image(args.image, args.gray_to_rgb, args.bit_depth)
    results = grounder.ground(rgb, args.text)  # logs prompt warnings
    if args.out:
        write_image(args.out, draw_grounding(rgb, results))
    print(json.dumps({"image": str(args.image), "results": [r.as_dict() for r in results]}
                     | ({"overlay": str(args.out)} if args.out else {}), indent=2))


def cmd_synth(args: argparse.Namespace) -> None:
    from edgestack.train.synthetic import write_synthetic

    counts = write_synthetic(args.out, args.count, args.seed, args.size, args.negative_fraction)
    print(f"wrote {counts['positive']} positives and {counts['negative']} negatives to {args.out} (CDS2K layout)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgestack", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("models", help="list registered models and configs").set_defaults(func=cmd_models)

    p = sub.add_parser("doctor", help="what this machine can run: torch, onnxruntime, GPU, TensorRT, kernels, "
                                      "plugins (and a bundle's plan), each missing piece with its fix")
    p.add_argument("--bundle", help="also check this bundle's files and whether its plan runs here")
    p.add_argument("--json", action="store_true", help="print the findings as JSON")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("export", help="export a model to a bundle (both ONNX flavours, parity checked)")
    p.add_argument("model", help="model or config name (see `edgestack models`)")
    add_export_arguments(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("infer", help="run a segmentation (colour overlay) or detection (boxes) bundle on one image")
    p.add_argument("bundle")
    p.add_argument("image")
    p.add_argument("--out", type=image_file, required=True, help="output PNG")
    p.add_argument("--backend", default="auto")
    p.add_argument("--gray-to-rgb", action="store_true", help="accept grayscale images by replicating the channel")
    p.add_argument("--min-score", type=fraction, default=0.2,
                   help="detection bundles: draw boxes scoring at least this")
    p.add_argument("--bit-depth", type=int, help=BIT_DEPTH_HELP)
    p.set_defaults(func=cmd_infer)

    p = sub.add_parser("ground", help="vglaw bundle: box + mask of the defect each --text names, as JSON (+ overlay)")
    p.add_argument("--bundle", required=True, help="a bundle from `edgestack export vglaw`")
    p.add_argument("--image", required=True)
    p.add_argument("--text", required=True, action="append", help="what to find, e.g. \"the largest stain\"; "
                                                                   "repeat for several prompts (one batch)")
    p.add_argument("--out", type=image_file, help="overlay PNG with every prompt's box and mask")
    p.add_argument("--backend", default="auto")
    p.add_argument("--gray-to-rgb", action="store_true", help="accept grayscale images by replicating the channel")
    p.add_argument("--bit-depth", type=int, help=BIT_DEPTH_HELP)
    p.set_defaults(func=cmd_ground)

    p = sub.add_parser("bench", help="latency of a bundle on every backend: JSON + markdown + PNG")
    p.add_argument("bundle")
    p.add_argument("--backends", default="torch,torch-compiled,onnxruntime")
    p.add_argument("--batches", default="1")
    p.add_argument("--sizes", help="HEIGHTxWIDTH list, e.g. 473x473,375x500 (default: the bundle's size)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--runs", type=positive(int), default=10)
    p.add_argument("--out", help="results folder (default: BUNDLE/bench)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("inpaint", help="fill the holes of an image with a MAT bundle")
    p.add_argument("--bundle", required=True)
    p.add_argument("--image", required=True)
    p.add_argument("--mask", required=True, help="PNG: black (0) = hole to fill, white (255) = keep")
    p.add_argument("--out", type=image_file, required=True,
                   help="result PNG; a .side_by_side.png is written next to it")
    p.add_argument("--invert-mask", action="store_true", help="white marks the hole instead")
    p.add_argument("--seed", type=seed, default=0, help="latent/noise seed: other seeds give other fills")
    p.add_argument("--noise-mode", choices=["const", "random", "none"], default="const")
    p.add_argument("--backend", default="auto")
    p.add_argument("--gray-to-rgb", action="store_true", help="replicate a grayscale image's channel")
    p.add_argument("--bit-depth", type=int, help=BIT_DEPTH_HELP + " (the result is 8-bit)")
    p.set_defaults(func=cmd_inpaint)

    p = sub.add_parser("inspect", help="inspect images/video/camera with a defect bundle: OK/NG per item")
    p.add_argument("source", help="folder, glob, image, video file or camera index")
    p.add_argument("--bundle", required=True)
    p.add_argument("--out", required=True,
                   help="run folder (results.jsonl/csv, overlays, summary); a rerun resumes and retries ERROR items")
    p.add_argument("--rules", help=RULES_HELP)
    p.add_argument("--backend", default="auto")
    p.add_argument("--batch", type=positive(int), default=4, help="tiles per engine call")
    p.add_argument("--overlap", type=int, default=32, help="tile overlap in pixels")
    p.add_argument("--overlay", choices=["ng", "all", "none"], default="ng", help="which items get overlay PNGs")
    p.add_argument("--max-frames", type=positive(int), help="stop a video or camera after this many frames")
    p.add_argument("--gray-to-rgb", action="store_true", help="accept grayscale images")
    p.add_argument("--bit-depth", type=int, help=BIT_DEPTH_HELP)
    p.add_argument("--watch", action="store_true",
                   help="keep watching the source folder and inspect each new image once it is complete")
    p.add_argument("--settle", type=float,
                   help="with --watch: seconds a file must stay unchanged before it is read (default 1)")
    p.add_argument("--idle-exit", type=float,
                   help="with --watch: end the run after this many seconds without a new image")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("serve", help="HTTP service: POST an image, get verdict and defects as JSON")
    p.add_argument("--bundle", required=True)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token-file", help="file holding a bearer token that every request must carry")
    p.add_argument("--rules", help=RULES_HELP)
    p.add_argument("--backend", default="auto")
    p.add_argument("--batch", type=positive(int), default=4)
    p.add_argument("--max-bytes", type=positive(int), default=64 << 20, help="largest accepted request body")
    p.add_argument("--max-pixels", type=positive(int), default=64_000_000, help="largest accepted image (width*height)")
    p.add_argument("--overlap", type=int, default=32, help="tile overlap in pixels")
    p.add_argument("--gray-to-rgb", action="store_true", help="accept grayscale images")
    p.add_argument("--bit-depth", type=int, help=BIT_DEPTH_HELP)
    p.add_argument("--out", help="run folder: every result in results.jsonl/csv (on disk before the response), "
                                 "overlays, and a summary when the service stops")
    p.add_argument("--overlay", choices=["ng", "all", "none"], default="ng", help="with --out: which get overlays")
    p.add_argument("--max-pending", type=positive(int), default=32,
                   help="requests in progress at once; more get 503 + Retry-After (default 32)")
    p.add_argument("--body-timeout", type=positive(float), default=30.0,
                   help="seconds a request's body may take to arrive (then 408), and that requests in progress "
                        "get to finish when the service stops (default 30)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("build", help="build a TensorRT plan (model.plan) for this GPU from a bundle")
    p.add_argument("bundle")
    p.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="fp16")
    p.add_argument("--calib", help="int8: folder of real images to calibrate on (default: reuse model.int8.onnx, "
                                   "else synthetic images)")
    p.add_argument("--workspace", type=positive(int), help="TensorRT workspace limit in MB (default: TensorRT's)")
    p.add_argument("--profile", help="MIN,OPT,MAX sizes, each HxW or BxHxW (default: min at the model's smallest, "
                                     "opt at its default size, max at twice that and batch 8)")
    p.add_argument("--version-compatible", action="store_true", help="plan runs on later TensorRT 10.x too")
    p.add_argument("--hardware-compatible", action="store_true",
                   help="plan runs on any Ampere or newer discrete GPU (not on Jetson)")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("quantize", help="int8 Q/DQ ONNX (model.int8.onnx) by static calibration, with parity")
    p.add_argument("bundle")
    p.add_argument("--calib", help="folder of representative images (default: synthetic images, say so in meta)")
    p.add_argument("--samples", type=positive(int), default=32, help="calibration images")
    p.add_argument("--size", help="HxW the images are resized to (default: the bundle's default size)")
    p.add_argument("--bit-depth", type=int, help=BIT_DEPTH_HELP)
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("triton", help="Triton model repository (config.pbtxt + plan or ONNX) from a bundle")
    p.add_argument("bundle")
    p.add_argument("--repo", required=True, help="model repository folder")
    p.add_argument("--name", help="model name (default: the bundle's config, plus its graph for a sub-bundle)")
    p.add_argument("--max-batch", type=int, help="max_batch_size (default: the model's largest batch; 0: none)")
    p.add_argument("--instances", type=positive(int), default=1, help="model instances")
    p.add_argument("--format", choices=["auto", "plan", "onnx"], default="auto", help="auto: plan if built")
    p.add_argument("--cpu", action="store_true", help="ONNX instances on the CPU (KIND_CPU)")
    p.add_argument("--replace", action="store_true", help="replace REPO/NAME if it exists (refused otherwise)")
    p.set_defaults(func=cmd_triton)

    p = sub.add_parser("train", help="train defectseg (CDS2K-style folder or synthetic), the detector or vglaw "
                                     "(synthetic)")
    p.add_argument("model", help="defectseg, detector, vglaw or one of their configs (vglaw-s-static: Phi disabled)")
    p.add_argument("--data", required=True, help="CDS2K-style folder (Positive/, Negative/ or image/ + mask/), "
                                                 "or `synthetic`")
    p.add_argument("--epochs", type=positive(int), required=True)
    p.add_argument("--config", help="config (default: the model's default, defectseg-s)")
    p.add_argument("--out", help="run folder for last.pt, best.pt and curves.png (detector: summary.json) "
                                 "(default: runs/CONFIG)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--init", help="defectseg: start from these weights (checkpoint or .safetensors; `shipped` for "
                                  "the config's shipped weights) to fine-tune instead of training from scratch")
    p.add_argument("--batch-size", type=positive(int), help="default: 16 (defectseg, detector), 32 (vglaw)")
    p.add_argument("--size", type=positive(int), default=256, help="training size (square, multiple of 32)")
    p.add_argument("--lr", type=positive(float), help="default: 2e-3 (defectseg, detector), 4e-4 (vglaw)")
    p.add_argument("--synthetic-count", type=positive(int), help="synthetic training samples (with --data synthetic); "
                                                        "default: 3000 (defectseg, detector), 6000 (vglaw)")
    p.add_argument("--seed", type=seed, default=0, help="seed for the train/val split, init and shuffling")
    p.add_argument("--threads", type=positive(int), default=2, help="CPU threads for torch")
    p.add_argument("--device", help="defectseg, vglaw: torch device, e.g. cuda or cpu (default: cuda when available)")
    p.add_argument("--workers", type=int, default=1,
                   help="defectseg, vglaw: processes that generate the synthetic samples and load batches")
    p.add_argument("--bf16", action="store_true", help="defectseg: bfloat16 autocast in training (~1.6x faster on "
                                                       "CPUs with AVX512-BF16/AMX and Ampere+ GPUs; refused "
                                                       "where bf16 would be emulated)")
    p.add_argument("--bit-depth", type=int, help="defectseg and detector folders: " + BIT_DEPTH_HELP)
    p.add_argument("--native-scale", action="store_true",
                   help="defectseg and detector folders: train on SIZE x SIZE windows of the images at their own "
                        "scale, as inspect and infer see them, instead of the images resized to SIZE (frames "
                        "larger than SIZE); half of a defective image's windows hold a defect")
    p.add_argument("--teacher", help="detector: trained teacher checkpoint to distill from (with --distill)")
    p.add_argument("--distill", choices=["tbd"], help="detector: distillation method (Task-Balanced Distillation)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="defectseg: CDS2K metrics + OK/NG accuracy; detector: mAP; vglaw: Prec@0.5 + "
                                    "mIoU. JSON, markdown, PNG")
    p.add_argument("model", help="defectseg, detector, vglaw or one of their configs")
    p.add_argument("--data", required=True, help="CDS2K-style folder, or `synthetic` (the held-out seed / test split)")
    p.add_argument("--checkpoint", help="last.pt/best.pt or .safetensors (default: the shipped weights)")
    p.add_argument("--config", help="config, when the checkpoint does not name it (default: defectseg-s)")
    p.add_argument("--bundle", help="defectseg: evaluate this exported bundle instead of a checkpoint, as deployed")
    p.add_argument("--backend", default="auto", help="with --bundle: onnxruntime, onnxruntime-int8, tensorrt, ...")
    p.add_argument("--out", help="results folder (default: runs/eval-CONFIG)")
    p.add_argument("--size", type=positive(int),
                   help="images are resized to SIZE x SIZE for the model (multiple of 32; default 256); "
                        "probabilities go back to mask size")
    p.add_argument("--count", type=positive(int), default=400,
                   help="held-out samples with --data synthetic (vglaw: test expressions)")
    p.add_argument("--threshold", type=float, help="NG rule: pixels with prob >= this are defect (default 0.5; "
                                                   "results.md also lists 0.1-0.9)")
    p.add_argument("--min-area", type=int, help="NG rule: a connected defect area >= this many pixels (default 16)")
    p.add_argument("--rules", help="defectseg: judge OK/NG by this rules file (regions, scores, mm², max count) "
                                   "as inspect does, instead of --threshold/--min-area")
    p.add_argument("--tiled", action="store_true", help="with --bundle: run each image as `inspect` does (own "
                                                        "scale, native-size tiles) instead of resizing to --size")
    p.add_argument("--target-recall", type=float, help="defectseg: also find the threshold and min area that catch "
                                                       "this share of defective images with the fewest false rejects")
    p.add_argument("--rules-out", help="with --target-recall: write that rule as a rules file for inspect/serve")
    p.add_argument("--bit-depth", type=int, help="defectseg: " + BIT_DEPTH_HELP)
    p.add_argument("--threads", type=positive(int), default=2, help="CPU threads for torch")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("synth", help="write a synthetic concealed-defect set in the CDS2K layout")
    p.add_argument("out", help="folder to write Positive/ and Negative/ into")
    p.add_argument("--count", type=positive(int), default=200)
    p.add_argument("--seed", type=seed, default=1, help="set seed (training uses 0, held-out evaluation 1)")
    p.add_argument("--size", type=positive(int), default=256)
    p.add_argument("--negative-fraction", type=float, default=0.3)
    p.set_defaults(func=cmd_synth)
    return parser


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    """Options shared by `edgestack export` and the root export.py."""
    p.add_argument("--config", help="config of the model (default: the model's default)")
    p.add_argument("--checkpoint", help="weights: .pth/.pt state dict or .safetensors (MAT also: official .pkl)")
    p.add_argument("--out", help="bundle folder (default: artifacts/MODEL)")
    p.add_argument("--seed", type=seed, default=0, help="seed for random weights and parity inputs")
    p.add_argument("--bench-runs", type=int, default=3, help="timed runs per backend after export (0: skip)")


@contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (systemd, docker stop) ends a command like Ctrl-C: run folders are closed, summaries written."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# Options naming a file or folder: given empty (an unset variable in a unit file or script), "" would be taken for
# the current folder or for no folder at all (inspect then recorded nothing).
PATH_OPTIONS = ("source", "bundle", "out", "data", "checkpoint", "calib", "rules", "rules_out", "repo", "image",
                "mask", "init", "token_file")


def run(argv: list[str] | None, parser: argparse.ArgumentParser) -> int:
    args = parser.parse_args(argv)
    try:
        empty = [name for name in PATH_OPTIONS if getattr(args, name, None) == ""]
        if empty:
            option = empty[0] if empty[0] in ("source", "bundle") else "--" + empty[0].replace("_", "-")
            raise EdgestackError(f"{option} is an empty path (an unset variable in a script?); give the file or "
                                 "folder")
        with _sigterm_as_interrupt():
            args.func(args)
            sys.stdout.flush()  # a closed pipe is seen here, not at exit as "Exception ignored ..."
    except EdgestackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader of our output left (`edgestack doctor --json | head`): not a file problem
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes stdout
        return 1
    except OSError as exc:  # a path the command could not read or write, outside the checks above
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}; check the path, its permissions and the free space",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(argv, build_parser())


if __name__ == "__main__":
    sys.exit(main())
