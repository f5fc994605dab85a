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

from edgelstm.model.network import (
    ActivationLayer, AttentionLayer, BidirectionalLayer, Conv1DLayer, DenseLayer, EmbeddingLayer,
    FlattenLayer, GRULayer, LSTMLayer, LayerNormLayer, MergeLayer, MultiHeadAttentionLayer, Network,
    OutputsLayer, Pooling1DLayer, RepeatVectorLayer, TimestepLayer,
)


class Ops:
    """The primitive operations a window graph needs; each backend implements them.

    Tensors are backend values of shape ``(batch, size)``; weights are float32 numpy arrays.
    ``per_gate``: the recurrent cells compute each gate's pre-activation with FCs of its own (a
    grid of its own when activations are quantized) rather than one FC for all gates and a SPLIT
    (fewer ops, and one large weight matrix that dynamic-range quantization keeps int8).
    """

    per_gate = True

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

    def minimum(self, a, b):
        raise NotImplementedError

    def layer_norm(self, x, gamma, beta, epsilon: float):  # over the features of each row
        raise NotImplementedError

    # Sequences as one tensor (batch, T, features), for attention: the product of two activations
    # is its own op (TFLite BATCH_MATMUL, ONNX MatMul), not a pattern of per-step ops.
    def stack(self, values: list):  # T tensors (batch, F) -> (batch, T, F)
        raise NotImplementedError

    def unstack(self, value, count: int) -> list:  # (batch, T, F) -> T tensors (batch, F)
        raise NotImplementedError

    def matmul(self, a, b, transpose_b: bool = False):  # (batch, m, k) @ (batch, k, n), or b^T
        raise NotImplementedError

    def steps(self, value, start: int, stop: int):  # value[:, start:stop] of a (batch, T, F) tensor
        raise NotImplementedError

    def split_last(self, value, parts: int) -> list:  # along the last axis
        raise NotImplementedError

    def concat_axis(self, values: list, axis: int):
        raise NotImplementedError

    def swap_last(self, value):  # (batch, m, n) -> (batch, n, m)
        raise NotImplementedError


def constant_key(array) -> tuple:
    """What makes two weight arrays the same constant: the timesteps of an unrolled layer pass
    fresh slices of one matrix, which only their content identifies."""
    import hashlib

    array = np.ascontiguousarray(array)
    return array.shape, array.dtype.str, hashlib.blake2b(array.tobytes(), digest_size=16).digest()


def lower(network: Network, ops: Ops, steps: list, embedded: bool = False):
    """The network over ``steps`` (a list of ``T`` input tensors); returns a list of output
    tensors (sequence output) or one tensor (the source model's single output). ``embedded``:
    the exporter has looked a leading Embedding up itself, once for the whole window, so
    ``steps`` are its output."""

    def apply(layer, inputs):
        value = inputs[0]
        if isinstance(layer, EmbeddingLayer):
            return value if embedded else [ops.gather(layer.table, ids) for ids in value]
        if isinstance(layer, (LSTMLayer, GRULayer)):
            return run_recurrent(ops, layer, value)
        if isinstance(layer, BidirectionalLayer):
            forward = run_recurrent(ops, layer.forward, value)
            backward = run_recurrent(ops, layer.backward, value)
            if layer.return_sequences:
                return [_merge(ops, layer.merge_mode, f, b) for f, b in zip(forward, backward[::-1])]
            return _merge(ops, layer.merge_mode, forward, backward)
        if isinstance(layer, RepeatVectorLayer):
            return [value] * layer.times
        if isinstance(layer, Conv1DLayer):
            return conv1d(ops, layer, value)
        if isinstance(layer, Pooling1DLayer):
            return pool1d(ops, layer, value)
        if isinstance(layer, TimestepLayer):
            return value[layer.index]
        if isinstance(layer, FlattenLayer):  # step after step along the features: Keras' row-major order
            return ops.concat(value) if len(value) > 1 else value[0]
        if isinstance(layer, AttentionLayer):
            query, values, keys = inputs[0], inputs[1], inputs[2 if len(inputs) > 2 else 1]
            additive = layer.score_scales() if layer.score_mode == "additive" else None
            out = attention(ops, ops.stack(query), ops.stack(keys), ops.stack(values), layer.scale, layer.causal, len(query),
                            additive)
            return ops.unstack(out, len(query))
        if isinstance(layer, MultiHeadAttentionLayer):
            return multi_head_attention(ops, layer, inputs)
        if isinstance(value, list):  # a per-timestep layer over a sequence: once per step
            return [per_timestep(ops, layer, list(step)) for step in zip(*inputs)]
        return per_timestep(ops, layer, inputs)

    return network.evaluate(steps, apply)


def per_timestep(ops: Ops, layer, inputs: list):
    """A layer that acts on one timestep (Dense, merges, LayerNormalization, Activation) in ops;
    the step exporters use it too."""
    value = inputs[0]
    if isinstance(layer, DenseLayer):
        return ops.activation(layer.activation, ops.dense(value, layer.kernel, layer.bias))
    if isinstance(layer, MergeLayer):
        return merge(ops, layer, inputs)
    if isinstance(layer, LayerNormLayer):
        return ops.layer_norm(value, layer.gamma, layer.beta, layer.epsilon)
    if isinstance(layer, ActivationLayer):
        return ops.activation(layer.activation, value)
    if isinstance(layer, OutputsLayer):  # each head on its own scale (powers of two: exact), then one y
        heads = [head if scale == 1.0 else ops.mul_const(head, np.full(size, scale, np.float32))
                 for head, size, scale in zip(inputs, layer.sizes, layer.head_scales())]
        return ops.concat(heads) if len(heads) > 1 else heads[0]
    raise TypeError(f"{type(layer).__name__} does not act per timestep")


def merge(ops: Ops, layer: MergeLayer, inputs: list):
    """Keras' merge layers in ops, inputs combined left to right (as the numpy reference does)."""
    mode = layer.mode
    if mode == "concatenate":
        return ops.concat(inputs)
    combine = {"add": ops.add, "average": ops.add, "subtract": ops.sub, "multiply": ops.mul,
               "maximum": ops.maximum, "minimum": ops.minimum}[mode]
    result = inputs[0]
    for value in inputs[1:]:
        result = combine(result, value)
    if mode == "average":
        result = ops.mul_const(result, np.full(layer.output_size, 1.0 / len(inputs), np.float32))
    return result


def attention(ops: Ops, query, keys, values, scale: float, causal: bool, length: int, additive=None):
    """``softmax(scale * query keys^T) values`` on stacked ``(batch, T, features)`` tensors (or, given
    ``additive``, a weight per feature, additive scores: :func:`additive_scores`). Causal: each
    query step ``t`` attends to the first ``t + 1`` keys only, computed row by row, so no mask
    constant of -1e9 enters a tensor the quantizer has to give a range."""
    if additive is not None:
        rows = []
        for t in range(length):
            keys_t = ops.steps(keys, 0, t + 1) if causal else keys
            values_t = ops.steps(values, 0, t + 1) if causal else values
            weights = ops.activation("softmax", additive_scores(ops, ops.steps(query, t, t + 1), keys_t, additive))
            rows.append(ops.matmul(weights, values_t))
        return ops.concat_axis(rows, 1) if len(rows) > 1 else rows[0]
    if not causal:
        scores = ops.matmul(query, keys, transpose_b=True)
        if scale != 1.0:
            scores = ops.mul_const(scores, np.full(1, scale, np.float32))
        return ops.matmul(ops.activation("softmax", scores), values)
    rows = []
    for t in range(length):
        scores = ops.matmul(ops.steps(query, t, t + 1), ops.steps(keys, 0, t + 1), transpose_b=True)
        if scale != 1.0:
            scores = ops.mul_const(scores, np.full(1, scale, np.float32))
        rows.append(ops.matmul(ops.activation("softmax", scores), ops.steps(values, 0, t + 1)))
    return ops.concat_axis(rows, 1) if len(rows) > 1 else rows[0]


def additive_scores(ops: Ops, query_step, keys, weights: np.ndarray):
    """One query step's additive scores ``(batch, 1, n)``: ``sum_d weights[d] tanh(q[d] + k_j[d])`` for
    each of the ``n`` keys: the query step ``(batch, 1, d)`` added to every key ``(batch, n, d)``
    (broadcast), TANH, the weighted sum over ``d`` as a matrix product ``(d, 1)``, then the last two
    axes swapped (a row of scores, which the softmax reads across)."""
    summed = ops.add(query_step, keys)
    column = ops.dense(ops.activation("tanh", summed), np.asarray(weights, np.float32).reshape(-1, 1))
    return ops.swap_last(column)


def multi_head_attention(ops: Ops, layer: MultiHeadAttentionLayer, inputs: list) -> list:
    """Keras' MultiHeadAttention: one FULLY_CONNECTED projects all heads of the query (and of the
    key and value) at once, each head attends, the heads are joined and projected back."""
    query, values = inputs[0], inputs[1]
    keys = inputs[2] if len(inputs) > 2 else values
    heads, length = layer.heads, len(query)

    def project(steps, kernel, bias):
        flat = kernel.reshape(kernel.shape[0], -1)
        return ops.split_last(ops.dense(ops.stack(steps), flat, bias.reshape(-1)), heads) if heads > 1 else \
            [ops.dense(ops.stack(steps), flat, bias.reshape(-1))]

    q = project(query, layer.query_kernel, layer.query_bias)
    k = project(keys, layer.key_kernel, layer.key_bias)
    v = project(values, layer.value_kernel, layer.value_bias)
    scale = float(1.0 / np.sqrt(layer.key_dim))
    attended = [attention(ops, q[h], k[h], v[h], scale, layer.causal, length) for h in range(heads)]
    joined = ops.concat_axis(attended, -1) if heads > 1 else attended[0]
    kernel = layer.output_kernel.reshape(-1, layer.output_kernel.shape[2])
    return ops.unstack(ops.dense(joined, kernel, layer.output_bias), length)


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
    if ops.per_gate:  # each gate on a grid of its own (see the step exporter)
        i, f, g, o = (ops.add(ops.dense(x, layer.kernel[:, q], layer.bias[q]), ops.dense(h, layer.recurrent_kernel[:, q]))
                      for q in _gate_columns(layer.units, 4))
    else:
        i, f, g, o = ops.split(ops.add(ops.dense(x, layer.kernel, layer.bias), ops.dense(h, layer.recurrent_kernel)), 4)
    c_new = ops.add(ops.mul(ops.activation(gate, f), c), ops.mul(ops.activation(gate, i), ops.activation(act, g)))
    return ops.mul(ops.activation(gate, o), ops.activation(act, c_new)), c_new


def _gate_columns(units: int, gates: int) -> list:
    return [slice(q * units, (q + 1) * units) for q in range(gates)]


def _gate_dense(ops: Ops, x, kernel, bias, gates: list) -> list:
    """``x @ kernel + bias`` for each gate's columns: one FC per gate (``ops.per_gate``) or one FC and a SPLIT."""
    if ops.per_gate:
        return [ops.dense(x, kernel[:, q], None if bias is None else bias[q]) for q in gates]
    width = gates[-1].stop
    value = ops.dense(x, kernel[:, :width], None if bias is None else bias[:width])
    return ops.split(value, len(gates)) if len(gates) > 1 else [value]


def gru_cell(ops: Ops, layer: GRULayer, x, h):
    """``h' = hh + z (h - hh)``; with a zero ``h`` (the first step): ``hh - z hh``."""
    units = layer.units
    gate, act = layer.recurrent_activation, layer.activation
    gates = _gate_columns(units, 3)
    z_in, r_in, h_in = _gate_dense(ops, x, layer.kernel, layer.bias, gates)
    if h is None:  # zero state: the recurrent matmul is just the recurrent bias
        z = ops.activation(gate, _plus(ops, z_in, layer.recurrent_bias[:units]))
        r = ops.activation(gate, _plus(ops, r_in, layer.recurrent_bias[units : 2 * units]))
        if layer.reset_after:
            candidate = ops.activation(act, ops.add(h_in, ops.mul_const(r, layer.recurrent_bias[2 * units :])))
        else:
            candidate = ops.activation(act, h_in)
        return ops.sub(candidate, ops.mul(z, candidate))
    if layer.reset_after:
        z_h, r_h, h_h = _gate_dense(ops, h, layer.recurrent_kernel, layer.recurrent_bias, gates)
        z = ops.activation(gate, ops.add(z_in, z_h))
        r = ops.activation(gate, ops.add(r_in, r_h))
        candidate = ops.activation(act, ops.add(h_in, ops.mul(r, h_h)))
    else:
        z_h, r_h = _gate_dense(ops, h, layer.recurrent_kernel, None, gates[:2])
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
