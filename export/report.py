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
    path = bundle / bundle_format.REPORT
    path.write_text(text)
    return path
