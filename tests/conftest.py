import importlib.util

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (run on the GPU machine)")
    skip_trt = pytest.mark.skip(reason="needs TensorRT >= 10.3 (not installable in this workplace)")
    has_cuda = torch.cuda.is_available()
    has_trt = importlib.util.find_spec("tensorrt") is not None
    for item in items:
        if "tensorrt" in item.keywords and not has_trt:
            item.add_marker(skip_trt)
        elif "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def mat_edge_bundle(tmp_path_factory):
    """mat-edge exported once per session through the full bundle path (both flavours, parity checked)."""
    from edgestack.export import export_bundle

    path, _ = export_bundle("mat-edge", out=tmp_path_factory.mktemp("mat") / "mat-edge", progress=lambda m: None)
    return path
