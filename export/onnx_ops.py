"""Schemas for our plugin nodes, so onnxscript can emit them and onnx.checker can validate them.

TensorRT's ONNX parser maps an unknown op to a registered plugin by op_type alone (it ignores the
domain), so each op_type here is the plugin's name and never an ONNX or TensorRT built-in.
"""

from __future__ import annotations

import onnx
from onnx.defs import OpSchema
from onnxscript.values import Op, Opset

PLUGIN_DOMAIN = "edgestack"
PLUGIN_OPSET_VERSION = 1
_ATTRIBUTE_TYPES = {
    int: OpSchema.AttrType.INT,
    float: OpSchema.AttrType.FLOAT,
    str: OpSchema.AttrType.STRING,
    list: OpSchema.AttrType.INTS,
}


def plugin_op(op_type: str, inputs: list[str], outputs: list[str], attributes: dict[str, type]) -> Op:
    """The onnxscript Op for a plugin node, registering its schema the first time it is asked for."""
    try:
        onnx.defs.get_schema(op_type, PLUGIN_OPSET_VERSION, PLUGIN_DOMAIN)
    except onnx.defs.SchemaError:
        schema = OpSchema(
            op_type,
            PLUGIN_DOMAIN,
            PLUGIN_OPSET_VERSION,
            doc=f"edgestack TensorRT plugin {op_type}",
            inputs=[OpSchema.FormalParameter(name, "T") for name in inputs],
            outputs=[OpSchema.FormalParameter(name, "T") for name in outputs],
            type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "fp32 or fp16")],
            attributes=[
                OpSchema.Attribute(name, _ATTRIBUTE_TYPES[kind], required=False) for name, kind in attributes.items()
            ],
        )
        onnx.defs.register_schema(schema)
    return Op(Opset(PLUGIN_DOMAIN, PLUGIN_OPSET_VERSION), op_type)
