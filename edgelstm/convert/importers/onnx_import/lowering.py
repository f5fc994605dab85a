"""The lowering: the graph's nodes interpreted abstractly, in dependency order, into a Network.

Each kind of node has its part (:mod:`.folding`, :mod:`.recurrent`, :mod:`.layout`,
:mod:`.head`); :mod:`.resolution` turns the output into layers.
"""

from __future__ import annotations

from edgelstm.errors import ModelFormatError, UnsupportedLayerError
from edgelstm.model.network import Network

from .folding import _Folding
from .head import _Head
from .layout import _Layout
from .recurrent import _Recurrents
from .resolution import _Resolution
from .values import (
    Axis, COMPUTE_OPS, Data, Dim, GLUE_OPS, InputPart, Known, Opaque, StateInput, Uniform, _FLOAT_TYPES,
    _attributes, _node_reads, _settle
)


class _Lowering(_Folding, _Recurrents, _Layout, _Head, _Resolution):
    """Interprets the graph abstractly (see the module docstring) and builds the Network."""

    def __init__(self, model, source_name: str, window: int | None):
        self.model = model
        self.graph = model.graph
        self.source = source_name
        self.window = window
        self.values: dict = {}
        self.state_inputs: list = []  # graph inputs used as initial states
        self.time_tag: int | None = None  # which input axis is time (known at the first LSTM/GRU)
        self.time_size = None
        self.input_name = ""
        self.input_axes: tuple = ()
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        self.rnn_count = 0

    # -- errors --------------------------------------------------------------------------------

    @staticmethod
    def where(node) -> str:
        name = node.name or (f"output '{node.output[0]}'" if node.output else "unnamed")
        return f"node '{name}' ({node.op_type})"

    def fail(self, node, message: str):
        raise UnsupportedLayerError(f"{self.source}: {self.where(node)}: {message}")

    def unsupported(self, node):
        raise UnsupportedLayerError(
            f"{self.source}: {self.where(node)} is not supported; edgelstm imports LSTM/GRU models from ONNX with "
            f"these ops: {', '.join(COMPUTE_OPS)} and the glue exporters emit ({', '.join(GLUE_OPS)})"
        )

    # -- entry ---------------------------------------------------------------------------------

    def run(self) -> Network:
        from onnx import numpy_helper

        graph = self.graph
        if not graph.output:
            raise ModelFormatError(f"{self.source}: the graph declares no output; damaged or not a model")
        if len(graph.output) != 1:
            raise UnsupportedLayerError(
                f"{self.source}: the graph has {len(graph.output)} outputs ({', '.join(o.name for o in graph.output)}); "
                "edgelstm converts models with one output (export only the prediction, not (out, h_n))"
            )
        initializers = {}
        for tensor in graph.initializer:
            try:
                initializers[tensor.name] = Known(numpy_helper.to_array(tensor))
            except Exception as exc:
                raise ModelFormatError(f"{self.source}: initializer '{tensor.name}' is unreadable ({exc})") from None
        self.values.update(initializers)
        self._bind_inputs([i for i in graph.input if i.name not in initializers])
        for node in self._needed_nodes(graph.output[0].name):
            self._evaluate(node)
        return self._network(self.values[graph.output[0].name])

    def _needed_nodes(self, output: str) -> list:
        """The nodes ``output`` depends on, in dependency order (iterative depth-first post-order)."""
        producer = {}
        for node in self.graph.node:
            for name in node.output:
                if name:
                    producer[name] = node
        order, done, visiting = [], set(), set()
        stack = [(producer.get(output), False)]
        while stack:
            node, expanded = stack.pop()
            if node is None or id(node) in done:
                continue
            if expanded:
                visiting.discard(id(node))
                done.add(id(node))
                order.append(node)
                continue
            if id(node) in visiting:
                raise ModelFormatError(f"{self.source}: the graph has a cycle through {self.where(node)}")
            visiting.add(id(node))
            stack.append((node, True))
            for name in _node_reads(node):
                if name and name not in self.values:
                    stack.append((producer.get(name), False))
        return order

    def _bind_inputs(self, inputs: list) -> None:
        """Tell the model input (the one reaching an LSTM/GRU's X) from initial-state inputs."""
        consumers: dict = {}
        for node in self.graph.node:
            for slot, name in enumerate(node.input):
                consumers.setdefault(name, []).append((node, slot))
        data_inputs = [i for i in inputs if self._reaches_rnn_input(i.name, consumers)]
        if not data_inputs:
            floats = [i for i in inputs if i.type.tensor_type.elem_type in _FLOAT_TYPES]
            data_inputs = floats[:1] if len(floats) == 1 else []
        if len(data_inputs) != 1:
            raise UnsupportedLayerError(
                f"{self.source}: cannot tell the model input: {len(data_inputs)} of the graph inputs "
                f"({', '.join(i.name for i in inputs) or 'none'}) feed an LSTM/GRU's sequence input; expected one"
            )
        data = data_inputs[0]
        for other in inputs:
            if other is not data:
                self.values[other.name] = StateInput(other.name)
        tensor_type = data.type.tensor_type
        if tensor_type.elem_type not in _FLOAT_TYPES:
            raise UnsupportedLayerError(
                f"{self.source}: input '{data.name}' is not a float tensor (element type {tensor_type.elem_type}); "
                "token-id (Embedding) models are imported from Keras only"
            )
        dims = list(tensor_type.shape.dim)
        if len(dims) != 3:
            raise UnsupportedLayerError(
                f"{self.source}: input '{data.name}' has rank {len(dims)}; expected (batch, time, features) "
                "or (time, batch, features)"
            )
        sizes = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else Dim(d.dim_param or f"axis{k}")
                 for k, d in enumerate(dims)]
        self.input_name = data.name
        self.input_axes = (Axis("in", sizes[0], 0), Axis("in", sizes[1], 1), Axis("feat", sizes[2]))
        self.values[data.name] = Data(self.input_axes, ((InputPart(sizes[2]),),))

    @staticmethod
    def _reaches_rnn_input(name: str, consumers: dict) -> bool:
        """Does ``name`` flow into slot 0 (X) of an LSTM/GRU (not through one)?"""
        seen, frontier = set(), [name]
        while frontier:
            current = frontier.pop()
            for node, slot in consumers.get(current, ()):
                if node.op_type in ("LSTM", "GRU"):
                    if slot == 0:
                        return True
                    continue
                for out in node.output:
                    if out and out not in seen:
                        seen.add(out)
                        frontier.append(out)
        return False

    # -- dispatch ------------------------------------------------------------------------------

    def _evaluate(self, node) -> None:
        if node.domain not in ("", "ai.onnx"):
            self.unsupported(node)
        for name in node.input:
            if name and name not in self.values:
                raise ModelFormatError(f"{self.source}: {self.where(node)} reads '{name}', which nothing produces")
        inputs = [self.values[name] if name else None for name in node.input]
        attrs = _attributes(node)
        op = node.op_type
        if op == "Constant":
            outputs = [self._constant(node, attrs)]
        elif op == "If":
            outputs = self._if(node, inputs, attrs)
        elif op in ("LSTM", "GRU"):
            outputs = self._recurrent(node, inputs, attrs)
        elif any(isinstance(v, Data) for v in inputs):
            outputs = self._on_data(node, inputs, attrs)
        elif any(isinstance(v, StateInput) for v in inputs):
            outputs = self._on_state_input(node, inputs)
        elif any(isinstance(v, Opaque) for v in inputs):
            outputs = [next(v for v in inputs if isinstance(v, Opaque))] * len(node.output)
        elif any(isinstance(v, Uniform) for v in inputs):
            outputs = [self._on_uniform(node, inputs, attrs)]
        else:
            outputs = [self._fold(node, inputs, attrs)]
        for name, value in zip(node.output, outputs):
            if name:
                self.values[name] = _settle(value)
