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


# Bundles exported once per session through the full bundle path (both flavours, parity checked): an export
# takes 30-140 s on a 2-core CPU. Tests read them; a test that writes into a bundle works on its own copy.


@pytest.fixture(scope="session")
def mat_edge_bundle(tmp_path_factory):
    """mat-edge, random weights (seed 0)."""
    return _export(tmp_path_factory, "mat-edge")


@pytest.fixture(scope="session")
def pspnet_bundle(tmp_path_factory):
    """pspnet-r18, random weights (seed 0), parity at its default sizes."""
    return _export(tmp_path_factory, "pspnet-r18")


@pytest.fixture(scope="session")
def defectseg_bundle(tmp_path_factory):
    """defectseg-s with its shipped weights (the default checkpoint)."""
    return _export(tmp_path_factory, "defectseg-s", parity_sizes=[(64, 96)])


def _export(tmp_path_factory, config: str, **kwargs):
    from edgestack.export import export_bundle

    path, _ = export_bundle(config, out=tmp_path_factory.mktemp("bundle") / config, progress=lambda m: None, **kwargs)
    return path
