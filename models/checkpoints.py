"""Loading weights from files the user names: safetensors, or torch state dicts read with weights_only.

Never unpickles arbitrary objects. Key mismatches are listed in full so the user sees what is wrong.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from edgestack.errors import EdgestackError

_NESTED_KEYS = ("state_dict", "model", "model_state", "G_ema", "generator")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors by name from a .safetensors or a torch .pt/.pth (weights_only), unwrapping common nestings."""
    return state_dict_of(read_checkpoint(path), path)


def read_checkpoint(path: str | Path) -> Any:
    """What a .safetensors or a torch .pt/.pth file holds, read without running code (torch: weights_only); a
    training checkpoint's dict keeps its other entries (config, epoch) beside the weights."""
    path = Path(path)
    if not path.is_file():
        raise EdgestackError(f"checkpoint {path} does not exist; pass the path of a .pth/.pt/.safetensors file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise EdgestackError(f"checkpoint {path} is not a readable safetensors file: {exc}") from None
    try:
        loaded: Any = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's own text suggests weights_only=False, which would run whatever the file names: not passed on.
        refused = re.search(r"GLOBAL (\S+)", str(exc))
        if refused:
            raise EdgestackError(
                f"checkpoint {path} names {refused[1]} in its pickle: it is not a plain state dict, and loading it "
                "could run code. Save the weights with torch.save(model.state_dict(), ...) or as .safetensors"
            ) from None
        detail = next((line for line in str(exc).splitlines() if line.strip() and "weights_only" not in line), "")
        raise EdgestackError(f"checkpoint {path} is not a readable torch file ({detail or 'UnpicklingError'}); use a "
                             "state dict saved with torch.save or a .safetensors file") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise EdgestackError(
            f"checkpoint {path} could not be read as a weights-only torch file ({exc.__class__.__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}). Use a state dict saved with torch.save or a "
            ".safetensors file."
        ) from None
    return loaded


def recorded_config(loaded: Any) -> str | None:
    """The config name an edgestack training checkpoint (last.pt, best.pt) records beside its weights, or None."""
    config = loaded.get("config") if isinstance(loaded, dict) else None
    return config if isinstance(config, str) else None


def state_dict_of(loaded: Any, path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors by name in what read_checkpoint read from `path`, unwrapping common nestings."""
    for key in _NESTED_KEYS:
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
            break
    if not isinstance(loaded, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                               for k, v in loaded.items()):
        raise EdgestackError(f"checkpoint {path} does not hold a state dict of tensors by name")
    return loaded


def apply_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> dict[str, Any]:
    """Load `state` into `model` strictly; on any mismatch raise one error listing every bad key."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    expected = model.state_dict()
    # BatchNorm's step counters steer training momentum only; converters and float-only exports drop them, and
    # PyTorch's own strict load takes such a state dict. The model keeps its own.
    counters = {k: expected[k] for k in set(expected) - set(state) if k.endswith(".num_batches_tracked")}
    state = state | counters
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(state) & set(expected)
        if state[k].shape != expected[k].shape
    )
    # fp16/bf16 weights load into fp32 exactly enough; bool/int/complex ones would be cast into nonsense in silence.
    mistyped = sorted(f"{k}: checkpoint {state[k].dtype} vs model {expected[k].dtype}"
                      for k in set(state) & set(expected)
                      if expected[k].is_floating_point() and not state[k].is_floating_point())
    if missing or unexpected or misshaped or mistyped:
        lines = [f"checkpoint {source} does not fit this model config:"]
        for title, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("mis-shaped", misshaped),
                            ("not floating point", mistyped)):
            if keys:
                lines.append(f"  {title} ({len(keys)}): " + ", ".join(keys[:20]) + (" ..." if len(keys) > 20 else ""))
        lines.append("  check that --model/--config match the checkpoint")
        raise EdgestackError("\n".join(lines))
    # A diverged run's weights load fine and fail much later (export parity, every verdict NaN): named here.
    non_finite = sorted(k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all())
    if non_finite:
        raise EdgestackError(f"checkpoint {source} holds NaN or Inf values in {len(non_finite)} tensor(s) ("
                             f"{', '.join(non_finite[:5])}{' ...' if len(non_finite) > 5 else ''}): the training that "
                             "wrote it diverged; use an earlier checkpoint, or train again with a lower --lr")
    model.load_state_dict(state, strict=True)
    return {"checkpoint": source, "tensors": len(state)}


def load_checkpoint(model: torch.nn.Module, path: str | Path) -> dict[str, Any]:
    return apply_state_dict(model, read_state_dict(path), str(path))
