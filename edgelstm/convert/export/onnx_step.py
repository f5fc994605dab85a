"""ONNX step models: a float32 step graph written with ``onnx.helper``, and its int8 QDQ form.

The graph has the same inputs and outputs as the TFLite step model (``x``, ``h_k``, ``c_k``
-> ``y``, ``h_k_out``, ``c_k_out``) and the same structure (MatMul + Add per input,
Split, Sigmoid, Tanh, Mul, Add). Opset 17, checked with ``onnx.checker``.

The int8 model is quantized by onnxruntime's static QDQ quantizer, calibrated with the
same recorded ``(x, h, c)`` as the TFLite model. State tensors get the same range at both
ends of the recurrence (a ``TensorQuantOverrides`` entry per tensor), like the TFLite model.
"""

from __future__ import annotations

import numpy as np

from edgelstm.errors import ConversionError
from edgelstm.model.network import DenseLayer, EmbeddingLayer, GRULayer, LSTMLayer, Network
from .onnx_ops import OPSET, GraphBuilder, OnnxOps
from .state_plan import StatePlan, group_columns, permuted_network
from .window_graph import gru_cell, per_timestep


def build_float_model(network: Network, plan: StatePlan, batch="batch"):
    """The float32 step graph as an ``onnx.ModelProto`` (checked), state laid out by ``plan``.

    The batch dimension is symbolic by default, so one file steps any number of streams.
    """
    import onnx
    from onnx import TensorProto, helper

    net = permuted_network(network, plan)
    units_of = plan.tensor_units()
    graph = GraphBuilder()
    value_info = lambda name, size: helper.make_tensor_value_info(name, TensorProto.FLOAT, [batch, size])  # noqa: E731
    token = network.input_kind == "token"
    x_info = helper.make_tensor_value_info("x", TensorProto.INT64, [batch, 1]) if token else value_info("x", network.n_features)
    inputs = [x_info] + [value_info(n, len(units_of[n])) for n in plan.state_names()]
    ops = OnnxOps(graph)
    counter = {"k": 0}

    def apply(layer, inputs):
        value = inputs[0]
        if isinstance(layer, (LSTMLayer, GRULayer)):
            k = counter["k"]
            counter["k"] += 1
            if isinstance(layer, GRULayer):  # the window graph's GRU step, on ONNX nodes
                return graph.op("Identity", [gru_cell(ops, layer, value, f"h_{k}")], output_names=[f"h_{k}_out"])
            return _lstm_step(graph, layer, value, plan, k)
        if isinstance(layer, DenseLayer):
            dense = graph.op("Add", [graph.op("MatMul", [value, graph.const(f"{layer.name}_W", layer.kernel)]),
                                     graph.const(f"{layer.name}_b", layer.bias)])
            return graph.activation(layer.activation, dense)
        if isinstance(layer, EmbeddingLayer):  # Gather rows of the table: (batch, 1) ids -> (batch, dim)
            flat = graph.op("Reshape", [value, graph.int_const("flat", [-1])])
            return graph.op("Gather", [graph.const(f"{layer.name}_table", layer.table), flat], axis=0)
        return per_timestep(ops, layer, inputs)  # merges, LayerNormalization, Activation

    value = net.evaluate("x", apply)
    graph.op("Identity", [value], output_names=["y"])
    sizes = {"y": network.output_size, **{f"{n}_out": len(units_of[n]) for n in plan.state_names()}}
    outputs = [value_info(name, sizes[name]) for name in plan.output_names()]
    model = helper.make_model(
        helper.make_graph(graph.nodes, "edgelstm_step", inputs, outputs, graph.initializers),
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="edgelstm",
    )
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _lstm_step(graph: GraphBuilder, layer: LSTMLayer, value: str, plan: StatePlan, k: int) -> str:
    """One LSTM step over the plan's cell-state groups, writing ``c_k..._out`` and ``h_k_out``."""
    h = f"h_{k}"
    gate, act = layer.recurrent_activation, layer.activation
    h_parts, start = [], 0
    for cell_name, size in zip(plan.cell_names(k), plan.layers[k].sizes):
        columns = group_columns(layer.units, start, size)
        from_input = graph.op("Add", [
            graph.op("MatMul", [value, graph.const(f"{layer.name}_W", layer.kernel[:, columns])]),
            graph.const(f"{layer.name}_b", layer.bias[columns]),
        ])
        from_state = graph.op("MatMul", [h, graph.const(f"{layer.name}_U", layer.recurrent_kernel[:, columns])])
        z = graph.op("Add", [from_input, from_state], hint=f"{layer.name}_z")
        i, f, g, o = graph.op("Split", [z], outputs=4, axis=1)
        c_new = graph.op(
            "Add",
            [graph.op("Mul", [graph.activation(gate, f), cell_name]),
             graph.op("Mul", [graph.activation(gate, i), graph.activation(act, g)])],
            output_names=[f"{cell_name}_out"],
        )
        h_parts.append(graph.op("Mul", [graph.activation(gate, o), graph.activation(act, c_new)]))
        start += size
    if len(h_parts) == 1:
        return graph.op("Identity", h_parts, output_names=[f"{h}_out"])
    return graph.op("Concat", h_parts, output_names=[f"{h}_out"], axis=1)


def quantize_int8(float_model_path, out_path, feeds: list, state_ranges: dict, plan: StatePlan) -> None:
    """Static int8 QDQ quantization of the float step model with onnxruntime.

    ``feeds`` is a list of dicts (input name -> float32 array), the recorded calibration steps;
    ``state_ranges`` maps each state tensor of ``plan`` to its (min, max).
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._iter = iter(feeds)

        def get_next(self):
            return next(self._iter, None)

    overrides = {}
    for name in plan.state_names():
        lo, hi = state_ranges[name]
        entry = [{"rmin": np.float32(min(lo, 0.0)), "rmax": np.float32(max(hi, 0.0))}]
        overrides[name] = entry
        overrides[f"{name}_out"] = [dict(entry[0])]
    try:
        quantize_static(
            str(float_model_path),
            str(out_path),
            Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            per_channel=False,
            extra_options={"TensorQuantOverrides": overrides, "ActivationSymmetric": False},
        )
    except Exception as exc:
        raise ConversionError(f"onnxruntime int8 quantization failed: {exc}") from None


def list_ops(model) -> list:
    seen = []
    for node in model.graph.node:
        if node.op_type not in seen:
            seen.append(node.op_type)
    return seen
