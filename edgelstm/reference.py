"""The numpy reference: the one oracle every export is tested against.

It computes, in float32 exactly as Keras does, one timestep of a :class:`Network`
(:meth:`Reference.step`) or a whole batch of sequences (:meth:`Reference.predict`, which
returns what the source model's ``predict`` returns). It imports nothing but numpy, so the
runtime can use it as its slowest, always-available backend.
"""

from __future__ import annotations

import numpy as np

from . import activations
from .network import DenseLayer, EmbeddingLayer, LSTMLayer, Network


class Reference:
    """Float32 step and sequence functions computed from a :class:`Network`."""

    def __init__(self, network: Network):
        self.network = network
        self._layers = network.layers

    def initial_state(self, batch: int = 1) -> list:
        """Zero state: ``[h_0, c_0, h_1, c_1, ...]``, each ``(batch, units)`` float32."""
        return [np.zeros((batch, size), np.float32) for size in self.network.state_sizes()]

    def step(self, x: np.ndarray, state: list) -> tuple:
        """One timestep. ``x`` is ``(batch, n_features)``; returns ``(y, new_state)``."""
        if self.network.input_kind == "token":
            value = self._layers[0].table[np.asarray(x).astype(np.int64).reshape(-1)]
        else:
            value = np.asarray(x, dtype=np.float32)
        new_state = []
        lstm_index = 0
        for layer in self._layers:
            if isinstance(layer, LSTMLayer):
                h, c = state[2 * lstm_index], state[2 * lstm_index + 1]
                value, c = _lstm_cell(layer, value, h, c)
                new_state += [value, c]
                lstm_index += 1
            elif isinstance(layer, DenseLayer):
                value = activations.apply(layer.activation, value @ layer.kernel + layer.bias)
            elif isinstance(layer, EmbeddingLayer):
                continue  # looked up above
            value = value.astype(np.float32, copy=False)
        return value, new_state

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
