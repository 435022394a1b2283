"""`edgestack doctor`: each component's finding on this machine, a bundle's, and the exit code for problems."""

import importlib.machinery
import importlib.util
import json
import shutil
import sys
import types

import pytest

from edgestack.cli import main
from edgestack.runtime.environment import cuda_python_problem
from edgestack.runtime.tensorrt import PLUGIN_ENV

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


def doctor(capsys, *args: str) -> tuple[int, dict[str, dict[str, str]], str]:
    code = main(["doctor", "--json", *args])
    out, err = capsys.readouterr()
    return code, {f["component"]: f for f in json.loads(out)}, err


def test_this_machine(capsys, monkeypatch):
    monkeypatch.delenv(PLUGIN_ENV, raising=False)
    code, found, _ = doctor(capsys)
    assert code == 0
    assert "CPUExecutionProvider" in found["onnxruntime"]["detail"]
    assert found["torch"]["status"] == "ok"
    if not HAS_TENSORRT:
        assert found["TensorRT"]["status"] == "missing" and '"tensorrt-cu12>=10.3,<11"' in found["TensorRT"]["detail"]


def test_bundle_without_plan_and_a_tampered_one(capsys, pspnet_bundle, tmp_path):
    code, found, _ = doctor(capsys, "--bundle", str(pspnet_bundle))
    assert code == 0
    assert "every file's sha256 matches" in found[f"bundle {pspnet_bundle}"]["detail"]
    plan = found[f"plan {pspnet_bundle / 'model.plan'}"]
    assert plan["status"] == "missing" and f"edgestack build {pspnet_bundle}" in plan["detail"]

    copy = tmp_path / "psp"
    shutil.copytree(pspnet_bundle, copy)
    with open(copy / "model.onnx", "ab") as f:
        f.write(b"\0")
    code, found, err = doctor(capsys, "--bundle", str(copy))
    assert code == 2 and f"1 problem(s): bundle {copy}" in err
    assert found[f"bundle {copy}"]["status"] == "problem" and "model.onnx" in found[f"bundle {copy}"]["detail"]


@pytest.mark.skipif(HAS_TENSORRT, reason="puts a stand-in tensorrt module (only its version) in place of none")
def test_unsupported_tensorrt_and_wrong_plugin_path_are_problems(capsys, monkeypatch, tmp_path):
    stand_in = types.ModuleType("tensorrt")
    stand_in.__version__ = "11.4.0.106"  # what plain `pip install tensorrt-cu12` gives today
    stand_in.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
    monkeypatch.setitem(sys.modules, "tensorrt", stand_in)
    monkeypatch.setenv(PLUGIN_ENV, str(tmp_path / "missing.so"))
    code, found, err = doctor(capsys)
    assert code == 2 and "2 problem(s): TensorRT, TensorRT plugins" in err
    assert "TensorRT 11.4.0.106 is not supported" in found["TensorRT"]["detail"]
    assert "missing.so does not exist" in found["TensorRT plugins"]["detail"]


def test_cuda_python_must_not_be_newer_than_the_driver():
    assert cuda_python_problem("12.9.10", "12.6") is None
    assert cuda_python_problem("12.2.1", "13.0") is None
    problem = cuda_python_problem("13.0.3", "12.6")
    assert "needs a CUDA 13 driver, this driver supports CUDA 12.6" in problem and '"cuda-python>=12.3,<13"' in problem


def test_human_readable_table(capsys):
    assert main(["doctor"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("ok ") and "machine" in lines[0]
    assert any(line.split()[:2] == ["ok", "onnxruntime"] for line in lines)
