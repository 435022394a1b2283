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


def stand_in_module(monkeypatch, name):
    module = types.ModuleType(name)
    parent = name.rpartition(".")[0]
    monkeypatch.setitem(sys.modules, parent, types.ModuleType(parent))
    monkeypatch.setitem(sys.modules, name, module)
    return module


@pytest.fixture
def easydict(monkeypatch):
    """A stand-in `dnnlib.util.EasyDict`, so pickle writes the official global name."""
    class EasyDict(dict):
        def __getattr__(self, name):  # as dnnlib's: AttributeError, which pickle on Python 3.10 relies on
            try:
                return self[name]
            except KeyError:
                raise AttributeError(name) from None

    EasyDict.__module__, EasyDict.__qualname__ = "dnnlib.util", "EasyDict"
    stand_in_module(monkeypatch, "dnnlib.util").EasyDict = EasyDict
    return EasyDict


@pytest.fixture
def persistence(monkeypatch, easydict):
    """A stand-in `torch_utils.persistence` module, so pickle writes the official global name."""
    module = stand_in_module(monkeypatch, "torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):
        raise AssertionError("the loader must never call the original reconstruct function")

    _reconstruct_persistent_obj.__module__ = module.__name__
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    module._reconstruct_persistent_obj = _reconstruct_persistent_obj
    module.EasyDict = easydict
    return module


class PersistentRecord:
    """Reduces like StyleGAN2-ADA's persistent_class: (_reconstruct_persistent_obj, (meta,), None)."""

    def __init__(self, reconstruct, class_name, state, source):
        self.args = (reconstruct, class_name, state, source)

    def __reduce__(self):
        reconstruct, class_name, state, source = self.args
        meta = dict(type="class", version=4, module_src=source, class_name=class_name, state=state)
        return reconstruct, (meta,), None


def as_persistent(module, reconstruct, source, init_kwargs=None):
    """Our module tree as official-style records: state is the module __dict__ with children converted, plus what
    persistence's decorator keeps (constructor args, class source and name); torch containers (ModuleList,
    Sequential) pickle as themselves, as in the official pickles."""
    children = OrderedDict((k, as_persistent(v, reconstruct, source)) for k, v in module._modules.items())
    if isinstance(module, (torch.nn.ModuleList, torch.nn.Sequential)):
        clone = type(module)()
        clone._modules = children
        return clone
    # nn.Module internals only (our own attributes, e.g. the config dataclass, are not in official pickles),
    # plus a numpy scalar as the official modules carry (weight_gain = 1 / np.sqrt(...)).
    state = {k: v for k, v in module.__dict__.items() if k.startswith("_") or k == "training"}
    state.update(_modules=children, weight_gain=np.float64(0.5), _init_args=(), _init_kwargs=init_kwargs or {},
                 _orig_module_src=source, _orig_class_name=type(module).__name__)
    return PersistentRecord(reconstruct, type(module).__name__, state, source)


def write_snapshot(path, model, persistence, marker):
    source = MARKER_SOURCE.format(marker=str(marker))
    snapshot = {
        "training_set_kwargs": {"path": "places", "resolution": 256, "xflip": False},
        "G": None,
        "D": None,
        # MAT's train.py builds G with mapping_kwargs=dnnlib.EasyDict(), synthesis_kwargs=dnnlib.EasyDict().
        "G_ema": as_persistent(model, persistence._reconstruct_persistent_obj, source, dict(
            z_dim=512, w_dim=512, mapping_kwargs=persistence.EasyDict(num_layers=8),
            synthesis_kwargs=persistence.EasyDict(channel_base=32768, channel_max=512))),
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


def test_an_official_pickle_may_hold_tensors_this_mat_does_not_have(edge_pair, persistence, tmp_path, caplog):
    # The official loader requires every tensor of the model and ignores the others (released pickles may carry
    # buffers of an earlier internal version); a .pth is ours, and stays strict.
    import copy

    target, source = edge_pair
    older = copy.deepcopy(source)
    older.synthesis.register_buffer("relative_position_index", torch.zeros(4, dtype=torch.long))
    write_snapshot(tmp_path / "older.pkl", older, persistence, tmp_path / "ran.txt")
    info = load_checkpoint(target, str(tmp_path / "older.pkl"))
    assert info["ignored_tensors"] == ["synthesis.relative_position_index"]
    assert "ignoring 1 tensor(s) this MAT does not have" in caplog.text
    assert all(torch.equal(target.state_dict()[key], value) for key, value in source.state_dict().items())
    torch.save(older.state_dict(), tmp_path / "older.pth")
    with pytest.raises(EdgestackError, match="unexpected keys \\(1\\): synthesis.relative_position_index"):
        load_checkpoint(target, str(tmp_path / "older.pth"))


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


def test_the_paper_generator_at_256_px_has_its_own_config(tmp_path):
    # The official CelebA-HQ 256 model has mat-512's width at 256 px: neither mat-512 nor mat-edge took it.
    spec, _ = resolve("mat-256")
    small, large = (spec.build(spec.configs[name]) for name in ("mat-256", "mat-512"))
    assert spec.configs["mat-256"]["resolution"] == 256 and small.cfg.dim == large.cfg.dim
    torch.save(small.state_dict(), tmp_path / "g256.pth")
    load_checkpoint(spec.build(spec.configs["mat-256"]), str(tmp_path / "g256.pth"))
    with pytest.raises(EdgestackError, match="mat-256 for the official CelebA-HQ 256 one"):
        load_checkpoint(large, str(tmp_path / "g256.pth"))


def module_record(cls, **state):
    record = cls()
    record.__dict__.update({"_modules": {}, "_parameters": {}, "_buffers": {}} | state)
    return record


def test_damaged_or_crafted_module_records_are_refused_in_one_line(edge_pair, tmp_path, monkeypatch):
    target, source = edge_pair

    class Module:  # pickles as a class of torch.nn.modules: read as a placeholder record
        pass

    Module.__module__, Module.__qualname__ = "torch.nn.modules.crafted", "Module"
    monkeypatch.setitem(sys.modules, Module.__module__, types.SimpleNamespace(Module=Module))
    looped = module_record(Module, _parameters={"w": torch.zeros(2)})
    looped._modules["self"] = looped
    deep = chain = module_record(Module)
    for _ in range(100):  # 5000 levels overflowed the loader's recursion; pickle.dump's own limits this test
        chain._modules["c"] = chain = module_record(Module)
    for name, generator, message in [
            ("looped", looped, "nest deeper than 64 levels"), ("deep", deep, "nest deeper than 64 levels"),
            ("list", module_record(Module, _parameters=[1, 2]), "_parameters of module G_ema is not a dict by name"),
            ("int-name", module_record(Module, _parameters={0: torch.zeros(2)}), "_parameters of module G_ema")]:
        path = tmp_path / f"{name}.pkl"
        path.write_bytes(pickle.dumps({"G_ema": generator}, protocol=4))
        with pytest.raises(EdgestackError, match=f"checkpoint {path}: .*{message}"):
            load_checkpoint(target, str(path))
    odd_key = source.state_dict() | {"synthesis.dec.Dec_": torch.zeros(1)}  # no resolution to read from it
    torch.save(odd_key, tmp_path / "odd.pth")
    with pytest.raises(EdgestackError, match=r"unexpected keys \(1\): synthesis\.dec\.Dec_"):
        load_checkpoint(target, str(tmp_path / "odd.pth"))
    torch.save({0: torch.zeros(1)}, tmp_path / "int-key.pth")
    with pytest.raises(EdgestackError, match="does not hold a state dict of tensors by name"):
        load_checkpoint(target, str(tmp_path / "int-key.pth"))


def test_weights_that_are_not_floating_point_are_refused(edge_pair, tmp_path):
    target, source = edge_pair
    for dtype in (torch.bool, torch.int8, torch.complex64):  # each was cast into the float weights in silence
        torch.save({k: v.to(dtype) for k, v in source.state_dict().items()}, tmp_path / "w.pth")
        with pytest.raises(EdgestackError, match=f"not floating point .*mapping.fc0.weight: checkpoint {dtype}"):
            load_checkpoint(target, str(tmp_path / "w.pth"))
    torch.save({k: v.half() for k, v in source.state_dict().items()}, tmp_path / "half.pth")  # fp16: loads
    assert load_checkpoint(target, str(tmp_path / "half.pth"))["tensors"] == len(source.state_dict())


def test_weights_of_a_diverged_run_are_refused_naming_the_checkpoint(edge_pair, tmp_path):
    # NaN weights loaded fine and failed 80 s later as an export "parity check failed", blaming the exporter.
    target, source = edge_pair
    state = source.state_dict()
    state["mapping.fc0.weight"] = torch.full_like(state["mapping.fc0.weight"], float("nan"))
    torch.save(state, tmp_path / "diverged.pth")
    with pytest.raises(EdgestackError, match=r"diverged.pth holds NaN or Inf values in 1 tensor\(s\) "
                                             r"\(mapping.fc0.weight\).*use an earlier checkpoint"):
        load_checkpoint(target, str(tmp_path / "diverged.pth"))


def test_a_pth_that_would_run_code_is_refused_by_name_without_advice_to_disable_the_check(edge_pair, tmp_path):
    marker = tmp_path / "pwned.txt"

    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    torch.save({"w": Exploit()}, tmp_path / "evil.pth")
    with pytest.raises(EdgestackError, match=r"names \S*system in its pickle: .*could run code") as refused:
        load_checkpoint(edge_pair[0], str(tmp_path / "evil.pth"))
    assert "weights_only" not in str(refused.value) and not marker.exists()
