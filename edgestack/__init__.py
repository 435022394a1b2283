"""edgestack: deployment-optimized inference for dense-prediction vision models."""

__version__ = "0.1.0"

from edgestack.errors import EdgestackError  # noqa: E402

__all__ = ["EdgestackError", "__version__"]
