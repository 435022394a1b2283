"""One registry for every model: name -> builder, named configs, example inputs, io spec, pre/post-processing.

Export, runtime metadata and the CLI read everything they need about a model from its `ModelSpec`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from edgestack.errors import EdgestackError


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output. Strings in `shape` name dynamic axes (e.g. "batch", "height")."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str = "float32"
    doc: str = ""
    values: tuple[int, int] | None = None  # an integer input's allowed values, inclusive (token ids: the vocabulary)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "doc": self.doc} | (
            {"values": list(self.values)} if self.values else {})


@dataclass(frozen=True)
class AxisRange:
    """Allowed sizes of a dynamic axis: min..max, and a multiple it must be (1 = any)."""

    min: int
    max: int
    multiple_of: int = 1

    def as_dict(self) -> dict[str, int]:
        return {"min": self.min, "max": self.max, "multiple_of": self.multiple_of}


@dataclass(frozen=True)
class ModelSpec:
    """Everything the stack knows about one model family."""

    name: str
    task: str
    description: str
    configs: dict[str, dict[str, Any]]
    default_config: str
    build: Callable[[dict[str, Any]], torch.nn.Module]
    """config -> module in deploy form (eval mode, export-ready; training-only parts off)."""
    example_inputs: Callable[[dict[str, Any], int, int, int], tuple[torch.Tensor, ...]]
    """(config, batch, height, width) -> inputs matching `inputs`."""
    inputs: Callable[[dict[str, Any]], list[TensorSpec]]
    outputs: Callable[[dict[str, Any]], list[TensorSpec]]
    axes: Callable[[dict[str, Any]], dict[str, AxisRange]]
    default_size: Callable[[dict[str, Any]], tuple[int, int]]
    parity_sizes: Callable[[dict[str, Any]], list[tuple[int, int]]]
    preprocess: dict[str, Any]
    postprocess: Callable[[dict[str, Any]], dict[str, Any]]
    parity_tolerance: dict[str, float] = field(default_factory=lambda: {"max_abs_over_max_ref": 1e-4})
    """Export fails unless every flavour meets these (keys of edgestack.export.parity.compare; argmax_agreement
    and other agreement figures are minimums, error figures maximums)."""
    load_checkpoint: Callable[[torch.nn.Module, str], dict[str, Any]] | None = None
    """Optional model-specific loader (e.g. MAT's official pickles); the default handles state dicts."""
    extras: dict[str, Any] = field(default_factory=dict)


_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    if spec.default_config not in spec.configs:
        raise ValueError(f"{spec.name}: default config {spec.default_config!r} is not one of its configs")
    _REGISTRY[spec.name] = spec
    return spec


def _ensure_loaded() -> None:
    # Importing the model packages registers them; kept lazy so `import edgestack` stays cheap.
    from edgestack.models import defectseg, detector, mat, pspnet, vglaw  # noqa: F401


def all_models() -> dict[str, ModelSpec]:
    _ensure_loaded()
    return dict(_REGISTRY)


def resolve(name: str, config: str | None = None) -> tuple[ModelSpec, str]:
    """Accept a family ("pspnet") or a config name ("pspnet-r18"); return (spec, config name)."""
    models = all_models()
    if name in models:
        spec = models[name]
        config = config or spec.default_config
    else:
        owners = [s for s in models.values() if name in s.configs]
        if not owners:
            known = ", ".join(sorted(list(models) + [c for s in models.values() for c in s.configs]))
            raise EdgestackError(f"unknown model {name!r}. Known models and configs: {known}")
        spec = owners[0]
        if config not in (None, name):
            raise EdgestackError(f"model {name!r} is already a config; drop --config {config!r}")
        config = name
    if config not in spec.configs:
        raise EdgestackError(
            f"unknown config {config!r} for model {spec.name!r}. Choose one of: {', '.join(spec.configs)}"
        )
    return spec, config


def resolve_recorded(name: str, config: str | None, recorded: str | None, source: str) -> tuple[ModelSpec, str]:
    """resolve(), for the weights in `source`, a training checkpoint that records its config `recorded` (None
    when the file records none): that config, unless it is another model's or the user named another config."""
    spec, resolved = resolve(name, config)
    if recorded is None:
        return spec, resolved
    if recorded not in spec.configs:
        owner = next((s.name for s in all_models().values() if recorded in s.configs), "unknown")
        raise EdgestackError(f"checkpoint {source} holds {recorded} weights, of the {owner} model, not {spec.name}; "
                             f"pass a {spec.name} checkpoint")
    named = config if config not in (None, spec.name) else (name if name in spec.configs else None)
    if named not in (None, recorded):
        raise EdgestackError(f"checkpoint {source} holds {recorded} weights, not {named}; name {recorded} (or the "
                             f"model, {spec.name}) instead")
    return spec, recorded
