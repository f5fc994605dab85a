"""The dense head after the recurrent layers: Gemm, MatMul (+ Add), per-feature Add / Mul, activations."""

from __future__ import annotations

import dataclasses

import numpy as np

from edgelstm.model.network import DenseLayer

from .values import Axis, Data, Head, _DENSE_ACTIVATIONS, _int_size, _layer_name


class _Head:
    """The dense head after the recurrent layers: Gemm, MatMul (+ Add), per-feature Add / Mul, activations. A part of
    :class:`~.lowering._Lowering`."""

    # -- dense heads ---------------------------------------------------------------------------

    def _dense_input(self, node, data: Data) -> int:
        if data.roles[-1] != "feat" or "stack" in data.roles:
            self.fail(node, f"applies weights to a tensor with axes {self._axes_text(data)}; "
                            "expected features on the last axis")
        return sum(_int_size(p.size) for p in data.parts)

    def _append_dense(self, node, data: Data, kernel: np.ndarray, bias: np.ndarray) -> Data:
        size = self._dense_input(node, data)
        if kernel.ndim != 2 or kernel.shape[0] != size:
            self.fail(node, f"weight of shape {kernel.shape} does not fit {size} input features")
        name = _layer_name(node, f"dense_{node.output[0]}")
        layer = DenseLayer(name, np.ascontiguousarray(kernel, dtype=np.float32), bias.astype(np.float32), "linear")
        parts = data.parts
        if len(parts) == 1 and isinstance(parts[0], Head):
            head = Head(parts[0].source, parts[0].layers + (layer,))
        else:
            head = Head(parts, (layer,))
        axes = list(data.axes)
        axes[-1] = Axis("feat", kernel.shape[1])
        return Data(tuple(axes), ((head,),))

    def _open_dense(self, node, data: Data):
        """The data's last dense layer if one can still absorb a bias, scale or activation, else a new identity one."""
        size = self._dense_input(node, data)
        parts = data.parts
        if len(parts) == 1 and isinstance(parts[0], Head) and parts[0].layers[-1].activation == "linear":
            return data, parts[0]
        identity = self._append_dense(node, data, np.eye(size, dtype=np.float32), np.zeros(size, np.float32))
        return identity, identity.parts[0]

    @staticmethod
    def _replace_last(data: Data, head: Head, **changes) -> Data:
        layer = dataclasses.replace(head.layers[-1], **changes)
        return Data(data.axes, ((Head(head.source, head.layers[:-1] + (layer,)),),))

    def _gemm(self, node, inputs, attrs) -> Data:
        data = inputs[0]
        if len(data.axes) != 2:
            self.fail(node, f"Gemm on a tensor with axes {self._axes_text(data)}")
        if attrs.get("transA", 0):
            self.fail(node, "transA=1 is not supported")
        weight = self._weights(node, inputs, 1, "B")
        kernel = (weight.T if attrs.get("transB", 0) else weight) * np.float32(attrs.get("alpha", 1.0))
        out = kernel.shape[1] if kernel.ndim == 2 else 0
        bias = np.zeros(out, np.float32)
        if len(inputs) > 2 and inputs[2] is not None:
            c = self._weights(node, inputs, 2, "C")
            if c.size not in (1, out) or (c.ndim == 2 and c.shape[0] != 1) or c.ndim > 2:
                self.fail(node, f"bias C of shape {c.shape} is not a per-output bias")
            bias = np.broadcast_to(c.reshape(-1), (out,)) * np.float32(attrs.get("beta", 1.0))
        return self._append_dense(node, data, kernel, np.asarray(bias, np.float32))

    def _matmul(self, node, inputs, attrs) -> Data:
        data, weight = inputs[0], inputs[1]
        if not isinstance(data, Data) or isinstance(weight, Data):
            self.fail(node, "only data @ constant weight is supported")
        kernel = self._weights(node, inputs, 1, "weight")
        if kernel.ndim != 2:
            self.fail(node, f"weight of rank {kernel.ndim}; expected a matrix")
        return self._append_dense(node, data, kernel, np.zeros(kernel.shape[1], np.float32))

    def _per_feature(self, node, data: Data, value, what: str) -> np.ndarray:
        """A constant operand broadcast over the feature axis only (a bias or per-feature scale)."""
        array = self._weights(node, [value], 0, what)
        size = self._dense_input(node, data)
        if array.ndim > len(data.axes) or any(d != 1 for d in array.shape[:-1]) or \
                (array.ndim and array.shape[-1] not in (1, size)):
            self.fail(node, f"{what} of shape {array.shape} does not broadcast over the features only")
        return np.broadcast_to(array.reshape(-1), (size,)).astype(np.float32)

    def _operands(self, node, inputs):
        """(data, constant, data_first) of a binary op with one data and one constant operand."""
        a, b = inputs[0], inputs[1]
        if isinstance(a, Data) and isinstance(b, Data):
            self.fail(node, "combines two tensors computed from the input (a residual or gating branch); "
                            "only chains of layers are supported")
        if isinstance(a, Data):
            return a, b, True
        return b, a, False

    def _add(self, node, inputs, attrs) -> Data:
        data, constant, data_first = self._operands(node, inputs)
        bias = self._per_feature(node, data, constant, "added constant")
        if node.op_type == "Sub":
            if not data_first:
                data = self._scale(node, data, np.float32(-1.0))
                data_first = True
            else:
                bias = -bias
        data, head = self._open_dense(node, data)
        layer = head.layers[-1]
        return self._replace_last(data, head, bias=(layer.bias + bias).astype(np.float32))

    def _mul(self, node, inputs, attrs) -> Data:
        data, constant, data_first = self._operands(node, inputs)
        scale = self._per_feature(node, data, constant, "factor")
        if node.op_type == "Div":
            if not data_first:
                self.fail(node, "divides a constant by the data")
            scale = (np.float32(1.0) / scale).astype(np.float32)
        return self._scale(node, data, scale)

    def _scale(self, node, data: Data, scale) -> Data:
        data, head = self._open_dense(node, data)
        layer = head.layers[-1]
        return self._replace_last(data, head, kernel=(layer.kernel * scale).astype(np.float32),
                                  bias=(layer.bias * scale).astype(np.float32))

    def _activation(self, node, data: Data, attrs) -> Data:
        name = _DENSE_ACTIVATIONS[node.op_type]
        if node.op_type == "Softmax":
            axis = attrs.get("axis", -1 if self.opset >= 13 else 1) % len(data.axes)
            if axis != len(data.axes) - 1 or (self.opset < 13 and len(data.axes) > 2):
                self.fail(node, "softmax over an axis other than the features")
        data, head = self._open_dense(node, data)
        return self._replace_last(data, head, activation=name)
