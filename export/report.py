"""report.md of a bundle: what was exported, parity figures, and latency when measured."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgestack import bundle as bundle_format


def parity_table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| flavour | size | max abs | max abs / max ref | rel L2 | argmax agreement | passed |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        agreement = f"{r['argmax_agreement'] * 100:.4f}%" if "argmax_agreement" in r else "-"
        lines.append(
            f"| {r['flavour']} | {r['height']}x{r['width']} | {r['max_abs']:.3g} | {r['max_abs_over_max_ref']:.3g} | "
            f"{r['rel_l2']:.3g} | {agreement} | {'yes' if r['passed'] else 'NO'} |"
        )
    return "\n".join(lines)


def write_report(bundle: Path, meta: dict[str, Any], latency_markdown: str | None = None) -> Path:
    model = meta["model"]
    weights = "random (no checkpoint given)" if meta["weights"]["random"] else meta["weights"]["checkpoint"]
    io = "\n".join(
        f"- {kind} `{s['name']}`: {s['dtype']} {s['shape']}" for kind, group in (("input", meta["inputs"]),
                                                                                 ("output", meta["outputs"]))
        for s in group
    )
    text = (
        f"# {model['config']} ({model['task']})\n\n"
        f"Weights: {weights}. Precision: {meta['precision']}. ONNX opset {meta['onnx']['opset']}.\n\n"
        f"{io}\n\n"
        f"Plugin nodes in `{bundle_format.PLUGINS_ONNX}`: {meta['onnx']['plugin_nodes']}\n\n"
        f"## Parity vs PyTorch (fp32, random inputs)\n\nTolerance: {meta['parity']['tolerance']}\n\n"
        f"{parity_table(meta['parity']['results'])}\n"
    )
    if latency_markdown:
        text += f"\n## Latency\n\n{latency_markdown}\n"
    if "int8" in meta:
        text += int8_section(meta)
    path = bundle / bundle_format.REPORT
    path.write_text(text)
    return path


def write_graphs_report(bundle: Path, meta: dict[str, Any]) -> Path:
    """report.md of a multi-graph bundle: each graph's io and parity (its own report.md has the details)."""
    model = meta["model"]
    weights = "random (no checkpoint given)" if meta["weights"]["random"] else meta["weights"]["checkpoint"]
    text = f"# {model['config']} ({model['task']})\n\nWeights: {weights}. Precision: {meta['precision']}.\n"
    for name, graph in meta["graphs"].items():
        io = "\n".join(f"- {kind} `{s['name']}`: {s['dtype']} {s['shape']}" for kind, group in
                       (("input", graph["inputs"]), ("output", graph["outputs"])) for s in group)
        parity = meta["parity"][name]
        text += (f"\n## Graph `{name}` (bundle in `{graph['folder']}/`)\n\n{io}\n\nParity vs PyTorch (fp32, random "
                 f"inputs), tolerance {parity['tolerance']}:\n\n{parity_table(parity['results'])}\n")
    path = bundle / bundle_format.REPORT
    path.write_text(text)
    return path


INT8_HEADING = "\n## INT8 (Q/DQ) vs fp32"


def int8_section(meta: dict[str, Any]) -> str:
    """The int8 section of report.md (always last, so `update_int8_section` can replace it)."""
    record = meta["int8"]
    cal, figures = record["calibration"], record["parity_vs_fp32"]
    rows = [("max abs / max ref", f"{figures['max_abs_over_max_ref']:.3g}"), ("rel L2", f"{figures['rel_l2']:.3g}")]
    if "argmax_agreement" in figures:
        rows += [("argmax agreement", f"{figures['argmax_agreement']:.2%}"),
                 ("mIoU int8 vs fp32 argmax (mIoU-drop proxy, no labels)", f"{figures['miou_vs_fp32']:.4f}")]
    if "psnr_db_vs_fp32" in figures:
        rows.append(("PSNR vs fp32 output", f"{figures['psnr_db_vs_fp32']:.2f} dB"))
    if "fp32_detections_kept" in figures:
        rows += [(f"fp32's {figures['detections_fp32']} detections int8 also makes (same class, IoU >= 0.5)",
                  f"{figures['fp32_detections_kept']:.2%}"),
                 (f"int8's {figures['detections']} detections fp32 also makes",
                  f"{figures['detections_in_fp32']:.2%}")]
    table = "\n".join(["| figure | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows])
    return (
        f"{INT8_HEADING}\n\n`{record['file']}`: activations {record['quantization']['activations']}; weights "
        f"{record['quantization']['weights']} ({record['quantization']['qdq_nodes']} Q/DQ nodes). "
        f"Calibration: {cal['samples']} images at {cal['size'][0]}x{cal['size'][1]} from {cal['source']}. "
        f"Compared on {figures['images']} images ({figures['source']}), onnxruntime CPU.\n\n{table}\n"
        + "".join(f"\n**Warning:** {warning}\n" for warning in record.get("warnings", []))
    )


def update_int8_section(bundle: Path, meta: dict[str, Any]) -> None:
    """Replace (or add) the int8 section of an existing report.md, keeping everything before it."""
    path = bundle / bundle_format.REPORT
    text = path.read_text() if path.is_file() else ""
    path.write_text(text.split(INT8_HEADING)[0].rstrip("\n") + "\n" + int8_section(meta))
