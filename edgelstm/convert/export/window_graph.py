"""Window models: a whole window in, the source model's output out, unrolled over time.

Bidirectional layers, autoencoders (encoder, RepeatVector, decoder), Conv1D front ends and
``go_backwards`` layers cannot stream one step at a time, so they are exported as one graph
over a fixed window of ``T`` timesteps. The graph is written once, here, against a small
set of primitive operations (:class:`Ops`); :mod:`.tflite_window` gives them TensorFlow
meaning (converted to FULLY_CONNECTED, LOGISTIC, TANH, MUL, ADD, SUB, SPLIT, RESHAPE,
CONCATENATION, PACK, MAXIMUM: all int8 ops on the Edge TPU's list) and :mod:`.onnx_window`
ONNX nodes. The lowering mirrors :func:`edgelstm.model.reference.forward_sequence` step for step.

Unrolled, every timestep is its own set of ops: the window's input is split into ``T``
tensors of ``(batch, features)`` and a sequence is a Python list of them. At ``t = 0`` the
recurrent state is zero, so the first step of each layer skips its recurrent matmul (and
the zero constants the quantizer would otherwise have to place).
"""

from __future__ import annotations

import numpy as np

from edgelstm.model.network import (BidirectionalLayer, Conv1DLayer, DenseLayer, EmbeddingLayer, GRULayer, LSTMLayer, Network,
                       Pooling1DLayer, RepeatVectorLayer, TimestepLayer)


class Ops:
    """The primitive operations a window graph needs; each backend implements them.

    Tensors are backend values of shape ``(batch, size)``; weights are float32 numpy arrays.
    """

    def dense(self, x, kernel, bias=None):  # x @ kernel (+ bias)
        raise NotImplementedError

    def add(self, a, b):
        raise NotImplementedError

    def sub(self, a, b):
        raise NotImplementedError

    def mul(self, a, b):
        raise NotImplementedError

    def mul_const(self, a, vector):  # a * constant (broadcast over batch)
        raise NotImplementedError

    def add_const(self, a, vector):
        raise NotImplementedError

    def activation(self, name: str, value):
        raise NotImplementedError

    def split(self, value, parts: int) -> list:  # along features
        raise NotImplementedError

    def concat(self, values: list):  # along features
        raise NotImplementedError

    def maximum(self, a, b):
        raise NotImplementedError

    def gather(self, table, ids):  # rows of table for (batch,) integer ids
        raise NotImplementedError


def constant_key(array) -> tuple:
    """What makes two weight arrays the same constant: the timesteps of an unrolled layer pass
    fresh slices of one matrix, which only their content identifies."""
    import hashlib

    array = np.ascontiguousarray(array)
    return array.shape, array.dtype.str, hashlib.blake2b(array.tobytes(), digest_size=16).digest()


def lower(network: Network, ops: Ops, steps: list):
    """The network over ``steps`` (a list of ``T`` input tensors); returns a list of output
    tensors (sequence output) or one tensor (the source model's single output)."""
    return lower_layers(network.layers, ops, steps)


def lower_layers(layers: list, ops: Ops, steps: list):
    """:func:`lower` for a chain of layers (the exporters look a leading Embedding up themselves,
    once for the whole window)."""
    value = steps
    for layer in layers:
        if isinstance(layer, EmbeddingLayer):
            value = [ops.gather(layer.table, ids) for ids in value]
        elif isinstance(layer, (LSTMLayer, GRULayer)):
            value = run_recurrent(ops, layer, value)
        elif isinstance(layer, BidirectionalLayer):
            forward = run_recurrent(ops, layer.forward, value)
            backward = run_recurrent(ops, layer.backward, value)
            if layer.return_sequences:
                value = [_merge(ops, layer.merge_mode, f, b) for f, b in zip(forward, backward[::-1])]
            else:
                value = _merge(ops, layer.merge_mode, forward, backward)
        elif isinstance(layer, RepeatVectorLayer):
            value = [value] * layer.times
        elif isinstance(layer, Conv1DLayer):
            value = conv1d(ops, layer, value)
        elif isinstance(layer, Pooling1DLayer):
            value = pool1d(ops, layer, value)
        elif isinstance(layer, TimestepLayer):
            value = value[layer.index]
        elif isinstance(layer, DenseLayer):
            apply = lambda v, layer=layer: ops.activation(layer.activation, ops.dense(v, layer.kernel, layer.bias))  # noqa: E731
            value = [apply(v) for v in value] if isinstance(value, list) else apply(value)
    return value


def run_recurrent(ops: Ops, layer, steps: list):
    """Unroll an LSTM or GRU over ``steps`` from a zero state; outputs in processing order
    (reversed for ``go_backwards``), or the last one without ``return_sequences``."""
    order = steps[::-1] if layer.go_backwards else steps
    h = c = None
    outputs = []
    for x in order:
        if isinstance(layer, LSTMLayer):
            h, c = lstm_cell(ops, layer, x, h, c)
        else:
            h = gru_cell(ops, layer, x, h)
        outputs.append(h)
    return outputs if layer.return_sequences else h


def lstm_cell(ops: Ops, layer: LSTMLayer, x, h, c) -> tuple:
    gate, act = layer.recurrent_activation, layer.activation
    if h is None:  # zero state: no forget gate (a SPLIT output nothing reads stays float in TFLite's quantizer)
        units = layer.units
        columns = np.r_[0:units, 2 * units : 4 * units]
        i, g, o = ops.split(ops.dense(x, layer.kernel[:, columns], layer.bias[columns]), 3)
        c_new = ops.mul(ops.activation(gate, i), ops.activation(act, g))
        return ops.mul(ops.activation(gate, o), ops.activation(act, c_new)), c_new
    z = ops.add(ops.dense(x, layer.kernel, layer.bias), ops.dense(h, layer.recurrent_kernel))
    i, f, g, o = ops.split(z, 4)
    c_new = ops.add(ops.mul(ops.activation(gate, f), c), ops.mul(ops.activation(gate, i), ops.activation(act, g)))
    return ops.mul(ops.activation(gate, o), ops.activation(act, c_new)), c_new


def gru_cell(ops: Ops, layer: GRULayer, x, h):
    """``h' = hh + z (h - hh)``; with a zero ``h`` (the first step): ``hh - z hh``."""
    units = layer.units
    gate, act = layer.recurrent_activation, layer.activation
    z_in, r_in, h_in = ops.split(ops.dense(x, layer.kernel, layer.bias), 3)
    if h is None:  # zero state: the recurrent matmul is just the recurrent bias
        z = ops.activation(gate, _plus(ops, z_in, layer.recurrent_bias[:units]))
        r = ops.activation(gate, _plus(ops, r_in, layer.recurrent_bias[units : 2 * units]))
        if layer.reset_after:
            candidate = ops.activation(act, ops.add(h_in, ops.mul_const(r, layer.recurrent_bias[2 * units :])))
        else:
            candidate = ops.activation(act, h_in)
        return ops.sub(candidate, ops.mul(z, candidate))
    if layer.reset_after:
        z_h, r_h, h_h = ops.split(ops.dense(h, layer.recurrent_kernel, layer.recurrent_bias), 3)
        z = ops.activation(gate, ops.add(z_in, z_h))
        r = ops.activation(gate, ops.add(r_in, r_h))
        candidate = ops.activation(act, ops.add(h_in, ops.mul(r, h_h)))
    else:
        z_h, r_h = ops.split(ops.dense(h, layer.recurrent_kernel[:, : 2 * units]), 2)
        z = ops.activation(gate, ops.add(z_in, z_h))
        r = ops.activation(gate, ops.add(r_in, r_h))
        candidate = ops.activation(act, ops.add(h_in, ops.dense(ops.mul(r, h), layer.recurrent_kernel[:, 2 * units :])))
    return ops.add(candidate, ops.mul(z, ops.sub(h, candidate)))


def _plus(ops: Ops, value, constant):
    return ops.add_const(value, constant) if constant.any() else value


def _merge(ops: Ops, mode: str, forward, backward):
    if mode == "concat":
        return ops.concat([forward, backward])
    if mode == "sum":
        return ops.add(forward, backward)
    if mode == "mul":
        return ops.mul(forward, backward)
    return ops.mul_const(ops.add(forward, backward), 0.5)  # ave


def conv1d(ops: Ops, layer: Conv1DLayer, steps: list) -> list:
    """Each output step is one FULLY_CONNECTED over the input steps its kernel covers; taps
    that fall on the zero padding are left out (exact, and no zero constants)."""
    before, _ = layer.pads()
    outputs = []
    for t in range(layer.output_length(len(steps))):
        taps = [(j, t * layer.strides + j * layer.dilation - before) for j in range(layer.kernel_size)]
        taps = [(j, index) for j, index in taps if 0 <= index < len(steps)]
        inputs = ops.concat([steps[index] for _, index in taps]) if len(taps) > 1 else steps[taps[0][1]]
        kernel = np.concatenate([layer.kernel[j] for j, _ in taps], axis=0)
        outputs.append(ops.activation(layer.activation, ops.dense(inputs, kernel, layer.bias)))
    return outputs


def pool1d(ops: Ops, layer: Pooling1DLayer, steps: list) -> list:
    outputs = []
    for t in range(layer.output_length(len(steps))):
        window = steps[t * layer.strides : t * layer.strides + layer.pool_size]
        result = window[0]
        for value in window[1:]:
            result = ops.maximum(result, value) if layer.mode == "max" else ops.add(result, value)
        if layer.mode == "average":
            result = ops.mul_const(result, np.full(layer.size, 1.0 / len(window), np.float32))
        outputs.append(result)
    return outputs
