"""ONNX ``LSTM`` and ``GRU`` nodes: weights, activations, initial states, the sequence axes they read."""

from __future__ import annotations

import math

import numpy as np

from .values import (
    Axis, Data, Known, RnnOut, StateInput, Uniform, _PARAMETRIC, _RNN_ACTIVATIONS, _Recurrent, _int_size,
    _layer_name, _text
)


class _Recurrents:
    """ONNX ``LSTM`` and ``GRU`` nodes: weights, activations, initial states, the sequence axes they read. A part of
    :class:`~.lowering._Lowering`."""

    # -- recurrent nodes -----------------------------------------------------------------------

    def _recurrent(self, node, inputs, attrs) -> list:
        op = node.op_type
        x = inputs[0] if inputs else None
        if not isinstance(x, Data):
            self.fail(node, "its sequence input X is not computed from the model input")
        layout = int(attrs.get("layout", 0))
        if layout not in (0, 1):
            self.fail(node, f"layout={layout} is not valid")
        direction = _text(attrs.get("direction", "forward"))
        if direction not in ("forward", "reverse", "bidirectional"):
            self.fail(node, f"direction '{direction}' is not valid")
        num_dir = 2 if direction == "bidirectional" else 1
        if "clip" in attrs:
            self.fail(node, f"clip={attrs['clip']} (cell clipping) is not supported")
        if op == "LSTM" and int(attrs.get("input_forget", 0)):
            self.fail(node, "input_forget=1 (coupled input and forget gates) is not supported")
        time, batch = self._sequence_axes(node, x, layout)
        gates = 4 if op == "LSTM" else 3
        W = self._weights(node, inputs, 1, "W")
        R = self._weights(node, inputs, 2, "R")
        units = int(attrs.get("hidden_size", R.shape[-1]))
        in_size = sum(_int_size(p.size) for p in x.parts)
        if W.shape != (num_dir, gates * units, in_size) or R.shape != (num_dir, gates * units, units):
            self.fail(node, f"weights W {W.shape} / R {R.shape} do not fit hidden_size={units}, "
                            f"{num_dir} direction(s) and {in_size} input features")
        B = self._weights(node, inputs, 3, "B", optional=True)
        if B is None:
            B = np.zeros((num_dir, 2 * gates * units), np.float32)
        if B.shape != (num_dir, 2 * gates * units):
            self.fail(node, f"bias B has shape {B.shape}, expected {(num_dir, 2 * gates * units)}")
        if len(inputs) > 4 and inputs[4] is not None:
            self.fail(node, "sequence_lens (variable-length sequences) is not supported; every sequence is read whole")
        for slot, what in ((5, "initial_h"), (6, "initial_c")):
            if len(inputs) > slot and inputs[slot] is not None:
                self._check_initial_state(node, inputs[slot], what)
        if op == "LSTM" and len(inputs) > 7 and inputs[7] is not None:
            peepholes = inputs[7]
            if not (isinstance(peepholes, Known) and not np.any(peepholes.array)) and \
                    not (isinstance(peepholes, Uniform) and peepholes.value == 0):
                self.fail(node, "peephole connections (input P) are not supported")
        activations = self._rnn_activations(node, attrs, 3 if op == "LSTM" else 2, num_dir)
        reset_after = bool(int(attrs.get("linear_before_reset", 0))) if op == "GRU" else True
        cells = [self._cell(node, op, W[d], R[d], B[d], units, activations[d], reset_after) for d in range(num_dir)]
        self.rnn_count += 1
        name = _layer_name(node, f"{op.lower()}_{self.rnn_count}")
        rnn = _Recurrent(name, op, direction, units, cells, reset_after, x.parts)
        stack = Axis("stack", num_dir)
        feat = Axis("feat", units)
        y_axes = (time, stack, batch, feat) if layout == 0 else (batch, time, stack, feat)
        h_axes = (stack, batch, feat) if layout == 0 else (batch, stack, feat)
        y = Data(y_axes, tuple((RnnOut(rnn, d, "seq"),) for d in range(num_dir)))
        y_h = Data(h_axes, tuple((RnnOut(rnn, d, "final"),) for d in range(num_dir)))
        y_c = Data(h_axes, tuple((RnnOut(rnn, d, "cell"),) for d in range(num_dir)))
        return [y, y_h, y_c][: len(node.output)]

    def _sequence_axes(self, node, x: Data, layout: int) -> tuple:
        """X's (time, batch) axes: (time, batch, features) for layout 0, (batch, time, features) for 1.

        The first LSTM/GRU reading the model input tells which input axis is time."""
        roles = x.roles
        if len(roles) != 3 or roles[2] != "feat":
            self.fail(node, f"its input X has axes {self._axes_text(x)}; expected a (time, batch, features) sequence")
        time, batch = (x.axes[0], x.axes[1]) if layout == 0 else (x.axes[1], x.axes[0])
        if time.role == "in" and batch.role == "in":
            if self.time_tag is not None and self.time_tag != time.tag:
                self.fail(node, "reads the model input with time and batch axes swapped relative to another LSTM/GRU")
            self.time_tag = time.tag
            self.time_size = time.size
        elif (time.role, batch.role) != ("time", "batch"):
            self.fail(node, f"its input X has axes ({time.role}, {batch.role}, features) where (time, batch, "
                            "features) is expected for its layout")
        return Axis("time", time.size), Axis("batch", batch.size)

    def _weights(self, node, inputs, slot: int, what: str, optional: bool = False):
        value = inputs[slot] if len(inputs) > slot else None
        if value is None:
            if optional:
                return None
            self.fail(node, f"weight input {what} is missing")
        array = self._known(node, value, f"weight input {what}")
        if array.dtype == object or not np.issubdtype(array.dtype, np.floating):
            self.fail(node, f"weight input {what} is not a float tensor")
        return array.astype(np.float32)

    def _check_initial_state(self, node, value, what: str) -> None:
        """Zero initial states are what the step model starts from; an input one is noted, others refused."""
        if isinstance(value, StateInput):
            if value.name not in self.state_inputs:
                self.state_inputs.append(value.name)
            return
        if isinstance(value, Uniform) and value.value == 0.0:
            return
        if isinstance(value, Known) and value.array.dtype != object and not np.any(value.array):
            return
        if isinstance(value, (Known, Uniform)):
            self.fail(node, f"{what} is a non-zero constant; only zero initial states (or state inputs) are supported")
        self.fail(node, f"{what} is computed from {self._describe(value)}; only zero initial states are supported")

    def _rnn_activations(self, node, attrs, count: int, num_dir: int) -> list:
        """Per direction: (recurrent_activation, activation) from ONNX's f, g(, h) activation list."""
        names = [_text(n) for n in attrs.get("activations", [])]
        if not names:
            names = (["Sigmoid", "Tanh", "Tanh"] if count == 3 else ["Sigmoid", "Tanh"]) * num_dir
        if len(names) != count * num_dir:
            self.fail(node, f"{len(names)} activations given, expected {count * num_dir}")
        alphas, betas = list(attrs.get("activation_alpha", [])), list(attrs.get("activation_beta", []))
        mapped = []
        for name in names:
            key = name.lower()
            if key in _PARAMETRIC:
                default_alpha, default_beta = _PARAMETRIC[key]
                alpha = alphas.pop(0) if alphas else default_alpha
                beta = (betas.pop(0) if betas else default_beta) if default_beta is not None else None
                mapped.append(self._parametric_activation(node, key, name, alpha, beta))
            elif key in _RNN_ACTIVATIONS:
                mapped.append(_RNN_ACTIVATIONS[key])
            else:
                self.fail(node, f"activation '{name}' is not supported (Sigmoid, Tanh, Relu, HardSigmoid, Affine(1, 0))")
        result = []
        for d in range(num_dir):
            own = mapped[d * count:(d + 1) * count]
            if count == 3 and own[1] != own[2]:
                self.fail(node, f"cell activation g='{own[1]}' differs from output activation h='{own[2]}'; "
                                "edgelstm's LSTM uses one activation for both")
            result.append((own[0], own[1]))
        return result

    def _parametric_activation(self, node, key, name, alpha, beta) -> str:
        if key == "hardsigmoid" and math.isclose(beta, 0.5, abs_tol=1e-7):
            if math.isclose(alpha, 0.2, abs_tol=1e-7):
                return "hard_sigmoid_keras2"
            if math.isclose(alpha, 1.0 / 6.0, abs_tol=1e-7):
                return "hard_sigmoid"
        if key == "affine" and math.isclose(alpha, 1.0) and beta == 0.0:
            return "linear"
        self.fail(node, f"activation {name}(alpha={alpha}, beta={beta}) is not supported "
                        "(HardSigmoid(0.2, 0.5), HardSigmoid(1/6, 0.5) and Affine(1, 0) are)")

    @staticmethod
    def _cell(node, op, W, R, B, units, activations, reset_after) -> dict:
        """One direction's weights in Network layout: (in, gates*u) columns in Keras gate order."""
        recurrent_activation, activation = activations
        if op == "LSTM":
            order = [0, 2, 3, 1]  # ONNX i, o, f, c -> Keras i, f, c(g), o
            rows = np.concatenate([np.arange(k * units, (k + 1) * units) for k in order])
            bias = (B[: 4 * units].astype(np.float64) + B[4 * units:]).astype(np.float32)
            return dict(kernel=np.ascontiguousarray(W[rows].T), recurrent_kernel=np.ascontiguousarray(R[rows].T),
                        bias=bias[rows], recurrent_bias=None, activation=activation,
                        recurrent_activation=recurrent_activation)
        # GRU: ONNX z, r, h is Keras' order already
        input_bias, recurrent_bias = B[: 3 * units], B[3 * units:]
        if not reset_after:  # linear_before_reset=0: Rb_h is added outside the reset product, like Wb_h
            input_bias = (input_bias.astype(np.float64) + recurrent_bias).astype(np.float32)
            recurrent_bias = np.zeros(3 * units, np.float32)
        return dict(kernel=np.ascontiguousarray(W.T), recurrent_kernel=np.ascontiguousarray(R.T),
                    bias=input_bias.copy(), recurrent_bias=recurrent_bias.copy(), activation=activation,
                    recurrent_activation=recurrent_activation)
