"""Schemas for our plugin nodes, so onnxscript can emit them and onnx.checker can validate them.

TensorRT's ONNX parser maps an unknown op to a registered plugin by op_type alone (it ignores the
domain), so each op_type here is the plugin's name and never an ONNX or TensorRT built-in.
"""

from __future__ import annotations

import onnx
from onnx.defs import OpSchema
from onnxscript.values import Op, Opset

from edgestack.kernels import PluginSignature

PLUGIN_DOMAIN = "edgestack"
PLUGIN_OPSET_VERSION = 1
_ATTRIBUTE_TYPES = {
    int: OpSchema.AttrType.INT,
    float: OpSchema.AttrType.FLOAT,
    str: OpSchema.AttrType.STRING,
    list: OpSchema.AttrType.INTS,
}


def plugin_op(plugin: PluginSignature) -> Op:
    """The onnxscript Op for a plugin node, registering its schema the first time it is asked for."""
    try:
        onnx.defs.get_schema(plugin.name, PLUGIN_OPSET_VERSION, PLUGIN_DOMAIN)
    except onnx.defs.SchemaError:
        schema = OpSchema(
            plugin.name,
            PLUGIN_DOMAIN,
            PLUGIN_OPSET_VERSION,
            doc=f"edgestack TensorRT plugin {plugin.name} version {plugin.version}",
            inputs=[OpSchema.FormalParameter(name, "T") for name in plugin.inputs],
            outputs=[OpSchema.FormalParameter(name, "T") for name in plugin.outputs],
            type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "fp32 or fp16")],
            attributes=[
                OpSchema.Attribute(name, _ATTRIBUTE_TYPES[kind], required=False)
                for name, kind in plugin.attributes.items()
            ],
        )
        onnx.defs.register_schema(schema)
    return Op(Opset(PLUGIN_DOMAIN, PLUGIN_OPSET_VERSION), plugin.name)
