"""MAT weights: official training/generator pickles (read without running their code), .pth/.pt, .safetensors.

The official pickles are written by StyleGAN2-ADA's `torch_utils.persistence`: every network object is
reduced to `_reconstruct_persistent_obj(meta)`, where meta holds the class's source code ('module_src'),
'class_name' and 'state' (the module's __dict__). A plain `pickle.load` would exec that source. Our
unpickler resolves only the names needed to rebuild tensors and dicts, and replaces every class the
pickle names with an inert placeholder that records what the pickle hands it; anything else is refused.
"""

from __future__ import annotations

import collections
import io
import logging
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from edgestack.errors import EdgestackError
from edgestack.models.checkpoints import apply_state_dict, read_state_dict

log = logging.getLogger(__name__)


class Placeholder:
    """Stands in for any module class in the pickle; keeps constructor args and state, runs nothing."""

    qualified_name = "?"

    def __init__(self, *args: Any) -> None:
        self.args = args
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


class PersistentObject(Placeholder):
    """What `_reconstruct_persistent_obj(meta)` becomes: the class name and state, the source never executed."""

    def __init__(self, meta: Any) -> None:
        super().__init__()
        if not isinstance(meta, dict) or "state" not in meta:
            raise pickle.UnpicklingError("persistence record without a 'state'")
        self.class_name = str(meta.get("class_name"))
        self.state = meta["state"]


def _placeholder_class(module: str, name: str) -> type[Placeholder]:
    return type(name, (Placeholder,), {"qualified_name": f"{module}.{name}"})


def _reconstructor(cls: Any, base: Any, state: Any) -> Placeholder:
    """copyreg._reconstructor without calling base.__new__/__init__: only placeholders are built."""
    if not (isinstance(cls, type) and issubclass(cls, Placeholder)):
        raise pickle.UnpicklingError("copyreg._reconstructor on a non-placeholder class")
    return cls()


def _storage_from_bytes(data: bytes) -> Any:
    """torch.storage._load_from_bytes, but through the weights-only loader."""
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): PersistentObject,
    # The generator's constructor kwargs (kept by persistence in _init_kwargs) hold EasyDicts, MAT's train.py
    # passes mapping_kwargs=dnnlib.EasyDict(): a dict subclass, rebuilt as a plain dict.
    ("dnnlib.util", "EasyDict"): dict,
}
# Classes whose instances appear in the stored state (torch containers, numpy scalars in attributes like
# weight_gain); they become placeholders, so naming them cannot run anything.
_PLACEHOLDER_MODULES = ("torch.nn.modules.", "numpy.core.multiarray", "numpy._core.multiarray")
_PLACEHOLDER_NAMES = {("builtins", "object"), ("numpy", "dtype")}


class RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if (module, name) in _PLACEHOLDER_NAMES or module.startswith(_PLACEHOLDER_MODULES):
            return _placeholder_class(module, name)
        raise EdgestackError(
            f"refusing to load {module}.{name} from the pickle: only tensors, dicts and network records are "
            "allowed (this file is not an official MAT pickle, or it would run code). Convert trusted "
            "weights to .safetensors instead"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise EdgestackError("pickle holds external references (persistent ids); it is not an official MAT pickle")


def _state_of(obj: Any) -> dict[str, Any] | None:
    state = obj.state if isinstance(obj, Placeholder) else None
    return state if isinstance(state, dict) and "_modules" in state else None


# MAT's generator is about 10 modules deep and 2,000 modules in all; a record past these limits loops or was
# made to exhaust us.
MAX_MODULE_DEPTH = 64
MAX_MODULES = 100_000


def module_tensors(root: Any) -> dict[str, torch.Tensor]:
    """Parameters and persistent buffers of a rebuilt module record, by module path (like state_dict). The record
    is untrusted: a field of the wrong type, a loop or an absurd size is refused with an EdgestackError."""
    out: dict[str, torch.Tensor] = {}
    pending, visited = [("", root)], 0
    while pending:
        prefix, obj = pending.pop()
        state = _state_of(obj)
        if state is None:
            continue
        visited += 1
        if prefix.count(".") > MAX_MODULE_DEPTH or visited > MAX_MODULES:
            raise EdgestackError(f"its module records nest deeper than {MAX_MODULE_DEPTH} levels or number over "
                                 f"{MAX_MODULES} (a loop?); it is not an official MAT pickle")
        groups = {group: state.get(group) or {} for group in ("_parameters", "_buffers", "_modules")}
        for group, members in groups.items():
            if not isinstance(members, dict) or not all(isinstance(name, str) for name in members):
                raise EdgestackError(f"{group} of module {prefix.rstrip('.') or 'G_ema'} is not a dict by name; it "
                                     "is not an official MAT pickle")
        skip = state.get("_non_persistent_buffers_set")
        skip = skip if isinstance(skip, set) else set()
        for group in ("_parameters", "_buffers"):
            for name, tensor in groups[group].items():
                if isinstance(tensor, torch.Tensor) and name not in skip:
                    out[prefix + name] = tensor.detach()
        pending += [(f"{prefix}{name}.", child) for name, child in groups["_modules"].items()]
    return out


def read_pickle(path: str | Path) -> dict[str, torch.Tensor]:
    """G_ema's tensors from an official MAT pickle (a training snapshot dict, or a bare generator record)."""
    try:
        with open(path, "rb") as f:
            root = RestrictedUnpickler(f).load()
    except EdgestackError as exc:
        raise EdgestackError(f"checkpoint {path}: {exc}") from None
    except Exception as exc:  # a damaged stream raises many types; all mean "not a readable pickle"
        raise EdgestackError(
            f"checkpoint {path} is not a readable MAT pickle ({exc.__class__.__name__}: {exc}); re-download it"
        ) from None
    generator = root.get("G_ema") if isinstance(root, dict) else root
    try:
        tensors = module_tensors(generator)
    except EdgestackError as exc:
        raise EdgestackError(f"checkpoint {path}: {exc}") from None
    if not tensors:
        found = ", ".join(map(str, root)) if isinstance(root, dict) else type(root).__name__
        raise EdgestackError(f"checkpoint {path} holds no 'G_ema' generator (found: {found}); pass a MAT "
                             "network pickle such as Places_512_FullData.pkl")
    return tensors


def load_checkpoint(model: torch.nn.Module, path: str) -> dict[str, Any]:
    """Load .pkl (official, restricted unpickling), .pth/.pt (weights-only) or .safetensors into `model`."""
    file = Path(path)
    if not file.is_file():
        raise EdgestackError(f"checkpoint {path} does not exist; pass the path of a .pkl/.pth/.pt/.safetensors file")
    if file.suffix == ".pkl":
        state = read_pickle(file)
    elif file.suffix in (".pth", ".pt", ".safetensors"):
        state = read_state_dict(file)
    else:
        raise EdgestackError(f"checkpoint {path}: unknown format {file.suffix!r}; use .pkl (official MAT), "
                             ".pth/.pt or .safetensors")
    _check_resolution(model, state, path)
    ignored = []
    if file.suffix == ".pkl":
        # As the official loader (copy_params_and_buffers, require_all): every tensor of the model must be there,
        # and others are ignored. Released pickles may carry buffers of an earlier internal version.
        expected = model.state_dict().keys()
        ignored = sorted(key for key in state if key.removeprefix("module.") not in expected)
        if ignored:
            log.warning("checkpoint %s: ignoring %d tensor(s) this MAT does not have, as the official loader does: %s",
                        path, len(ignored), ", ".join(ignored[:10]) + (" ..." if len(ignored) > 10 else ""))
            state = {key: value for key, value in state.items() if key not in ignored}
    return apply_state_dict(model, state, str(path)) | {"format": file.suffix.lstrip(".")} | (
        {"ignored_tensors": ignored} if ignored else {})


DECODER_BLOCK = re.compile(r"synthesis\.dec\.Dec_\d+x(\d+)\.")  # a decoder block's key: its output size


def _check_resolution(model: torch.nn.Module, state: dict[str, torch.Tensor], path: str) -> None:
    """A checkpoint for another resolution has different decoder blocks; say so plainly."""
    def resolution(keys) -> int | None:
        sizes = [int(found[1]) for found in map(DECODER_BLOCK.match, keys) if found]
        return max(sizes) if sizes else None

    have, want = resolution(state), resolution(model.state_dict())
    if have is not None and want is not None and have != want:
        raise EdgestackError(f"checkpoint {path} is for {have}x{have} images but this MAT config is {want}x{want}; "
                             "pick the config that matches the checkpoint (mat-512 for the official 512 models, "
                             "mat-256 for the official CelebA-HQ 256 one)")
