"""MAT checkpoints: official persistence-style pickles (never executed), .pth, .safetensors, and bad inputs."""

import os
import pickle
import sys
import types
from collections import OrderedDict

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from edgestack.errors import EdgestackError
from edgestack.models import resolve
from edgestack.models.mat.checkpoint import load_checkpoint

MARKER_SOURCE = "open({marker!r}, 'w').write('ran')  # the embedded class source must never run\n"


@pytest.fixture(scope="module")
def edge_pair():
    spec, name = resolve("mat-edge")
    torch.manual_seed(1)
    source = spec.build(spec.configs[name])
    with torch.no_grad():
        for p in source.parameters():
            p.normal_()
    return spec.build(spec.configs[name]), source


@pytest.fixture
def persistence(monkeypatch):
    """A stand-in `torch_utils.persistence` module, so pickle writes the official global name."""
    module = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):
        raise AssertionError("the loader must never call the original reconstruct function")

    _reconstruct_persistent_obj.__module__ = module.__name__
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    module._reconstruct_persistent_obj = _reconstruct_persistent_obj
    monkeypatch.setitem(sys.modules, "torch_utils", types.ModuleType("torch_utils"))
    monkeypatch.setitem(sys.modules, "torch_utils.persistence", module)
    return module


class PersistentRecord:
    """Reduces like StyleGAN2-ADA's persistent_class: (_reconstruct_persistent_obj, (meta,), None)."""

    def __init__(self, reconstruct, class_name, state, source):
        self.args = (reconstruct, class_name, state, source)

    def __reduce__(self):
        reconstruct, class_name, state, source = self.args
        meta = dict(type="class", version=4, module_src=source, class_name=class_name, state=state)
        return reconstruct, (meta,), None


def as_persistent(module, reconstruct, source):
    """Our module tree as official-style records: state is the module __dict__ with children converted;
    torch containers (ModuleList, Sequential) pickle as themselves, as in the official pickles."""
    children = OrderedDict((k, as_persistent(v, reconstruct, source)) for k, v in module._modules.items())
    if isinstance(module, (torch.nn.ModuleList, torch.nn.Sequential)):
        clone = type(module)()
        clone._modules = children
        return clone
    # nn.Module internals only (our own attributes, e.g. the config dataclass, are not in official pickles),
    # plus a numpy scalar as the official modules carry (weight_gain = 1 / np.sqrt(...)).
    state = {k: v for k, v in module.__dict__.items() if k.startswith("_") or k == "training"}
    state.update(_modules=children, weight_gain=np.float64(0.5))
    return PersistentRecord(reconstruct, type(module).__name__, state, source)


def write_snapshot(path, model, persistence, marker):
    source = MARKER_SOURCE.format(marker=str(marker))
    snapshot = {
        "training_set_kwargs": {"path": "places", "resolution": 256, "xflip": False},
        "G": None,
        "D": None,
        "G_ema": as_persistent(model, persistence._reconstruct_persistent_obj, source),
        "augment_pipe": None,
    }
    with open(path, "wb") as f:
        pickle.dump(snapshot, f)


def test_official_pickle_loads_without_running_its_source(edge_pair, persistence, tmp_path):
    target, source = edge_pair
    marker = tmp_path / "ran.txt"
    path = tmp_path / "network-snapshot.pkl"
    write_snapshot(path, source, persistence, marker)
    info = load_checkpoint(target, str(path))
    assert info["format"] == "pkl" and info["tensors"] == len(source.state_dict())
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    assert not marker.exists()


def test_malicious_pickle_is_refused_without_side_effects(edge_pair, tmp_path):
    marker = tmp_path / "pwned.txt"

    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    class ExecExploit:
        def __reduce__(self):
            return exec, (f"open({str(marker)!r}, 'w').write('x')",)

    for i, payload in enumerate((Exploit(), ExecExploit(), {"G_ema": Exploit()})):
        path = tmp_path / f"evil{i}.pkl"
        path.write_bytes(pickle.dumps(payload))
        with pytest.raises(EdgestackError, match="refusing to load"):
            load_checkpoint(edge_pair[0], str(path))
    assert not marker.exists()


@pytest.mark.parametrize("name", ["g.pth", "g.safetensors"])
def test_pth_and_safetensors(edge_pair, tmp_path, name):
    target, source = edge_pair
    state = source.state_dict()
    if name.endswith(".pth"):
        torch.save({"G_ema": state}, tmp_path / name)
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / name))
    with torch.no_grad():
        for p in target.parameters():
            p.zero_()
    load_checkpoint(target, str(tmp_path / name))
    assert torch.equal(target.mapping.fc0.weight, source.mapping.fc0.weight)


def test_bad_inputs(edge_pair, tmp_path):
    target, _ = edge_pair
    corrupt = tmp_path / "broken.pkl"
    corrupt.write_bytes(b"\x80\x04\x95garbage")
    with pytest.raises(EdgestackError, match="not a readable MAT pickle"):
        load_checkpoint(target, str(corrupt))
    (tmp_path / "weights.onnx").write_bytes(b"x")
    with pytest.raises(EdgestackError, match="unknown format"):
        load_checkpoint(target, str(tmp_path / "weights.onnx"))
    with pytest.raises(EdgestackError, match="does not exist"):
        load_checkpoint(target, str(tmp_path / "missing.pkl"))
    no_generator = tmp_path / "d_only.pkl"
    no_generator.write_bytes(pickle.dumps({"D": OrderedDict()}))
    with pytest.raises(EdgestackError, match="no 'G_ema'"):
        load_checkpoint(target, str(no_generator))
    # A generator for another resolution: the 512 model's decoder keys against the 256 edge model.
    spec, name = resolve("mat-512")
    other = {k: v for k, v in spec.build(spec.configs[name]).state_dict().items() if k.startswith("synthesis.dec.")}
    torch.save(other, tmp_path / "g512.pth")
    with pytest.raises(EdgestackError, match="512x512 images but this MAT config is 256x256"):
        load_checkpoint(target, str(tmp_path / "g512.pth"))
