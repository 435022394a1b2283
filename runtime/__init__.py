"""Run bundles: `edgestack.runtime.load(path, backend="auto")` -> Engine."""

from edgestack.runtime.engine import BACKENDS, Engine, load

__all__ = ["BACKENDS", "Engine", "load"]
