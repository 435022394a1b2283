"""torch -> ONNX (portable and plugins flavours), parity checks, bundles."""

from edgestack.export.pipeline import export_bundle

__all__ = ["export_bundle"]
