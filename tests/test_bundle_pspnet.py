"""End to end on pspnet-r18: export both flavours, parity at 473x473 and 375x500, runtime, CLI, bench."""

import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch

from edgestack import bundle as bundle_format
from edgestack.cli import main
from edgestack.errors import EdgestackError
from edgestack.runtime import load
from edgestack.runtime.bench import markdown_table
from edgestack.runtime.images import to_tensor


@pytest.fixture(scope="module")
def bundle(pspnet_bundle):
    return pspnet_bundle


@pytest.fixture
def image_file(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "scene.png"
    cv2.imwrite(str(path), rng.integers(0, 255, (120, 160, 3), dtype=np.uint8))
    return path


def test_bundle_files_meta_and_parity(bundle):
    meta = json.loads((bundle / "meta.json").read_text())
    assert set(meta["files"]) == {"model.onnx", "model.plugins.onnx", "weights.safetensors"}
    assert meta["onnx"]["plugin_nodes"] == {"EdgePyramidPooling": 1}
    assert meta["onnx"]["portable_custom_nodes"] == {}
    results = meta["parity"]["results"]
    assert {(r["flavour"], r["height"], r["width"]) for r in results} == {
        (f, h, w) for f in ("portable", "plugins") for h, w in ((473, 473), (375, 500))
    }
    for r in results:
        assert r["passed"] and r["max_abs_over_max_ref"] <= 1e-4 and r["argmax_agreement"] >= 0.9999
    assert "Parity vs PyTorch" in (bundle / "report.md").read_text()


def test_both_onnx_flavours_pass_checker_with_dynamic_axes(bundle):
    portable = onnx.load(str(bundle / "model.onnx"))
    plugins = onnx.load(str(bundle / "model.plugins.onnx"))
    for proto in (portable, plugins):
        onnx.checker.check_model(proto)
        dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
        assert dims == ["batch", 3, "height", "width"]
    assert not [n for n in portable.graph.node if n.domain not in ("", "ai.onnx")]
    assert not [n for n in portable.graph.node if n.op_type in ("Dropout", "BatchNormalization")]
    (node,) = [n for n in plugins.graph.node if n.op_type == "EdgePyramidPooling"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs == {"bins": [1, 2, 3, 6], "align_corners": 1, "plugin_version": b"1"}
    assert len(node.input) == 3  # x, folded weights, folded bias


def test_portable_onnx_is_exact_at_sizes_no_bin_divides(bundle):
    engine = load(bundle, backend="onnxruntime")
    torch_engine = load(bundle, backend="torch")
    x = np.random.default_rng(1).standard_normal((2, 3, 97, 131)).astype(np.float32)
    got, want = engine(x)["logits"], torch_engine(x)["logits"]
    assert got.shape == (2, 150, 97, 131)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_engine_checks_inputs(bundle):
    engine = load(bundle)
    with pytest.raises(EdgestackError, match="must have shape"):
        engine(np.zeros((1, 4, 97, 97), np.float32))
    with pytest.raises(EdgestackError, match="outside the model's allowed range"):
        engine(np.zeros((1, 3, 33, 97), np.float32))
    with pytest.raises(EdgestackError, match="NaN"):
        engine(np.full((1, 3, 97, 97), np.nan, np.float32))
    with pytest.raises(EdgestackError, match="missing inputs"):
        engine()
    with pytest.raises(EdgestackError, match="input 'image' cannot be read as an array"):
        engine([[[[0.0]]], [[[0.0, 1.0]]]])  # ragged
    with pytest.raises(EdgestackError, match=r"input 'image' cannot be read .*bfloat16 has no numpy type: \.float"):
        engine(torch.zeros((1, 3, 97, 97), dtype=torch.bfloat16))
    with pytest.raises(EdgestackError, match="a bundle is the path of its folder .*got NoneType"):
        load(None)
    with pytest.raises(EdgestackError, match="input 'image' has dtype <U1"):
        engine(np.full((1, 3, 97, 97), "x"))
    for raw in (np.full((1, 3, 97, 97), 128, np.uint8), np.ones((1, 3, 97, 97), bool)):  # pixel levels: 255x off
        with pytest.raises(EdgestackError, match=f"takes float32 values, got {raw.dtype}; pass the preprocessed"):
            engine(raw)
    with pytest.raises(EdgestackError, match=r"NaN or Inf values \(as float32\)"):
        engine(np.full((1, 3, 97, 97), 1e300))  # finite in float64, Inf once cast
    # Pixel levels as float passed, read as a frame 255x too bright; to_tensor took any array as uint8 RGB.
    frame = np.random.default_rng(0).integers(30, 200, (97, 97, 3), dtype=np.uint8)
    with pytest.raises(EdgestackError, match=r"input 'image' holds 30\.\.199, far outside the -2.12..2.64 its "):
        engine(frame.transpose(2, 0, 1)[None].astype(np.float32))
    engine(to_tensor(frame, engine.meta["preprocess"]))  # as it should be given
    for wrong in (frame / 255.0, frame.astype(np.uint16) * 257, frame[..., 0]):  # 255x dark, 257x bright, gray
        with pytest.raises(EdgestackError, match="to_tensor takes an RGB uint8 HxWx3 array, got .*; read_image"):
            to_tensor(wrong, engine.meta["preprocess"])


def test_engine_takes_torch_tensors(bundle):
    """A tensor straight from a torch pipeline (here one that requires grad) gives what its numpy copy gives."""
    engine = load(bundle, backend="onnxruntime")
    x = torch.randn(1, 3, 97, 97, requires_grad=True)
    np.testing.assert_array_equal(engine(x)["logits"], engine(x.detach().numpy())["logits"])


def test_infer_cli_writes_overlay(bundle, image_file, tmp_path, capsys):
    out = tmp_path / "seg.png"
    assert main(["infer", str(bundle), str(image_file), "--out", str(out)]) == 0
    overlay = cv2.imread(str(out))
    assert overlay.shape == (120, 160, 3)
    assert "top classes" in capsys.readouterr().out


def test_infer_reads_a_12_bit_camera_image_with_its_bit_depth(bundle, tmp_path, capsys):
    image = np.random.default_rng(0).integers(0, 4096, (96, 128, 3), dtype=np.uint16)  # 12-bit data, 16-bit file
    cv2.imwrite(str(tmp_path / "mono12.png"), image)
    assert main(["infer", str(bundle), str(tmp_path / "mono12.png"), "--out", str(tmp_path / "o.png")]) == 2
    assert "Pass the camera's bit depth: --bit-depth 12" in capsys.readouterr().err
    assert main(["infer", str(bundle), str(tmp_path / "mono12.png"), "--out", str(tmp_path / "o.png"),
                 "--bit-depth", "12"]) == 0


def write_case(folder, case):
    path = folder / (f"{case}.tiff" if case == "float" else f"{case}.png")
    if case == "corrupt":
        path.write_bytes(b"not a png")
    elif case == "gray":
        cv2.imwrite(str(path), np.zeros((100, 100), np.uint8))
    elif case == "small":
        cv2.imwrite(str(path), np.zeros((20, 30, 3), np.uint8))
    elif case == "float":
        cv2.imwrite(str(path), np.full((100, 100, 3), 0.5, np.float32))
    elif case == "wide":
        cv2.imwrite(str(path), np.zeros((100, 2100, 3), np.uint8))
    return path


@pytest.mark.parametrize(
    "case, message",
    [("missing", "does not exist"), ("corrupt", "could not be decoded"), ("gray", "grayscale"),
     ("small", "at least 65x65"), ("float", "holds float32 pixels; save it as an 8- or 16-bit"),
     ("wide", "wide.png is 2100x100: width=2100 is outside the model's allowed range 65..2049; resize or crop")],
)
def test_bad_images_are_clear_errors(bundle, tmp_path, capsys, case, message):
    path = write_case(tmp_path, case)
    assert main(["infer", str(bundle), str(path), "--out", str(tmp_path / "o.png")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "o.png").exists()


def test_tampered_or_missing_bundle_files_are_refused(bundle, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    data = bytearray((copy / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(EdgestackError, match="sha256"):
        load(copy)
    (copy / "model.onnx").unlink()
    with pytest.raises(EdgestackError, match="missing model.onnx"):
        load(copy)
    with pytest.raises(EdgestackError, match="not an edgestack bundle"):
        load(tmp_path / "nothing-here")


def test_the_torch_backend_refuses_a_bundle_of_other_settings(bundle, tmp_path):
    # The torch backend builds the network from this edgestack's config: a bundle from a version that built it
    # otherwise (pspnet halved its first dilated block, with the same shapes) ran another network than its ONNX.
    copy = tmp_path / "earlier"
    shutil.copytree(bundle, copy)
    meta = bundle_format.read_meta(copy)
    settings = {key: value for key, value in meta["model"]["settings"].items() if key != "dilations"}
    bundle_format.write_meta(copy, meta | {"model": meta["model"] | {"settings": settings}})
    with pytest.raises(EdgestackError, match=r"exported with other pspnet-r18 settings than this edgestack builds "
                                             r"\(dilations\); run it on onnxruntime"):
        load(copy, backend="torch")
    assert load(copy, backend="onnxruntime").backend.name == "onnxruntime"


def test_a_bundle_is_readable_by_the_accounts_that_deploy_it(bundle, monkeypatch):
    # safetensors' save_file made weights.safetensors readable by its owner alone, and every load hashes every
    # file: a bundle exported by CI, or by root in a Dockerfile, loaded for no other account, on any backend.
    umask = os.umask(0)
    os.umask(umask)
    for path in bundle.iterdir():
        if path.is_file():
            assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path.name

    def unreadable(path):  # as an account without read permission finds it (root reads anything)
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(bundle_format, "sha256", unreadable)
    with pytest.raises(EdgestackError, match=r"cannot read bundle file .* \(Permission denied\); make the bundle "
                                             r"readable by this account \(chmod -R a\+rX\)"):
        load(bundle)


@pytest.mark.parametrize("edit, message", [
    (lambda m: [1, 2], "holds a JSON list, not a bundle description"),
    (lambda m: m | {"files": {}}, "no sha256 listing of its files"),  # would skip every integrity check
    (lambda m: {k: v for k, v in m.items() if k != "model"}, "no model name and config"),
    (lambda m: {k: v for k, v in m.items() if k != "inputs"}, "no inputs"),
    (lambda m: m | {"inputs": [m["inputs"][0] | {"dtype": "float99"}]}, "lacks a name, a shape or a dtype of"),
    (lambda m: m | {"axes": m["axes"] | {"height": m["axes"]["height"] | {"multiple_of": 0}}}, "axis height"),
    # Valid edits that would change every result, or crash later: refused by meta.json's own sha256.
    (lambda m: m | {"preprocess": m["preprocess"] | {"mean": [0.0, 0.0, 0.0]}}, "content does not match"),
    (lambda m: {k: v for k, v in m.items() if k != "postprocess"}, "content does not match"),
    (lambda m: {k: v for k, v in m.items() if k != "meta_sha256"}, "content does not match"),
])
def test_an_edited_meta_json_is_refused(bundle, tmp_path, edit, message):
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    (copy / "meta.json").write_text(json.dumps(edit(json.loads((copy / "meta.json").read_text()))))
    with pytest.raises(EdgestackError, match=f"{message}.*re-export the bundle"):
        load(copy, backend="onnxruntime")


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
@pytest.mark.parametrize("edit", [{"dtype": "float16"}, {"dtype": "int64"}, {"name": "img"}])
def test_an_edited_input_declaration_is_refused_on_load(bundle, tmp_path, backend, edit):
    # Valid on its own, so only the graph (or the registry's model) can tell; it used to fail at the first run.
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    meta = json.loads((copy / "meta.json").read_text())
    meta["inputs"][0] |= edit
    bundle_format.write_meta(copy, meta)  # signed, as a buggy export would write it: the graph still disagrees
    with pytest.raises(EdgestackError, match=r"meta.json declares inputs and outputs .* \(meta.json edited\?\)"):
        load(copy, backend=backend)


def test_only_files_meta_json_records_are_run(bundle, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    shutil.copyfile(copy / "model.onnx", copy / "model.int8.onnx")  # dropped in by hand: no sha256 to check
    with pytest.raises(EdgestackError, match="has a model.int8.onnx that meta.json does not record"):
        load(copy, backend="onnxruntime-int8")
    meta = json.loads((copy / "meta.json").read_text())
    meta["model"]["config"] = "pspnet-r50"  # the weights and settings are pspnet-r18's
    bundle_format.write_meta(copy, meta)
    with pytest.raises(EdgestackError, match="exported with other pspnet-r50 settings .*or re-export it"):
        load(copy, backend="torch")
    from edgestack.models import resolve

    spec, _ = resolve("pspnet-r50")
    meta["model"]["settings"] = json.loads(json.dumps(spec.configs["pspnet-r50"]))  # the weights alone differ
    bundle_format.write_meta(copy, meta)
    with pytest.raises(EdgestackError, match="its weights do not fit pspnet-r50 .*re-export the bundle"):
        load(copy, backend="torch")


def test_export_never_replaces_a_folder_that_is_not_a_bundle(bundle, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    (work / "runs" / "line3").mkdir(parents=True)
    (work / "runs" / "line3" / "best.pt").write_bytes(b"checkpoint")
    (work / "notes.txt").write_text("keep me")
    (work / "link").symlink_to(work / "runs")
    monkeypatch.chdir(work)
    (work / "fake").mkdir()
    (work / "fake" / "meta.json").write_text("{}")  # a meta.json, but no bundle's
    for out, message in [(".", "is the working folder or one above it"), ("..", "is the working folder or one above"),
                         ("runs/line3", "holds files and is no edgestack bundle"), ("notes.txt", "is a file"),
                         ("link", "is a link"), ("fake", "holds files and is no edgestack bundle")]:
        assert main(["export", "pspnet-r18", "--out", out, "--bench-runs", "0"]) == 2
        assert message in capsys.readouterr().err
    assert (work / "notes.txt").read_text() == "keep me" and (work / "runs" / "line3" / "best.pt").is_file()
    shutil.copytree(bundle, work / "earlier")  # an earlier bundle is replaced, as a re-export should
    (work / "earlier" / "best.pt").write_bytes(b"fine-tuned")  # ... but not what else was put in it
    (work / "earlier" / "bench").mkdir()
    assert main(["export", "pspnet-r18", "--out", "earlier", "--bench-runs", "0"]) == 2
    assert "is an earlier bundle but also holds bench, best.pt, which the new bundle would delete" in \
        capsys.readouterr().err
    assert (work / "earlier" / "best.pt").read_bytes() == b"fine-tuned"
    shutil.rmtree(work / "earlier" / "bench")
    (work / "earlier" / "best.pt").unlink()
    meta = json.loads((work / "earlier" / "meta.json").read_text())
    (work / "earlier" / "meta.json").write_text(json.dumps(meta | {"schema_version": 1}))  # an older edgestack's
    assert main(["export", "pspnet-r18", "--out", "earlier", "--bench-runs", "0"]) == 0


def test_bench_writes_json_markdown_and_plot(bundle, tmp_path):
    out = tmp_path / "bench"
    assert main(["bench", str(bundle), "--backends", "torch,auto", "--sizes", "97x97",
                 "--batches", "1,2", "--warmup", "1", "--runs", "3", "--out", str(out)]) == 0
    data = json.loads((out / "latency.json").read_text())
    rows = data["results"]
    # auto is recorded as the backend it chose (onnxruntime here), with what was asked for beside it.
    assert {(r["backend"], r["batch"]) for r in rows} == {(b, n) for b in ("torch", "onnxruntime") for n in (1, 2)}
    assert [r.get("requested") for r in rows] == [None, None, "auto", "auto"]
    for r in rows:
        assert 0 < r["median_ms"] <= r["p90_ms"] <= r["p99_ms"] and r["runs"] == 3 and r["warmup"] == 1
    table = (out / "latency.md").read_text()
    assert "1 warm-up and 3 timed runs per case" in table
    assert "| onnxruntime (auto) |" in table  # told apart from an onnxruntime run asked for by name
    assert {s["backend"] for s in data["speedups"]} == {"onnxruntime (auto)"}
    failed = {"model": "m", "backend": "tensorrt", "device": "cuda", "batch": 2, "height": 97, "width": 131,
              "error": "RuntimeError: out of memory"}
    assert "| m | tensorrt | cuda | 2 | 97x131 | failed: RuntimeError: out of memory |" in markdown_table([failed])
    assert (out / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_times_mat_on_inputs_its_engine_takes(mat_edge_bundle):
    # The benchmark's random image was normal noise; MAT's engine refuses an image far outside its -1..1, so its
    # latency table (the quickstart's export) held only failures, and `edgestack build` would fail its plan check.
    from edgestack.runtime.bench import bench_bundle

    records = bench_bundle(mat_edge_bundle, ["onnxruntime"], [1], [(256, 256)], warmup=1, runs=1)
    assert len(records) == 1 and "error" not in records[0] and records[0]["median_ms"] > 0


def test_export_with_a_wrong_checkpoint_leaves_no_bundle(tmp_path, capsys):
    bad = tmp_path / "bad.pth"
    torch.save({"conv.weight": torch.zeros(3)}, bad)
    assert main(["export", "pspnet-r18", "--checkpoint", str(bad), "--out", str(tmp_path / "b")]) == 2
    assert "missing keys" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_a_re_export_swaps_the_whole_bundle_in_even_when_stopped(tmp_path, monkeypatch):
    # The old bundle was deleted file by file before the new one took its name: a kill then left a part of it
    # without meta.json, which the next export refused as "no edgestack bundle".
    import signal

    from edgestack.export.pipeline import _foreign_entries

    out = tmp_path / "bundle"
    out.mkdir()
    (out / "old").write_text("old")
    (tmp_path / ".bundle.staging").mkdir()  # what a killed export left
    with pytest.raises(RuntimeError):
        with bundle_format.folder_replaced(out) as staging:
            (staging / "new").write_text("new")
            raise RuntimeError("the parity check failed")
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"] and (out / "old").is_file()
    rename = Path.rename

    def stopped_midway(self, target):  # Ctrl-C between the two renames: held until both are done
        signal.raise_signal(signal.SIGINT)
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", stopped_midway)
    with pytest.raises(KeyboardInterrupt):
        with bundle_format.folder_replaced(out) as staging:
            (staging / "new").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"] and [p.name for p in out.iterdir()] == ["new"]
    # A killed write's leftover beside a recorded file is the bundle's own, not something to keep.
    (out / "meta.json").write_text(json.dumps({"files": {"new": "x"}}))
    (out / "meta.json.tmp").write_text("{")
    assert _foreign_entries(out) == []


def test_two_commands_never_change_one_bundle_at_once(tmp_path, monkeypatch):
    # Two exports into one --out shared one staging folder (the second deleted what the first had written); a build
    # and a quantize at once each wrote the meta.json it had read, without the other's file.
    import threading

    from edgestack.export.quantize import quantize
    from edgestack.export.tensorrt import build_engine

    out = tmp_path / "bundle"
    other = bundle_format.exclusive_lock(tmp_path / ".bundle.lock")  # held as another process holds it
    for command in (lambda: bundle_format.folder_replaced(out).__enter__(), lambda: quantize(out),
                    lambda: build_engine(out)):
        with pytest.raises(EdgestackError, match="bundle is being changed by another edgestack command"):
            command()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".bundle.lock"]  # no staging made or removed

    def other_ends():  # as a process ends: its lock file removed, then closed
        (tmp_path / ".bundle.lock").unlink()
        other.close()

    threading.Timer(0.3, other_ends).start()
    with bundle_format.changing(out, wait=True):  # a service's workers rebuilding one plan wait their turn
        assert (tmp_path / ".bundle.lock").is_file()  # taken again on the path, not on the removed file
        with bundle_format.folder_replaced(out) as staging:  # within this thread's own change: goes on
            (staging / "new").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"] and (out / "new").is_file()
    # The lock is the folder's, however it is named: `.` from inside it (was a ValueError), a link to it (was
    # another lock); a graph of a multi-graph bundle takes its parent's too, which a re-export swaps whole.
    (tmp_path / "current").symlink_to(out)
    (out / "meta.json").write_text(json.dumps({"graphs": {"text": {"folder": "text"}}}))
    (out / "text").mkdir()
    other = bundle_format.exclusive_lock(tmp_path / ".bundle.lock")
    for name in (tmp_path / "current", out / "text", Path(".")):
        with pytest.raises(EdgestackError, match="is being changed by another edgestack command"):
            monkeypatch.chdir(out)
            with bundle_format.changing(name):
                pass
    other.close()
    with bundle_format.changing(Path(".")):
        assert (tmp_path / ".bundle.lock").is_file()


def test_checkpoint_roundtrip_and_misshaped_keys_listed(tmp_path):
    from edgestack.models import resolve
    from edgestack.models.checkpoints import load_checkpoint

    spec, config = resolve("pspnet-r18")
    model = spec.build(spec.configs[config])
    state = model.state_dict()
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, tmp_path / "ok.pth")
    other = spec.build(spec.configs[config])
    load_checkpoint(other, tmp_path / "ok.pth")
    assert all(torch.equal(other.state_dict()[k], v) for k, v in state.items())
    # Without BatchNorm's step counters (converters and float-only exports drop them), as PyTorch's strict load
    from safetensors.torch import save_file

    save_file({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, tmp_path / "float.safetensors")
    load_checkpoint(other, tmp_path / "float.safetensors")
    assert all(torch.equal(other.state_dict()[k], v) for k, v in state.items())
    state["head.2.weight"] = torch.zeros(3, 3, 1, 1)
    state["extra.weight"] = torch.zeros(1)
    del state["head.2.bias"]
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(EdgestackError) as info:
        load_checkpoint(other, tmp_path / "bad.pth")
    text = str(info.value)
    assert "missing keys (1): head.2.bias" in text
    assert "unexpected keys (1): extra.weight" in text
    assert "head.2.weight: checkpoint (3, 3, 1, 1)" in text


def test_bundle_format_rejects_other_schema(tmp_path):
    (tmp_path / "meta.json").write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(EdgestackError, match="schema version"):
        bundle_format.read_meta(tmp_path)


def test_export_optimizer_skips_exactly_the_listed_rewrites():
    """The exporter's optimizer runs onnxscript's default rules minus SKIPPED_REWRITES, each of which exists in
    the installed onnxscript (a renamed rule would silently run again), and the defaults come back afterwards."""
    from onnxscript import rewriter

    from edgestack.export.onnx_export import SKIPPED_REWRITES, skipping_rewrites

    defaults = rewriter._DEFAULT_REWRITE_RULES
    with skipping_rewrites():
        kept = rewriter._DEFAULT_REWRITE_RULES
    assert rewriter._DEFAULT_REWRITE_RULES is defaults
    dropped = [rule for rule in defaults if rule not in kept]
    assert sorted(rule.name for rule in dropped) == sorted(SKIPPED_REWRITES)
    assert len(kept) == len(defaults) - len(SKIPPED_REWRITES)


def test_a_signal_during_an_onnx_run_is_raised_once_the_run_returns():
    # Raised inside a Python custom node called from onnxruntime's C++, it would abort the whole process.
    import os
    import signal
    import time

    from edgestack.interrupts import interrupts_held

    class Stop(Exception):
        pass

    def stop(number, frame):
        raise Stop

    previous, reached = signal.signal(signal.SIGTERM, stop), []
    try:
        with pytest.raises(Stop):
            with interrupts_held():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)  # the handler would have run here
                reached.append(True)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert reached == [True] and signal.getsignal(signal.SIGTERM) is previous


@pytest.mark.parametrize("name, as_content", [("model.int8.onnx", False), ("model.plan", True)])
def test_replacing_bundle_files_is_all_or_nothing(tmp_path, monkeypatch, name, as_content):
    # quantize replaced model.int8.onnx (and build model.plan, given as the serialized bytes) before writing
    # meta.json: a full disk at that moment left a bundle whose every load failed on the file's sha256.
    (tmp_path / name).write_bytes(b"old version")
    meta = {"schema_version": bundle_format.SCHEMA_VERSION, "model": {"name": "m", "config": "m"},
            "files": {name: bundle_format.sha256(tmp_path / name)}, "graphs": {"g": {}}}
    bundle_format.write_meta(tmp_path, meta)
    before = (tmp_path / "meta.json").read_bytes()
    new_file = tmp_path.parent / f"{tmp_path.name}-new"
    new_file.write_bytes(b"new version")
    new = memoryview(b"new version") if as_content else new_file

    def disk_full(meta):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(bundle_format, "_signed_meta", disk_full)
        with pytest.raises(OSError, match="No space left"):
            bundle_format.replace_files(tmp_path, dict(meta, files=dict(meta["files"])), {name: new})
    assert (tmp_path / name).read_bytes() == b"old version"
    assert (tmp_path / "meta.json").read_bytes() == before
    assert not list(tmp_path.glob("*.tmp"))
    bundle_format.replace_files(tmp_path, meta, {name: new})
    assert (tmp_path / name).read_bytes() == b"new version" and not list(tmp_path.glob("*.tmp"))
    assert bundle_format.read_meta(tmp_path)["files"][name] == bundle_format.sha256(new_file)
