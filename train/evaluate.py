"""`edgestack eval defectseg`: a checkpoint, or an exported bundle on any runtime backend (what a line deploys:
onnxruntime fp32 or int8, TensorRT), on a CDS2K-style folder or the held-out synthetic set.

Each image is resized to SIZE x SIZE for the model and its probability map resized back to the mask's
size, as in COD benchmarking; or, with `tiled` (bundles), run as `edgestack inspect` runs it: at its own scale,
in the model's native-size tiles, so the verdicts are the line's. Metrics are edgestack.train.metrics'. Writes
results.json, results.md (with recall and S by defect size and by defect contrast, the OK/NG figures at other
thresholds, with a target recall the calibrated rule and, on the synthetic set, recall by defect kind and by
texture with each texture's false rejects) and worst.png (the worst positives by S-measure and every wrong OK/NG
verdict, worst first); with `rules_out` the calibrated rule as a rules file for `inspect`/`serve`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from edgestack.bundle import write_atomic
from edgestack.errors import EdgestackError, EngineOutputError, make_folder
from edgestack.models import resolve, resolve_recorded
from edgestack.models.checkpoints import apply_state_dict, read_checkpoint, recorded_config, state_dict_of
from edgestack.runtime.defects import check_not_blank, load_rules
from edgestack.train import synthetic
from edgestack.train.datasets import load_pair, refuse_bit_depth_for_synthetic, scan_folder, to_tensors
from edgestack.train.metrics import (
    MIN_AREA,
    RECALL_TARGETS,
    SURROUND_PX,
    THRESHOLD,
    DefectMetrics,
    area_rule,
    positives_figures,
)

ROWS = ("S", "wF", "MAE", "E_adp", "E_mean", "E_max", "F_adp", "F_mean", "F_max", "accuracy", "precision", "recall")


def load_trained(
    model_name: str, config: str | None, checkpoint: str | Path | None
) -> tuple[torch.nn.Module, str, str]:
    """(eval-mode model, config name, weights source); no checkpoint: the config's shipped weights."""
    spec, config_name = resolve(model_name, config)
    named = config not in (None, spec.name) or model_name != spec.name
    if checkpoint is None:
        shipped = spec.extras.get("default_checkpoint", {}).get(config_name)
        if not shipped or not Path(shipped).is_file():
            raise EdgestackError(f"{config_name} has no shipped weights; pass --checkpoint (a last.pt/best.pt)")
        checkpoint, named = shipped, True
    path = Path(checkpoint)
    loaded = read_checkpoint(path)  # read once, through the loader --init uses: a bad file is a clear error
    state = state_dict_of(loaded, path)
    recorded = recorded_config(loaded)
    spec, config_name = resolve_recorded(model_name, config, recorded, str(path))
    if recorded is None and not named:  # no config named anywhere (a bundle's weights.safetensors)
        config_name = _config_of_tensors(spec, state, path, config_name)
    model = spec.build(spec.configs[config_name])
    apply_state_dict(model, state, str(path))  # with a config that fits none, the mismatches listed
    return model.eval(), config_name, str(path)


def _config_of_tensors(spec, state: dict[str, torch.Tensor], path: Path, default: str) -> str:
    """The one config of `spec` whose tensors `state` holds (names and shapes); `default` when none fits (its
    load then lists the mismatches); refused when several fit (vglaw-s and vglaw-s-static differ in use only)."""
    given = {k.removeprefix("module."): v.shape for k, v in state.items()}
    fitting = [name for name in spec.configs
               if given == {k: v.shape for k, v in spec.build(spec.configs[name]).state_dict().items()}]
    if len(fitting) > 1:
        raise EdgestackError(f"{path} records no config and fits {' and '.join(fitting)} alike; pass --config")
    return fitting[0] if fitting else default


Sample = tuple[str, np.ndarray, np.ndarray | None, dict[str, Any]]  # name, image, mask, what the sample holds


def _samples(data: str, count: int, bit_depth: int | None = None) -> tuple[Iterator[Sample], list, int | None]:
    """(samples, skipped, positives: how many samples mark a defect, None where unknown before generating)."""
    refuse_bit_depth_for_synthetic(data, bit_depth)
    if data == "synthetic":
        def gen():
            for i in range(count):
                s = synthetic.make_sample(synthetic.HELDOUT_SEED, i)
                yield (f"synthetic/{synthetic.HELDOUT_SEED}/{i}", s.image, (s.mask if s.positive else None),
                       {"kinds": s.info["defects"], "texture": s.info["texture"]})
        return gen(), [], None
    scan = scan_folder(data, bit_depth=bit_depth)

    def read():
        for record in scan.records:
            image, mask = load_pair(record, bit_depth)
            yield str(record.image), image, mask, {}
    return read(), scan.skipped, scan.positives


def by_kind_and_texture(per_image: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Synthetic records: recall and S of positives per defect kind (an image with two kinds counts for both),
    and per texture also its negatives' false rejects; empty when the records carry no kinds (a folder)."""
    rows = []
    for by, groups_of in (("kind", lambda r: r["kinds"]), ("texture", lambda r: [r["texture"]])):
        for group in sorted({g for r in per_image if "kinds" in r for g in groups_of(r)}):
            members = [r for r in per_image if "kinds" in r and group in groups_of(r)]
            found = [r for r in members if r["positive"]]
            clean = [r for r in members if not r["positive"]]
            negatives = {"negatives": len(clean), "false_rejects": sum(r["predicted_ng"] for r in clean)}
            if by == "kind":  # negatives have no defect kind
                negatives = dict.fromkeys(negatives)
            rows.append({"by": by, "group": group} | positives_figures(found) | negatives)
    return rows


def checkpoint_forward(model: torch.nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    """RGB uint8 image -> probability map at its size, through the PyTorch model (training preprocessing)."""
    def forward(rgb: np.ndarray) -> np.ndarray:
        x, _ = to_tensors(rgb, np.zeros(rgb.shape[:2], np.uint8))
        with torch.no_grad():
            return model(x[None])[0, 0].numpy()

    return forward


def bundle_forward(bundle: str | Path, backend: str) -> tuple[Callable[[np.ndarray], np.ndarray], Any]:
    """(forward as checkpoint_forward's, engine) for a defect-probability bundle on `backend`, with the
    preprocessing its meta.json records, as the inspection runtime runs it."""
    from edgestack.runtime.images import to_tensor
    from edgestack.runtime.inspect import defect_engine

    engine = defect_engine(bundle, backend)
    meta = engine.meta
    output = meta["postprocess"]["output"]

    def forward(rgb: np.ndarray) -> np.ndarray:
        return engine(to_tensor(rgb, meta["preprocess"]))[output][0, 0]

    return forward, engine


def predict(forward: Callable[[np.ndarray], np.ndarray], image: np.ndarray, size: int) -> np.ndarray:
    """Probability map at the image's own size, the model run at size x size."""
    resized = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    prob = forward(resized)
    return cv2.resize(prob, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)


def bucket_table(rows: list[dict[str, Any]], key: str, heading: str, edge: str) -> list[str]:
    """Markdown rows of DefectMetrics' by_area / by_contrast buckets; `edge` formats a bucket edge."""
    lines = [f"| {heading} | positives | recall | S |", "|---|---|---|---|"]
    for row in rows:
        low, high = edge.format(row[f"{key}_from"]), row[f"{key}_to"]
        span = f"{low} to {edge.format(high)}" if high is not None else f"{low} and more"
        lines.append(f"| {span} | {row['positives']} | {row['recall']:.3f} | {row['S']:.3f} |")
    return lines


def markdown(results: dict[str, Any], title: str, by_area: list[dict[str, Any]],
             operating_points: list[dict[str, Any]], by_group: list[dict[str, Any]],
             calibration: dict[str, Any] | None = None, trade_off: list[dict[str, Any]] | None = None,
             by_contrast: list[dict[str, Any]] | None = None, skipped: list[tuple[str, str]] | None = None) -> str:
    lines = [f"# {title}", ""]
    if skipped:  # the figures below leave them out: said where they are read, not only in results.json
        lines += [f"**{len(skipped)} image(s) skipped, without a verdict (listed in results.json):** "
                  + "; ".join(f"{Path(name).name}: {reason}" for name, reason in skipped[:3])
                  + (" ..." if len(skipped) > 3 else ""), ""]
    lines += ["| metric | value |", "|---|---|"]
    lines += [f"| {key} | {results[key]:.4f} |" for key in ROWS if key in results]
    lines += ["", f"{results['positives']} positives, {results['negatives']} negatives; confusion (NG = positive "
              f"class): TP {results['tp']}, FP {results['fp']}, FN {results['fn']}, TN {results['tn']}.",
              (f"OK/NG rule: the rules file, as inspect applies it: {json.dumps(results['rules'])}."
               if "rules" in results else
               f"OK/NG rule: NG when a connected area (8-connected) of prob >= {results['threshold']} covers "
               f">= {results['min_area']} pixels at the image's own size.") +
              " Pixel metrics (pysodmetrics) on positives."]
    if by_area:
        lines += ["", *bucket_table(by_area, "area", "defect area (share of image)", "{:.1%}")]
    if by_contrast:
        lines += ["", "Defect contrast: |mean gray level in the defect - mean within "
                  f"{SURROUND_PX} px around it| / std around it (concealed defects are low).", "",
                  *bucket_table(by_contrast, "contrast", "defect contrast", "{:g}")]
    lines += ["", f"Operating points: NG when a connected area of prob >= t covers >= {results['min_area']} px, at "
              "thresholds t (regions, min score, mm² and max count of a rules file are not applied here, nor in "
              "the calibration), to choose `threshold` in a line's rules file.", "",
              "| threshold | recall | precision | accuracy | missed (FN) | false rejects (FP) |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {p['threshold']:.1f} | {p['recall']:.3f} | {p['precision']:.3f} | {p['accuracy']:.3f} | {p['fn']} | "
              f"{p['fp']} |" for p in operating_points]
    if trade_off:
        lines += ["", "Recall against false rejects: for each target, the rule with the fewest false rejects that "
                  "reaches it (what `--target-recall` would choose).", "",
                  "| recall target | threshold | min area px | recall | precision | missed (FN) | false rejects (FP) |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {c['target_recall']:g} | {c['threshold']} | {c['min_area_px']} | {c['recall']:.3f} | "
                  f"{c['precision']:.3f} | {c['fn']} | {c['fp']} |" if c["reachable"] else
                  f"| {c['target_recall']:g} | out of reach (best recall {c['best_recall']:.3f}) | - | - | - | - | - |"
                  for c in trade_off]
    if calibration and calibration["reachable"]:
        c = calibration
        lines += ["", f"Calibrated for recall >= {c['target_recall']:g} (fewest false rejects over thresholds "
                  f"0.05-0.95 and every min area): threshold {c['threshold']}, min_area_px {c['min_area_px']} (margin "
                  f"{c['margin']}x: the middle of the min areas that score alike here): recall "
                  f"{c['recall']:.3f}, precision {c['precision']:.3f}, accuracy {c['accuracy']:.3f}, missed "
                  f"{c['fn']}, false rejects {c['fp']}. Chosen on these images: check it on others before a line "
                  "relies on it."]
    elif calibration:
        lines += ["", f"Recall >= {calibration['target_recall']:g} is out of reach here: at min area 1 px the best "
                  f"threshold finds {calibration['best_recall']:.3f} of the positives."]
    if by_group:
        def cell(value: Any) -> str:
            return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)

        lines += ["", "Synthetic set by defect kind and by texture (an image with two kinds counts for both):", "",
                  "| by | group | positives | recall | S | negatives | false rejects |", "|---" * 7 + "|"]
        lines += ["| " + " | ".join(cell(r[k]) for k in ("by", "group", "positives", "recall", "S", "negatives",
                                                         "false_rejects")) + " |" for r in by_group]
    return "\n".join(lines) + "\n"


def worst_grid(cases: list[tuple[np.ndarray, np.ndarray | None, np.ndarray, str]], path: Path, cell: int = 192) -> None:
    """Rows of image | ground truth | probability (inferno), with the case's label drawn on the image."""
    rows = []
    for image, mask, prob, label in cases:
        def fit(a: np.ndarray) -> np.ndarray:
            return cv2.resize(a, (cell, cell), interpolation=cv2.INTER_AREA)

        shown = fit(image).copy()
        cv2.putText(shown, label, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 0), 1, cv2.LINE_AA)
        gt = np.zeros(image.shape[:2], np.uint8) if mask is None else mask
        heat = cv2.cvtColor(cv2.applyColorMap((prob * 255).astype(np.uint8), cv2.COLORMAP_INFERNO), cv2.COLOR_BGR2RGB)
        rows.append(np.hstack([shown, np.repeat(fit(gt)[:, :, None], 3, axis=2), fit(heat)]))
    from edgestack.runtime.images import write_image

    write_image(path, np.vstack(rows) if rows else np.zeros((cell, 3 * cell, 3), np.uint8))


CALIBRATED_KEYS = ("threshold", "min_area_px", "min_score")  # what --rules-out writes


def check_rules_out(path: Path) -> None:
    """An existing --rules-out is replaced only when it holds what calibration writes: regions, mm² sizes or
    counts added to it since (as the README says to) would be dropped in silence, and any other file lost."""
    if not path.exists():
        return
    try:
        rules = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        rules = None
    if not isinstance(rules, dict) or set(rules) - set(CALIBRATED_KEYS):
        raise EdgestackError(f"--rules-out {path} exists and holds more than a calibrated rule (regions, mm² "
                             "sizes, counts, or no rules file at all), which the new file would drop; write it to "
                             "another path and carry the new threshold, min_area_px and min_score over by hand")


def evaluate_defects(
    model_name: str = "defectseg", config: str | None = None, data: str = "synthetic",
    checkpoint: str | Path | None = None, out: str | Path | None = None, size: int = 256, count: int = 400,
    min_area: int | None = None, threads: int = 2, worst: int = 8, threshold: float | None = None,
    bundle: str | Path | None = None, backend: str = "auto", tiled: bool = False,
    target_recall: float | None = None, rules_out: str | Path | None = None, rules: str | Path | None = None,
    bit_depth: int | None = None,
) -> tuple[dict[str, Any], dict[str, Path]]:
    """Evaluate a checkpoint, or with `bundle` an exported bundle on `backend` (`tiled`: as inspect runs it);
    `rules`: judge OK/NG by that rules file instead of `threshold`/`min_area` (default 0.5 and 16 px, the
    module's rule in edgestack.train.metrics); with `target_recall`, also
    calibrate the NG rule (`rules_out`: write it); `bit_depth`: of 16-bit camera images in the folder, as inspect
    takes it. Returns (results, written paths)."""
    if rules is not None and (threshold is not None or min_area is not None):
        raise EdgestackError("--rules sets the OK/NG rule; drop --threshold/--min-area (or edit the rules file)")
    threshold = THRESHOLD if threshold is None else threshold
    min_area = MIN_AREA if min_area is None else min_area
    if size % 32 or size < 64:
        raise EdgestackError(f"--size must be a multiple of 32 and at least 64, got {size}")
    if not 0.0 < threshold < 1.0:
        raise EdgestackError(f"--threshold must be in (0, 1), got {threshold}")
    if data == "synthetic" and count < 1:
        raise EdgestackError(f"--count must be at least 1, got {count}")
    if target_recall is not None and not 0.0 < target_recall <= 1.0:
        raise EdgestackError(f"--target-recall must be in (0, 1], got {target_recall}")
    if rules_out is not None and target_recall is None:
        raise EdgestackError("--rules-out writes the rule calibrated for --target-recall; pass --target-recall too")
    if rules_out is not None and rules is not None:  # the written file would drop the line's rois, mm², counts
        raise EdgestackError("--rules-out writes a threshold and min area calibrated over whole frames, which a rules "
                             "file's regions, mm² sizes and counts would change; calibrate without --rules, then "
                             "add your other keys to the written file and check it with `eval --rules`")
    if rules_out is not None and not tiled:  # a rule calibrated on resized frames misses its recall in inspect
        raise EdgestackError("--rules-out writes a rule for inspect, which runs frames at their own scale in tiles; "
                             "calibrate it as inspect runs: pass --tiled with --bundle (export a checkpoint with "
                             "`edgestack export defectseg --checkpoint CKPT` first)")
    if tiled and bundle is None:
        raise EdgestackError("--tiled runs an exported bundle as `edgestack inspect` does; pass --bundle")
    if rules_out is not None:
        check_rules_out(Path(rules_out))
    line_rules = load_rules(rules) if rules is not None else None
    torch.set_num_threads(threads)
    if bundle is not None:
        if checkpoint is not None or config is not None:
            raise EdgestackError("--bundle evaluates the bundle's own weights; drop --checkpoint/--config")
        forward, engine = bundle_forward(bundle, backend)
        config_name = engine.meta["model"]["config"]
        source = f"bundle {bundle}, {engine.backend.name} ({engine.backend.device})"
        if model_name not in (engine.meta["model"]["name"], config_name):
            raise EdgestackError(f"bundle {bundle} holds {config_name}, not {model_name}; evaluate it as "
                                 f"`edgestack eval {config_name} --bundle {bundle}`")
    else:
        model, config_name, source = load_trained(model_name, config, checkpoint)
        forward = checkpoint_forward(model)
    if tiled:
        from edgestack.runtime.inspect import Inspector

        inspector = Inspector(engine)
        probability = inspector.probability
        scale = "own scale, {}x{} tiles as inspect runs them".format(*inspector.tile)
    else:
        def probability(image: np.ndarray) -> np.ndarray:
            return predict(forward, image, size)
        scale = f"{size}x{size}"
    metrics = DefectMetrics(threshold, min_area, sweep_thresholds=True, rules=line_rules)
    samples, skipped, positives = _samples(data, count, bit_depth)
    if target_recall is not None and positives == 0:
        raise EdgestackError(f"--target-recall needs images of defective parts with their masks; no mask under "
                             f"{data} marks a defect, so there is no recall to calibrate")
    out = Path(out) if out else Path("runs") / f"eval-{config_name}"
    make_folder(out, "results folder")  # before the evaluation, not after it
    kept: list[tuple[float, tuple]] = []  # (badness, case) of the worst cases so far
    for name, image, mask, holds in samples:
        try:  # judged as inspect judges it: a frame too small for --tiled, a blank one, or one that no region of
            # interest of the rules meets gets no verdict there, so none here either (reported, not counted)
            prob = probability(image)
            check_not_blank(image, metrics.rules, name)
            record = metrics.update(prob, mask, name, image)  # assess refuses before it counts anything
        except EngineOutputError:  # NaN/Inf maps: the bundle is broken (an overflowing plan), not this frame
            raise
        except EdgestackError as exc:
            skipped.append((name, str(exc)))
            continue
        record |= holds  # the record in metrics.per_image itself
        wrong = record["predicted_ng"] != record["positive"]
        badness = (1.0 if wrong else 0.0) + (1 - record.get("S", 1.0))
        label = f"{'NG' if record['positive'] else 'OK'}->{'NG' if record['predicted_ng'] else 'OK'}" + (
            f" S={record['S']:.2f}" if "S" in record else f" max={record['max_prob']:.2f}")
        kept = sorted(kept + [(badness, (image, mask, prob, label))], key=lambda k: -k[0])[:worst]
    results = metrics.results()
    title = f"{config_name} on {data} ({source}, {scale})"
    calibration = metrics.calibrate(target_recall) if target_recall is not None and results["positives"] else None
    trade_off = [metrics.calibrate(t) for t in RECALL_TARGETS] if results["positives"] else []
    report = {"title": title, "config": config_name, "checkpoint": source, "data": data,
              "size": None if tiled else size, "tiled": tiled, "results": results, "by_area": metrics.by_area(),
              "by_contrast": metrics.by_contrast(),
              "operating_points": metrics.operating_points(), "calibration": calibration, "trade_off": trade_off,
              "by_kind_and_texture": by_kind_and_texture(metrics.per_image), "skipped": skipped,
              "per_image": metrics.per_image}
    paths = {"json": out / "results.json", "markdown": out / "results.md", "worst": out / "worst.png"}
    paths["json"].write_text(json.dumps(report, indent=2))
    paths["markdown"].write_text(markdown(results, title, report["by_area"], report["operating_points"],
                                          report["by_kind_and_texture"], calibration, trade_off,
                                          report["by_contrast"], skipped))
    worst_grid([case for _, case in kept], paths["worst"])
    if target_recall is not None and calibration is None:  # every positive was skipped: the figures are kept
        raise EdgestackError(f"--target-recall: no image of a defective part in {data} was evaluated "
                             f"({len(skipped)} skipped, listed in {paths['json']}), so there is no recall to "
                             f"calibrate{'; ' + str(rules_out) + ' not written' if rules_out else ''}")
    if rules_out is not None:
        if not calibration["reachable"]:
            raise EdgestackError(
                f"no rule reaches recall {target_recall:g} on {data}: the best threshold finds "
                f"{calibration['best_recall']:.3f} of the positives even at min area 1 px; {rules_out} not written "
                f"(figures in {paths['markdown']}). Lower --target-recall, or fine-tune on this line's images "
                "(edgestack train defectseg --data DIR --init shipped)")
        if not results["negatives"]:  # the fewest false rejects of no good part: any rule, never checked
            raise EdgestackError(f"--rules-out: no image of a good part in {data} was evaluated, so the rule's false "
                                 f"rejects are unknown; {rules_out} not written (figures in {paths['markdown']}). "
                                 "Add good parts: Negative/Image, or images whose masks are all black")
        paths["rules"] = Path(rules_out)
        chosen = area_rule(calibration["threshold"], calibration["min_area_px"])  # the rule it was calibrated as
        rule = {key: getattr(chosen, key) for key in CALIBRATED_KEYS}
        try:
            paths["rules"].parent.mkdir(parents=True, exist_ok=True)
            write_atomic(paths["rules"], (json.dumps(rule, indent=2) + "\n").encode())  # the old rules or the new
        except OSError as exc:
            raise EdgestackError(f"cannot write the rules file {rules_out}: {exc.strerror}; pass a writable path "
                                 "to --rules-out") from None
    return results, paths
