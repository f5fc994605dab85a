"""ONNX's side of the op interface: what both ONNX exporters (step and window) are written in.

:class:`GraphBuilder` collects nodes and initializers with unique names (opset :data:`OPSET`);
:class:`OnnxOps` implements :class:`.window_graph.Ops` on it. The step exporter
(:mod:`.onnx_step`) and the window exporter (:mod:`.onnx_window`) both import this module
and not each other.
"""

from __future__ import annotations

import numpy as np

from edgelstm.errors import ConversionError

from . import window_graph

OPSET = 17


class GraphBuilder:
    """Collects nodes and initializers with unique names."""

    def __init__(self):
        from onnx import helper, numpy_helper

        self.helper = helper
        self.numpy_helper = numpy_helper
        self.nodes = []
        self.initializers = []
        self._count = 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def int_const(self, hint: str, values) -> str:
        name = self.name(hint)
        self.initializers.append(self.numpy_helper.from_array(np.asarray(values, np.int64), name))
        return name

    def const(self, hint: str, array) -> str:
        name = self.name(hint)
        self.initializers.append(self.numpy_helper.from_array(np.asarray(array, np.float32), name))
        return name

    def op(self, op_type: str, inputs: list, hint: str | None = None, outputs: int = 1, output_names=None, **attrs):
        names = output_names or [self.name(hint or op_type.lower()) for _ in range(outputs)]
        self.nodes.append(self.helper.make_node(op_type, inputs, names, name=self.name(op_type), **attrs))
        return names if outputs > 1 else names[0]

    def activation(self, name: str, value: str) -> str:
        if name == "linear":
            return value
        if name == "relu":
            return self.op("Relu", [value])
        if name == "sigmoid":
            return self.op("Sigmoid", [value])
        if name == "tanh":
            return self.op("Tanh", [value])
        if name == "hard_sigmoid":
            return self.op("HardSigmoid", [value], alpha=1.0 / 6.0, beta=0.5)
        if name == "hard_sigmoid_keras2":
            return self.op("HardSigmoid", [value], alpha=0.2, beta=0.5)
        if name == "swish":
            return self.op("Mul", [value, self.op("Sigmoid", [value])])
        if name == "gelu":  # opset 17 has no Gelu: 0.5 x (1 + erf(x / sqrt 2))
            scaled = self.op("Mul", [value, self.const("inv_sqrt2", np.float32(1.0 / np.sqrt(2.0)))])
            erf_plus_one = self.op("Add", [self.op("Erf", [scaled]), self.const("one", np.float32(1.0))])
            return self.op("Mul", [self.op("Mul", [value, erf_plus_one]), self.const("half", np.float32(0.5))])
        if name == "softmax":
            return self.op("Softmax", [value], axis=-1)
        raise ConversionError(f"activation '{name}' has no ONNX mapping")


class OnnxOps(window_graph.Ops):
    """The op interface on a :class:`GraphBuilder`; each weight array is stored once."""

    def __init__(self, graph: GraphBuilder):
        self.graph = graph
        self._constants = {}  # content -> initializer name: each weight array stored once

    def constant(self, hint: str, array):
        key = window_graph.constant_key(array)
        if key not in self._constants:
            self._constants[key] = self.graph.const(hint, array)
        return self._constants[key]

    def dense(self, x, kernel, bias=None):
        value = self.graph.op("MatMul", [x, self.constant("W", kernel)])
        return value if bias is None else self.graph.op("Add", [value, self.constant("b", bias)])

    def add(self, a, b):
        return self.graph.op("Add", [a, b])

    def sub(self, a, b):
        return self.graph.op("Sub", [a, b])

    def mul(self, a, b):
        return self.graph.op("Mul", [a, b])

    def mul_const(self, a, vector):
        return self.graph.op("Mul", [a, self.constant("k", np.asarray(vector, np.float32))])

    def add_const(self, a, vector):
        return self.graph.op("Add", [a, self.constant("k", np.asarray(vector, np.float32))])

    def activation(self, name, value):
        return self.graph.activation(name, value)

    def split(self, value, parts):
        return self.graph.op("Split", [value], outputs=parts, axis=1) if parts > 1 else [value]

    def concat(self, values):
        return self.graph.op("Concat", list(values), axis=1)

    def maximum(self, a, b):
        return self.graph.op("Max", [a, b])

    def gather(self, table, ids):
        return self.graph.op("Gather", [self.constant("table", table), ids], axis=0)

    def minimum(self, a, b):
        return self.graph.op("Min", [a, b])

    def stack(self, values):
        axis = self.graph.int_const("axis", [1])
        parts = [self.graph.op("Unsqueeze", [value, axis]) for value in values]
        return self.graph.op("Concat", parts, axis=1) if len(parts) > 1 else parts[0]

    def unstack(self, value, count):
        axis = self.graph.int_const("axis", [1])
        pieces = self.graph.op("Split", [value], outputs=count, axis=1) if count > 1 else [value]
        return [self.graph.op("Squeeze", [piece, axis]) for piece in pieces]

    def matmul(self, a, b, transpose_b=False):
        if transpose_b:
            b = self.graph.op("Transpose", [b], perm=[0, 2, 1])
        return self.graph.op("MatMul", [a, b])

    def steps(self, value, start, stop):
        g = self.graph
        return g.op("Slice", [value, g.int_const("start", [start]), g.int_const("stop", [stop]), g.int_const("axes", [1])])

    def split_last(self, value, parts):
        return self.graph.op("Split", [value], outputs=parts, axis=-1) if parts > 1 else [value]

    def concat_axis(self, values, axis):
        return self.graph.op("Concat", list(values), axis=axis)

    def swap_last(self, value):
        return self.graph.op("Transpose", [value], perm=[0, 2, 1])

    def layer_norm(self, x, gamma, beta, epsilon):
        """ONNX's own LayerNormalization (opset 17) over the last axis."""
        return self.graph.op("LayerNormalization", [x, self.constant("gamma", gamma), self.constant("beta", beta)],
                             axis=-1, epsilon=float(epsilon))
