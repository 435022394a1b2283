"""`edgestack doctor`: each component's finding on this machine, a bundle's, and the exit code for problems."""

import enum
import importlib.machinery
import importlib.util
import json
import shutil
import subprocess
import sys
import types

import pytest

from edgestack import tensorrt_env
from edgestack.cli import main
from edgestack.errors import EdgestackError
from edgestack.runtime import environment
from edgestack.tensorrt_env import PLUGIN_ENV

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
    import torch

    if not torch.cuda.is_available():  # a kernels library built here was reported ok, though it can never run
        assert found["CUDA kernels"]["status"] == "missing" and "the PyTorch references" in found["CUDA kernels"][
            "detail"]
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


class CudaError(enum.Enum):
    cudaSuccess = 0
    cudaErrorInsufficientDriver = 35


def driver_reporting(version: int) -> types.SimpleNamespace:
    """cuda-python's runtime calls as the bindings answer them when the device query fails with
    cudaErrorInsufficientDriver: with an older driver (version > 0), or with no NVIDIA driver at all (0)."""
    return types.SimpleNamespace(
        cudaError_t=CudaError,
        cudaDriverGetVersion=lambda: (CudaError.cudaSuccess, version),
        cudaGetDeviceCount=lambda: (CudaError.cudaErrorInsufficientDriver, None),
        cudaGetErrorString=lambda err: (CudaError.cudaSuccess, b"CUDA driver version is insufficient"),
    )


def test_cuda_python_newer_than_the_driver_is_a_problem_no_driver_is_not(capsys, monkeypatch):
    monkeypatch.setattr(environment, "_distribution_version", lambda *names: "13.0.3")
    monkeypatch.setattr(tensorrt_env, "import_cudart", lambda: driver_reporting(12060))
    code, found, err = doctor(capsys)
    gpu = found["GPU (cuda-python)"]
    assert code == 2 and "GPU (cuda-python)" in err and gpu["status"] == "problem"
    assert "needs a newer driver than this one (CUDA 12.6)" in gpu["detail"]
    assert '"cuda-python>=12.3,<13"' in gpu["detail"]

    monkeypatch.setattr(tensorrt_env, "import_cudart", lambda: driver_reporting(0))  # a CPU machine
    code, found, _ = doctor(capsys)
    gpu = found["GPU (cuda-python)"]
    assert gpu["status"] == "missing" and "no CUDA GPU is usable here" in gpu["detail"]


def test_no_driver_under_cuda_python_12_is_no_gpu_not_a_crash(capsys, monkeypatch):
    """cuda-python 12 raises RuntimeError where libcuda.so.1 is missing (a container started without --gpus):
    doctor reports no GPU, and the TensorRT backend's first question is a one-line error (which load's auto
    choice falls back on to onnxruntime)."""
    def no_libcuda():
        raise RuntimeError("Failed to dlopen libcuda.so.1")

    monkeypatch.setattr(environment, "_distribution_version", lambda *names: "12.6.2")
    monkeypatch.setattr(tensorrt_env, "import_cudart", lambda: types.SimpleNamespace(
        cudaDriverGetVersion=no_libcuda, cudaGetDeviceCount=no_libcuda))
    code, found, _ = doctor(capsys)
    gpu = found["GPU (cuda-python)"]
    assert gpu["status"] == "missing" and "no NVIDIA driver is usable here (Failed to dlopen" in gpu["detail"]
    with pytest.raises(EdgestackError, match="no NVIDIA driver is usable here"):
        tensorrt_env.gpu_environment()


def test_human_readable_table(capsys):
    assert main(["doctor"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("ok ") and "machine" in lines[0]
    assert any(line.split()[:2] == ["ok", "onnxruntime"] for line in lines)


def test_a_reader_that_leaves_early_is_no_file_error():
    # `edgestack doctor --json | head`: the closed pipe was reported as "error: Broken pipe; check the path, its
    # permissions and the free space".
    proc = subprocess.Popen([sys.executable, "-m", "edgestack", "doctor", "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()
    error = proc.stderr.read().decode()
    assert proc.wait(60) == 1 and "error" not in error and "Traceback" not in error
