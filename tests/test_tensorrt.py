"""TensorRT engine building and the TensorRT backend.

Here (no TensorRT, no GPU) this checks everything decided before TensorRT is touched: profiles, the plan
compatibility rules, the plugin-library finder, parse-failure messages, install hints. The real build/run
tests are marked `tensorrt` and skip unless TensorRT and a GPU are present.
"""

import importlib.util
import json

import numpy as np
import pytest

from edgestack import bundle as bundle_format
from edgestack.errors import EdgestackError
from edgestack.export.tensorrt import (
    build_engine,
    default_timing_cache,
    describe_parse_failure,
    input_shapes,
    parse_profile,
    resolve_profile,
)
from edgestack.models import resolve
from edgestack.runtime import load
from edgestack.runtime.tensorrt import _plan_io, plan_problem
from edgestack.tensorrt_env import (
    INSTALL_TENSORRT,
    PLUGIN_ENV,
    PLUGIN_LIBRARY,
    find_plugin_library,
    hardware_compatible_problem,
    tensorrt_version_problem,
)

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


def spec_meta(model: str = "pspnet-r18") -> dict:
    """The io part of meta.json exactly as export writes it, from the model registry (no export needed)."""
    spec, config = resolve(model)
    cfg = spec.configs[config]
    return {
        "schema_version": bundle_format.SCHEMA_VERSION,
        "model": {"name": spec.name, "config": config, "task": spec.task},
        "inputs": [s.as_dict() for s in spec.inputs(cfg)],
        "outputs": [s.as_dict() for s in spec.outputs(cfg)],
        "axes": {name: rng.as_dict() for name, rng in spec.axes(cfg).items()},
        "default_size": list(spec.default_size(cfg)),
        "onnx": {"plugin_nodes": {"EdgePyramidPooling": 1}},
        "files": {},
    }


@pytest.fixture
def meta_only_bundle(tmp_path):
    """meta.json and one file it lists (every bundle lists its files): enough for everything checked before
    TensorRT or the ONNX is opened."""
    report = tmp_path / bundle_format.REPORT
    report.write_text("# report\n")
    bundle_format.write_meta(tmp_path, spec_meta() | {"files": {report.name: bundle_format.sha256(report)}})
    return tmp_path


def test_parse_profile_forms_and_errors():
    assert parse_profile("65x65,473x473,1025x1025") == {
        "min": {"height": 65, "width": 65}, "opt": {"height": 473, "width": 473},
        "max": {"height": 1025, "width": 1025}}
    assert parse_profile("1x65x97, 2X473x473,8x1025x1025")["max"] == {"batch": 8, "height": 1025, "width": 1025}
    for bad in ("473x473", "65x65,473x473", "65x65,1x473x473,1025x1025", "axb,1x1,2x2", "65x65x1x1,1x1x1x1,2x2x2x2"):
        with pytest.raises(EdgestackError, match="MIN,OPT,MAX"):
            parse_profile(bad)


def test_default_profile_spans_min_to_twice_the_default_size_with_opt_at_default():
    meta = spec_meta()
    values = resolve_profile(meta, None)
    assert values == {"min": {"batch": 1, "height": 65, "width": 65},
                      "opt": {"batch": 1, "height": 473, "width": 473},
                      "max": {"batch": 8, "height": 946, "width": 946}}
    assert input_shapes(meta, values) == {"image": [(1, 3, 65, 65), (1, 3, 473, 473), (8, 3, 946, 946)]}
    narrowed = resolve_profile(meta, "2x97x97,4x473x473,8x1025x1025")
    assert input_shapes(meta, narrowed)["image"] == [(2, 3, 97, 97), (4, 3, 473, 473), (8, 3, 1025, 1025)]
    assert resolve_profile(meta, narrowed) == narrowed  # a recorded profile (rebuild) resolves to itself


def test_profile_outside_allowed_sizes_is_refused():
    meta = spec_meta()
    with pytest.raises(EdgestackError, match=r"profile min: height=33 is outside the model's allowed range 65\.\.2049"):
        resolve_profile(meta, "33x65,473x473,1025x1025")
    with pytest.raises(EdgestackError, match="batch=64 is outside"):
        resolve_profile(meta, "1x65x65,1x473x473,64x1025x1025")
    with pytest.raises(EdgestackError, match="order --profile as MIN,OPT,MAX"):
        resolve_profile(meta, "473x473,65x65,1025x1025")
    meta["axes"]["height"] = {"min": 64, "max": 1024, "multiple_of": 32}  # like a windowed-attention model
    # max: twice the default 473, rounded down to a multiple of 32
    default = resolve_profile(meta, None)
    assert (default["min"]["height"], default["opt"]["height"], default["max"]["height"]) == (64, 480, 928)
    with pytest.raises(EdgestackError, match="opt: height=473 .* multiple of 32"):
        resolve_profile(meta, "64x65,473x473,1024x1025")
    del meta["axes"]["batch"]
    with pytest.raises(EdgestackError, match="no dynamic axis 'batch'"):
        resolve_profile(meta, "1x64x65,1x480x473,1x1024x1025")


def test_build_checks_arguments_before_tensorrt(meta_only_bundle):
    with pytest.raises(EdgestackError, match="outside the model's allowed range"):
        build_engine(meta_only_bundle, "fp16", profile="65x65,473x473,4097x4097")
    with pytest.raises(EdgestackError, match="--calib only applies to --precision int8"):
        build_engine(meta_only_bundle, "fp16", calib="images/")
    with pytest.raises(EdgestackError, match="unknown precision 'int4'"):
        build_engine(meta_only_bundle, "int4")
    with pytest.raises(EdgestackError, match="--workspace 0 MB must be positive"):
        build_engine(meta_only_bundle, "fp16", workspace_mb=0)
    with pytest.raises(EdgestackError, match="has no model.plugins.onnx; re-export it"):
        build_engine(meta_only_bundle, "fp16", version_compatible=True)


@pytest.mark.skipif(HAS_TENSORRT, reason="checks the message shown when TensorRT is NOT installed")
def test_build_without_tensorrt_says_how_to_install(meta_only_bundle, capsys):
    from edgestack.cli import main

    with pytest.raises(EdgestackError) as info:
        build_engine(meta_only_bundle, "fp16", profile="65x65,97x97,129x129")
    message = str(info.value)
    assert "TensorRT is not installed" in message
    assert "JetPack" in message and '"tensorrt-cu12>=10.3,<11"' in message and '"tensorrt-cu13>=10.13,<11"' in message
    assert main(["build", str(meta_only_bundle), "--profile", "65x65,97x97,129x129"]) == 2
    assert "TensorRT is not installed" in capsys.readouterr().err
    assert main(["build", str(meta_only_bundle), "--profile", "65x65,97x97"]) == 2
    assert "MIN,OPT,MAX" in capsys.readouterr().err


def test_tensorrt_backend_needs_a_plan(meta_only_bundle):
    with pytest.raises(EdgestackError, match="has no model.plan; build one with `edgestack build"):
        load(meta_only_bundle, backend="tensorrt")


def test_supported_tensorrt_versions():
    assert tensorrt_version_problem("10.3.0") is None
    assert tensorrt_version_problem("10.16.1.11") is None
    assert tensorrt_version_problem("10.14.1.48.post1") is None
    assert "too old" in tensorrt_version_problem("10.2.0.post1")
    assert "too old" in tensorrt_version_problem("8.6.1")
    # pip's tensorrt-cu12 is 11.x today; 11 has no FP16/INT8 builder flags, so the hint pins < 11
    assert "not supported" in tensorrt_version_problem("11.4.0.106")
    assert INSTALL_TENSORRT.count(",<11") == 2 and '"cuda-python>=12.3,<13"' in INSTALL_TENSORRT


def test_hardware_compatible_needs_a_discrete_ampere_or_newer_gpu():
    assert hardware_compatible_problem({"gpu": "NVIDIA H100", "compute_capability": "9.0", "integrated": False}) is None
    assert "integrated GPUs" in hardware_compatible_problem(
        {"gpu": "Orin (nvgpu)", "compute_capability": "8.7", "integrated": True})
    assert "Ampere or newer" in hardware_compatible_problem(
        {"gpu": "Tesla T4", "compute_capability": "7.5", "integrated": False})


ENV = {"tensorrt": "10.3.0", "gpu": "Orin (nvgpu)", "compute_capability": "8.7", "integrated": True}


def plan_meta(version="10.3.0", gpu="Orin (nvgpu)", cc="8.7", version_compatible=False, hardware_compatible=False):
    return {"tensorrt": {"version": version, "gpu": gpu, "compute_capability": cc, "precision": "fp16",
                         "flags": {"version_compatible": version_compatible,
                                   "hardware_compatible": hardware_compatible}}}


def test_plan_compatibility_rules():
    assert plan_problem(plan_meta(), ENV) is None
    assert plan_problem(plan_meta(version="10.3.0.30"), ENV) is None  # build number is not part of the check
    assert "built with TensorRT 10.7.0, this is TensorRT 10.3.0" in plan_problem(plan_meta(version="10.7.0"), ENV)
    # version-compatible: later 10.x runs it, an earlier one or another major does not
    assert plan_problem(plan_meta(version="10.1.0", version_compatible=True), ENV) is None
    assert "TensorRT 10.x >= 10.7.0" in plan_problem(plan_meta(version="10.7.0", version_compatible=True), ENV)
    assert plan_problem(plan_meta(version="9.3.0", version_compatible=True), ENV) is not None
    h100 = {"tensorrt": "10.3.0", "gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "integrated": False}
    problem = plan_problem(plan_meta(), h100)
    assert "built for Orin (nvgpu) (compute capability 8.7)" in problem and "NVIDIA H100 80GB HBM3 (9.0)" in problem
    same_arch = {"tensorrt": "10.3.0", "gpu": "NVIDIA A100-SXM4-40GB", "compute_capability": "8.0",
                 "integrated": False}
    assert "tuned on NVIDIA A100-PCIE-40GB" in plan_problem(plan_meta(gpu="NVIDIA A100-PCIE-40GB", cc="8.0"),
                                                            same_arch)
    # hardware-compatible: any Ampere or newer GPU, not Turing
    assert plan_problem(plan_meta(cc="8.6", gpu="NVIDIA RTX A6000", hardware_compatible=True), h100) is None
    turing = {"tensorrt": "10.3.0", "gpu": "Tesla T4", "compute_capability": "7.5", "integrated": False}
    assert "Ampere or newer" in plan_problem(plan_meta(cc="8.6", hardware_compatible=True), turing)
    assert "integrated GPUs" in plan_problem(plan_meta(cc="8.6", hardware_compatible=True), ENV)
    assert "no TensorRT record" in plan_problem({}, ENV)


def test_a_plan_must_have_the_declared_io_up_to_narrowed_integers(tmp_path):
    from edgestack.runtime.engine import check_declared_io

    meta = {"inputs": [{"name": "image", "dtype": "float32"}],
            "outputs": [{"name": "boxes", "dtype": "float32"}, {"name": "count", "dtype": "int64"}]}
    plan = {"count": np.dtype("int32"), "image": np.dtype("float32"), "boxes": np.dtype("float32")}  # plan order
    check_declared_io(tmp_path, meta, _plan_io(meta, plan), "model.plan")  # EfficientNMS_TRT's int32: accepted
    for edited in ({**plan, "count": np.dtype("float32")}, {k: v for k, v in plan.items() if k != "boxes"},
                   {**plan, "extra": np.dtype("float32")}):
        with pytest.raises(EdgestackError, match="but model.plan has .*re-export the bundle"):
            check_declared_io(tmp_path, meta, _plan_io(meta, edited), "model.plan")


def test_a_plugin_library_registered_already_is_used_and_a_failed_load_is_an_error(tmp_path, caplog, monkeypatch):
    """TensorRT's load_library fails when any of a library's plugins is registered already (its autoload, or a
    copy at another path). Only the decision on that answer is ours, so a registry that answers is enough here;
    the real load runs in the GPU tests."""
    from types import SimpleNamespace

    from edgestack import tensorrt_env

    monkeypatch.setattr(tensorrt_env, "_loaded_plugin_libraries", set())
    creator = SimpleNamespace(name="EdgePyramidPooling", plugin_version="1")
    registry = SimpleNamespace(load_library=lambda path: None, all_creators=[creator])
    library = tmp_path / "libedgestack_trt_plugins.so"
    library.touch()
    with pytest.raises(EdgestackError, match="could not load the plugin library .* load only one"):
        tensorrt_env.load_plugins(registry, library, {"EdgeWindowMaskedAttention": 1})
    tensorrt_env.load_plugins(registry, library, {"EdgePyramidPooling": 1})
    assert "registered already" in caplog.text
    registry.load_library = lambda path: pytest.fail("loaded twice")
    tensorrt_env.load_plugins(registry, library, {"EdgePyramidPooling": 1})  # once per process


def test_plugin_library_finder(tmp_path, monkeypatch):
    monkeypatch.setenv(PLUGIN_ENV, str(tmp_path / "nope.so"))
    with pytest.raises(EdgestackError, match=f"{PLUGIN_ENV}=.*nope.so does not exist"):
        find_plugin_library()
    library = tmp_path / PLUGIN_LIBRARY
    library.write_bytes(b"")
    monkeypatch.setenv(PLUGIN_ENV, str(library))
    assert find_plugin_library() == library
    monkeypatch.delenv(PLUGIN_ENV)
    try:
        found = find_plugin_library()
    except EdgestackError as exc:  # not built in this checkout: the message says how to build or point at it
        assert "cmake -S . -B build" in str(exc) and PLUGIN_ENV in str(exc)
    else:  # the CMake build has produced it
        assert found.name == PLUGIN_LIBRARY and found.is_file()


def test_parse_failure_names_missing_plugin_and_registered_versions():
    expected = {"EdgePyramidPooling": "1", "EdgeWindowMaskedAttention": "1"}
    message = describe_parse_failure(
        "model.plugins.onnx",
        [("node_pp", "EdgePyramidPooling", "Plugin not found, are the plugin name, version, and namespace correct?")],
        [("EdgePyramidPooling", "2"), ("ROIAlign_TRT", "1")],
        expected,
    )
    assert "no plugin for EdgePyramidPooling" in message
    assert "Registered edgestack plugins: EdgePyramidPooling v2" in message
    assert "EdgePyramidPooling v1, EdgeWindowMaskedAttention v1" in message and "cmake --build build" in message
    assert "ROIAlign_TRT" not in message
    other = describe_parse_failure("m.onnx", [("n1", "Conv", "kernel weights must be constant")], [], expected)
    assert other.startswith("TensorRT's ONNX parser rejected m.onnx") and "plugin" not in other


def test_timing_cache_is_per_tensorrt_version_and_gpu(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = default_timing_cache({"tensorrt": "10.3.0", "gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"})
    assert path == tmp_path / "edgestack" / "tensorrt" / "trt10.3.0-sm9.0-NVIDIA-H100-80GB-HBM3.timing"


# --- needs TensorRT and a GPU -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trt_bundle(tmp_path_factory):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (pip install tensorrt-cu12 / JetPack)")
    from edgestack.export import export_bundle

    path, _ = export_bundle("pspnet-r18", out=tmp_path_factory.mktemp("trt") / "pspnet-r18",
                            parity_sizes=[(97, 97)], progress=lambda m: None)
    return path


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_build_and_run_plan_with_plugins(trt_bundle, precision):
    record = build_engine(trt_bundle, precision, profile="1x65x65,1x129x129,2x257x257", progress=lambda m: None)
    meta = json.loads((trt_bundle / "meta.json").read_text())
    assert meta["files"]["model.plan"] == bundle_format.sha256(trt_bundle / "model.plan")
    assert record["plugins"] == {"EdgePyramidPooling": 1} and record["precision"] == precision
    from edgestack.tensorrt_env import current_environment

    assert plan_problem(meta, current_environment()) is None
    x = np.random.default_rng(0).standard_normal((2, 3, 97, 131)).astype(np.float32)
    want = load(trt_bundle, "onnxruntime")(x)["logits"]
    small = x[:1, :, :65, :80]
    for cuda_graph in (False, True):
        engine = load(trt_bundle, "tensorrt", cuda_graph=cuda_graph)
        for _ in range(2):  # the second call replays the captured graph
            got = engine(x)["logits"]
            agreement = (got.argmax(1) == want.argmax(1)).mean()
            assert agreement >= (0.9999 if precision == "fp32" else 0.99), agreement
        assert (engine.backend.graph is not None) == cuda_graph  # captured, not silently fallen back to plain enqueue
        first = engine(small)["logits"]  # shapes A -> B -> A: each result as a fresh plain run gives it
        np.testing.assert_allclose(engine(x)["logits"], got, rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(engine(small)["logits"], first, rtol=1e-3, atol=1e-3)
        assert got.dtype == np.float32
    with pytest.raises(EdgestackError, match="outside the plan's optimization profile"):
        engine(np.zeros((1, 3, 513, 513), np.float32))
    assert load(trt_bundle).backend.name == "tensorrt"


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_build_int8_plan_from_qdq_model(trt_bundle):
    from edgestack.export.quantize import quantize

    quantize(trt_bundle, samples=8, size=(97, 97), progress=lambda m: None)
    record = build_engine(trt_bundle, "int8", profile="1x65x65,1x97x97,1x129x129", progress=lambda m: None)
    assert record["source"] == "model.int8.onnx" and record["flags"]["int8"]
    assert record["parity_vs_onnxruntime"]["argmax_agreement"] >= 0.8


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_a_version_compatible_plan_with_our_plugins_loads_after_its_build_and_again(trt_bundle):
    """Such a plan carries our plugin library and the runtime registers it too: the build's own check, then two
    more loads in the same process, must all deserialize (TensorRT refuses a library registered twice)."""
    record = build_engine(trt_bundle, "fp16", profile="1x65x65,1x97x97,1x129x129", version_compatible=True,
                          progress=lambda m: None)
    assert record["flags"]["version_compatible"] and record["parity_vs_onnxruntime"]["argmax_agreement"] >= 0.99
    x = np.random.default_rng(1).standard_normal((1, 3, 97, 97)).astype(np.float32)
    want = load(trt_bundle, "onnxruntime")(x)["logits"].argmax(1)
    for _ in range(2):
        assert (load(trt_bundle, "tensorrt")(x)["logits"].argmax(1) == want).mean() >= 0.99
