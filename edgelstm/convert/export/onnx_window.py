"""ONNX window models: the unrolled window graph of :mod:`.window_graph` as ONNX nodes.

Same inputs and outputs as the TFLite window model (``x``: ``(batch, T, features)`` or
``(batch, T)`` int64 ids; ``y``), opset 17, batch symbolic. The int8 model is quantized by
:func:`.onnx_step.quantize_int8` (static QDQ), calibrated on windows.
"""

from __future__ import annotations


from edgelstm.model.network import Network
from . import window_graph
from .onnx_ops import OPSET, GraphBuilder, OnnxOps


def build_float_model(network: Network, batch="batch"):
    """The float32 window graph as a checked ``onnx.ModelProto``."""
    import onnx
    from onnx import TensorProto, helper

    graph = GraphBuilder()
    steps = network.window
    token = network.input_kind == "token"
    if token:
        x_info = helper.make_tensor_value_info("x", TensorProto.INT64, [batch, steps])
    else:
        x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, steps, network.n_features])
    x = "x"
    if token:  # one Gather for the whole window (batch, T) -> (batch, T, dim)
        x = graph.op("Gather", [graph.const("table", network.layers[0].table), "x"], axis=0)
    pieces = graph.op("Split", [x], outputs=steps, axis=1) if steps > 1 else [x]
    axis = graph.int_const("axis", [1])
    parts = [graph.op("Squeeze", [piece, axis]) for piece in pieces]
    value = window_graph.lower(network, OnnxOps(graph), parts, embedded=token)
    if isinstance(value, list):
        stacked = [graph.op("Unsqueeze", [v, axis]) for v in value]
        graph.op("Concat", stacked, output_names=["y"], axis=1)
        y_shape = [batch, len(value), network.output_size]
    else:
        graph.op("Identity", [value], output_names=["y"])
        y_shape = [batch, network.output_size]
    model = helper.make_model(
        helper.make_graph(graph.nodes, "edgelstm_window", [x_info],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)], graph.initializers),
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="edgelstm",
    )
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model
