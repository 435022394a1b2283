"""Model registry: `edgestack.models.resolve("pspnet-r18")` -> (ModelSpec, config name)."""

from edgestack.models.registry import (
    AxisRange,
    ModelSpec,
    TensorSpec,
    all_models,
    register,
    resolve,
    resolve_recorded,
)

__all__ = ["AxisRange", "ModelSpec", "TensorSpec", "all_models", "register", "resolve", "resolve_recorded"]
