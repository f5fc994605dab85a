"""The numpy reference: the one oracle every export is tested against.

It computes, in float32 exactly as Keras does, one timestep of a step :class:`Network`
(:meth:`Reference.step`) or a whole batch of sequences (:meth:`Reference.predict`, which
returns what the source model's ``predict`` returns). Window networks (Bidirectional,
RepeatVector, Conv1D, ``go_backwards``) have no step; :func:`forward_sequence` evaluates
any network layer by layer over whole sequences, as the source framework does. It imports nothing but numpy, so the
runtime can use it as its slowest, always-available backend.
"""

from __future__ import annotations

import numpy as np

from . import activations
from .network import (
    ActivationLayer, AttentionLayer, BidirectionalLayer, Conv1DLayer, DenseLayer, EmbeddingLayer,
    FlattenLayer, GRULayer, LSTMLayer, LayerNormLayer, MergeLayer, MultiHeadAttentionLayer, Network,
    OutputsLayer, Pooling1DLayer, RepeatVectorLayer, TimestepLayer,
)


class Reference:
    """Float32 step and sequence functions computed from a :class:`Network`."""

    def __init__(self, network: Network):
        self.network = network

    def initial_state(self, batch: int = 1) -> list:
        """Zero state: ``[h_0, c_0, h_1, c_1, ...]``, each ``(batch, units)`` float32."""
        return [np.zeros((batch, size), np.float32) for size in self.network.state_sizes()]

    def step(self, x: np.ndarray, state: list) -> tuple:
        """One timestep. ``x`` is ``(batch, n_features)``; returns ``(y, new_state)``."""
        if self.network.input_kind == "token":
            x = np.asarray(x).astype(np.int64).reshape(-1)
        else:
            x = np.asarray(x, dtype=np.float32)
        new_state = []
        position = 0

        def apply(layer, inputs):
            nonlocal position
            value = inputs[0]
            if isinstance(layer, LSTMLayer):
                h, c = _lstm_cell(layer, value, state[position], state[position + 1])
                new_state.extend([h, c])
                position += 2
                return h
            if isinstance(layer, GRULayer):
                h = _gru_cell(layer, value, state[position])
                new_state.append(h)
                position += 1
                return h
            if isinstance(layer, EmbeddingLayer):
                return layer.table[value]
            return per_timestep(layer, inputs)

        return self.network.evaluate(x, apply), new_state

    def run(self, sequence: np.ndarray, state: list | None = None) -> tuple:
        """Step through ``sequence`` ``(T, n_features)`` or ``(batch, T, n_features)``.

        Returns ``(outputs, final_state)`` where outputs are ``(T, out)`` (or
        ``(batch, T, out)``): at each step, the output the model gives if the sequence ended there.
        """
        seq = np.asarray(sequence, dtype=np.float32)
        squeeze = seq.ndim == 2
        if squeeze:
            seq = seq[None]
        if state is None:
            state = self.initial_state(seq.shape[0])
        outputs = np.empty((seq.shape[0], seq.shape[1], self.network.output_size), np.float32)
        for t in range(seq.shape[1]):
            outputs[:, t], state = self.step(seq[:, t], state)
        return (outputs[0] if squeeze else outputs), state

    def run_with_states(self, sequence: np.ndarray) -> tuple:
        """Like :meth:`run` on one sequence ``(T, F)``, also returning every state seen.

        Returns ``(outputs (T, out), states)`` where ``states[k]`` is ``(T + 1, size)``: the
        k-th state tensor before each step and after the last one. The calibrator uses it
        to take state ranges from real trajectories.
        """
        seq = np.asarray(sequence, dtype=np.float32)
        state = self.initial_state(1)
        outputs = np.empty((seq.shape[0], self.network.output_size), np.float32)
        states = [np.empty((seq.shape[0] + 1, s.shape[1]), np.float32) for s in state]
        for k, s in enumerate(state):
            states[k][0] = s[0]
        for t in range(seq.shape[0]):
            y, state = self.step(seq[t : t + 1], state)
            outputs[t] = y[0]
            for k, s in enumerate(state):
                states[k][t + 1] = s[0]
        return outputs, states

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """What the source model's ``predict`` returns for ``(batch, T, n_features)``."""
        if self.network.mode == "window":
            return forward_sequence(self.network, batch)
        # token models: (batch, T) ids become (batch, T, 1)
        outputs, _ = self.run(np.asarray(batch, np.float32).reshape(len(batch), -1, self.network.n_features))
        return outputs if self.network.output_mode == "sequence" else outputs[:, -1]


def _lstm_cell(layer: LSTMLayer, x: np.ndarray, h: np.ndarray, c: np.ndarray) -> tuple:
    z = x @ layer.kernel + h @ layer.recurrent_kernel + layer.bias
    i, f, g, o = np.split(z, 4, axis=-1)
    gate = activations.FUNCTIONS[layer.recurrent_activation]
    act = activations.FUNCTIONS[layer.activation]
    c_new = (gate(f) * c + gate(i) * act(g)).astype(np.float32)
    h_new = (gate(o) * act(c_new)).astype(np.float32)
    return h_new, c_new


def _gru_cell(layer: GRULayer, x: np.ndarray, h: np.ndarray) -> np.ndarray:
    gate = activations.FUNCTIONS[layer.recurrent_activation]
    act = activations.FUNCTIONS[layer.activation]
    units = layer.units
    from_input = x @ layer.kernel + layer.bias
    if layer.reset_after:
        from_state = h @ layer.recurrent_kernel + layer.recurrent_bias
        z = gate(from_input[..., :units] + from_state[..., :units])
        r = gate(from_input[..., units : 2 * units] + from_state[..., units : 2 * units])
        candidate = act(from_input[..., 2 * units :] + r * from_state[..., 2 * units :])
    else:
        from_state = h @ layer.recurrent_kernel[..., : 2 * units]
        z = gate(from_input[..., :units] + from_state[..., :units])
        r = gate(from_input[..., units : 2 * units] + from_state[..., units:])
        candidate = act(from_input[..., 2 * units :] + (r * h) @ layer.recurrent_kernel[..., 2 * units :])
    return (z * h + (1.0 - z) * candidate).astype(np.float32)


def run_recurrent(layer, sequence: np.ndarray) -> np.ndarray:
    """Run one LSTM or GRU over ``(batch, T, F)`` from a zero state; returns ``(batch, T, units)``
    in the order the layer produced them (reversed input order for ``go_backwards``), or the
    last output ``(batch, units)`` when it does not return sequences."""
    batch, steps = sequence.shape[0], sequence.shape[1]
    h = np.zeros((batch, layer.units), np.float32)
    c = np.zeros((batch, layer.units), np.float32)
    outputs = np.empty((batch, steps, layer.units), np.float32)
    order = range(steps - 1, -1, -1) if layer.go_backwards else range(steps)
    for k, t in enumerate(order):
        if isinstance(layer, LSTMLayer):
            h, c = _lstm_cell(layer, sequence[:, t], h, c)
        else:
            h = _gru_cell(layer, sequence[:, t], h)
        outputs[:, k] = h
    return outputs if layer.return_sequences else h


def _merge(mode: str, forward: np.ndarray, backward: np.ndarray) -> np.ndarray:
    if mode == "concat":
        return np.concatenate([forward, backward], axis=-1)
    if mode == "sum":
        return forward + backward
    if mode == "mul":
        return forward * backward
    return (forward + backward) / 2.0  # ave


def conv1d(layer: Conv1DLayer, sequence: np.ndarray) -> np.ndarray:
    """``(batch, T, F) -> (batch, T', filters)``, as Keras' Conv1D."""
    before, after = layer.pads()
    padded = np.pad(sequence, ((0, 0), (before, after), (0, 0)))
    steps = layer.output_length(sequence.shape[1])
    out = np.zeros((sequence.shape[0], steps, layer.output_size), np.float32)
    for j in range(layer.kernel_size):
        start = j * layer.dilation
        rows = padded[:, start : start + (steps - 1) * layer.strides + 1 : layer.strides]
        out += rows @ layer.kernel[j]
    return activations.apply(layer.activation, out + layer.bias).astype(np.float32)


def pool1d(layer: Pooling1DLayer, sequence: np.ndarray) -> np.ndarray:
    steps = layer.output_length(sequence.shape[1])
    windows = np.stack([sequence[:, t * layer.strides : t * layer.strides + layer.pool_size] for t in range(steps)], axis=1)
    return (windows.max(axis=2) if layer.mode == "max" else windows.mean(axis=2)).astype(np.float32)


def per_timestep(layer, inputs: list) -> np.ndarray:
    """A layer that acts on each timestep alone (Dense, merges, LayerNormalization, Activation), on
    ``(..., features)`` values: one timestep or whole sequences alike."""
    value = inputs[0]
    if isinstance(layer, DenseLayer):
        return activations.apply(layer.activation, value @ layer.kernel + layer.bias).astype(np.float32, copy=False)
    if isinstance(layer, MergeLayer):
        return merge(layer.mode, inputs)
    if isinstance(layer, LayerNormLayer):
        return layer_norm(layer, value)
    if isinstance(layer, ActivationLayer):
        return activations.apply(layer.activation, value).astype(np.float32, copy=False)
    if isinstance(layer, OutputsLayer):
        return np.concatenate([head * np.float32(scale) for head, scale in zip(inputs, layer.head_scales())], axis=-1)
    raise TypeError(f"{type(layer).__name__} does not act per timestep")


def merge(mode: str, inputs: list) -> np.ndarray:
    """Keras' merge layers over the last axis (``concatenate``) or elementwise, in input order."""
    if mode == "concatenate":
        return np.concatenate(inputs, axis=-1)
    result = inputs[0]
    for value in inputs[1:]:
        if mode in ("add", "average"):
            result = result + value
        elif mode == "subtract":
            result = result - value
        elif mode == "multiply":
            result = result * value
        elif mode == "maximum":
            result = np.maximum(result, value)
        elif mode == "minimum":
            result = np.minimum(result, value)
    if mode == "average":
        result = result / np.float32(len(inputs))
    return np.asarray(result, np.float32)


def layer_norm(layer: LayerNormLayer, value: np.ndarray) -> np.ndarray:
    """Keras' LayerNormalization on the last axis: mean and (biased) variance per timestep."""
    mean = value.mean(axis=-1, keepdims=True)
    centered = value - mean
    variance = (centered * centered).mean(axis=-1, keepdims=True)
    return (centered / np.sqrt(variance + np.float32(layer.epsilon)) * layer.gamma + layer.beta).astype(np.float32)


def attend(query: np.ndarray, keys: np.ndarray, values: np.ndarray, scale, causal: bool,
           additive: np.ndarray | None = None) -> np.ndarray:
    """``softmax(scale * query keys^T) values`` over ``(batch, T, features)`` or, given ``additive``
    (a weight per feature), ``softmax(sum_d additive[d] tanh(query[:, i, d] + keys[:, j, d])) values``;
    ``causal``: query step ``i`` attends to keys ``0..i`` (Keras' mask, which adds -1e9 to the
    others, gives them a weight of exactly 0 in float32)."""
    if additive is None:
        scores = np.matmul(query, np.swapaxes(keys, 1, 2)) * scale
    else:
        scores = np.sum(additive * np.tanh(query[:, :, None, :] + keys[:, None, :, :]), axis=-1)
    if causal:
        future = np.triu(np.ones(scores.shape[1:], bool), k=1)
        scores = np.where(future, -np.inf, scores)
    return np.matmul(activations.apply("softmax", scores), values).astype(np.float32)


def multi_head_attention(layer: MultiHeadAttentionLayer, inputs: list) -> np.ndarray:
    """Keras' MultiHeadAttention: per-head projections, scaled dot-product attention, output projection."""
    query, values = inputs[0], inputs[1]
    keys = inputs[2] if len(inputs) > 2 else values
    q = np.einsum("btf,fhd->bthd", query, layer.query_kernel) + layer.query_bias
    k = np.einsum("btf,fhd->bthd", keys, layer.key_kernel) + layer.key_bias
    v = np.einsum("btf,fhd->bthd", values, layer.value_kernel) + layer.value_bias
    scale = np.float32(1.0 / np.sqrt(layer.key_dim))
    heads = [attend(q[:, :, h], k[:, :, h], v[:, :, h], scale, layer.causal) for h in range(layer.heads)]
    out = np.einsum("bthd,hdo->bto", np.stack(heads, axis=2), layer.output_kernel) + layer.output_bias
    return out.astype(np.float32)


def forward_sequence(network: Network, batch: np.ndarray) -> np.ndarray:
    """What the source model's ``predict`` returns for ``(batch, T, n_features)`` (token models:
    ``(batch, T)`` ids), computed layer by layer over whole sequences. Works for every network."""

    def apply(layer, inputs):
        value = inputs[0]
        if isinstance(layer, EmbeddingLayer):
            return layer.table[value.reshape(value.shape[0], -1).astype(np.int64)]
        inputs = [np.asarray(v).astype(np.float32, copy=False) for v in inputs]
        value = inputs[0]
        if isinstance(layer, (LSTMLayer, GRULayer)):
            return run_recurrent(layer, value)
        if isinstance(layer, BidirectionalLayer):
            forward = run_recurrent(layer.forward, value)
            backward = run_recurrent(layer.backward, value)
            if layer.return_sequences:
                backward = backward[:, ::-1]
            return _merge(layer.merge_mode, forward, backward)
        if isinstance(layer, RepeatVectorLayer):
            return np.repeat(value[:, None, :], layer.times, axis=1)
        if isinstance(layer, Conv1DLayer):
            return conv1d(layer, value)
        if isinstance(layer, Pooling1DLayer):
            return pool1d(layer, value)
        if isinstance(layer, TimestepLayer):
            return value[:, layer.index]
        if isinstance(layer, FlattenLayer):
            return value.reshape(value.shape[0], -1)
        if isinstance(layer, AttentionLayer):
            query, values, keys = inputs[0], inputs[1], inputs[2 if len(inputs) > 2 else 1]
            additive = layer.score_scales() if layer.score_mode == "additive" else None
            return attend(query, keys, values, np.float32(layer.scale), layer.causal, additive)
        if isinstance(layer, MultiHeadAttentionLayer):
            return multi_head_attention(layer, inputs)
        return per_timestep(layer, inputs)

    return np.asarray(network.evaluate(np.asarray(batch), apply), np.float32)
