"""Which tensors' quantization costs the most: the int8 step model replayed in numpy, one tensor class at a time.

The replay walks the ``.tflite`` file's own op list (FULLY_CONNECTED, ADD, SUB, MUL, LOGISTIC,
TANH, SPLIT, CONCATENATION, QUANTIZE, DEQUANTIZE, MINIMUM, MAXIMUM, RELU) in float64 with the
file's weights, and rounds a tensor onto the grid the converter gave it (scale, zero point,
dtype) only when asked to. With every tensor rounded it reproduces the interpreter to within
a rounding step; with one class of tensors rounded and float weights, it says what that class
alone costs at the output the model is used for. Tensor roles come from the names the step
exporter gives them (``ROLE__L<layer>g<group>``, :func:`..export.tflite_step.build_step_function`)
and from the signature (``x``, ``y``, the state tensors); a LOGISTIC or TANH output is named
after its input ("sigmoid of the gate pre-activations", "tanh of the cell state").

Workstation side: it reads the model with TensorFlow's interpreter, never at run time on a device.
"""

from __future__ import annotations

import re

import numpy as np

from .export.tflite_normalize import COMPUTED, DEVIATION, NORMALIZED
from .export import tflite_output_copies

#: Readable names of the roles the step exporter writes into tensor names.
ROLE_NAMES = {
    "zx": "gate pre-activations from the input (FC + bias)",
    "zh": "gate pre-activations from h (FC)",
    "z": "gate pre-activations (sum)",
    "fc": "f * c (the kept cell state)",
    "ig": "i * g (the cell update)",
    "c": "cell state c (with a residual cell: c_hi, c_lo and the carry)",
    "h": "hidden state h",
    "act(z)": "sigmoid/tanh of the gate pre-activations",
    "act(c)": "tanh of the cell state",
    "dense": "a Dense layer's output",
    "m": "(1 - f) * c (what the cell forgets; residual cells)",
    "d": "the cell's change i * g - (1 - f) * c (residual cells)",
    "s": "residual plus change (residual cells)",
    "carry": "the carry into c_hi (residual cells)",
    "clo": "the residual c_lo (residual cells)",
    "ct": "c_hi + c_lo, the input of the cell's tanh (residual cells)",
    "rh": "r * h (GRU: the reset h, or r times the recurrent candidate term)",
    "hd": "hh - h (GRU: the candidate minus the state)",
    "hu": "(1 - z) (hh - h) (GRU: the update)",
    "hm": "(1 - z) h_lo (GRU residual h)",
    "hc": "the update less (1 - z) h_lo (GRU residual h)",
    "hs": "residual plus change (GRU residual h)",
    "hcarry": "the carry into h_hi (GRU residual h)",
    "hclo": "the residual h_lo (GRU residual h)",
    "x": "the input x",
    "y": "the output y",
}
#: The tensors of a residual cell that only work on their grids together with c_hi and c_lo.
RESIDUAL_PARTS = {"carry": "c", "clo": "c", "s": "c", "hcarry": "h", "hclo": "h", "hs": "h"}
_NAME = re.compile(r"(?:^|[;/])([a-z]+)__(L(\d+)g\d+|D(\d+))")
_ELEMENTWISE = {"ADD": np.add, "SUB": np.subtract, "MUL": np.multiply, "MINIMUM": np.minimum, "MAXIMUM": np.maximum}


class Replay:
    """A TFLite step model as numpy ops, with optional fake quantization per tensor."""

    def __init__(self, model_path):
        import tensorflow as tf

        interpreter = tf.lite.Interpreter(
            model_path=str(model_path),
            experimental_op_resolver_type=tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        interpreter.allocate_tensors()
        runner = interpreter.get_signature_runner()
        self.inputs = {name: d["index"] for name, d in runner.get_input_details().items()}
        self.outputs = {name: d["index"] for name, d in runner.get_output_details().items()}
        self.details = {d["index"]: d for d in interpreter.get_tensor_details()}
        self.ops = interpreter._get_ops_details()
        if DEVIATION in self.outputs:  # raw readings in: replay from the normalised input on
            self._start_after_normalization()
        self.copies = 1  # offset copies of each output in y (more than one: their mean is returned)
        self._end_before_copies_mean()
        produced = {int(o) for op in self.ops for o in op["outputs"]}
        self.grid = {}  # tensor -> (scale, zero point, lowest, highest) of a per-tensor integer grid
        for index, d in self.details.items():
            q = d["quantization_parameters"]
            dtype = np.dtype(d["dtype"])
            if len(q["scales"]) == 1 and dtype in (np.int8, np.int16) and q["scales"][0] > 0:
                info = np.iinfo(dtype)
                self.grid[index] = (float(q["scales"][0]), int(q["zero_points"][0]), info.min, info.max)
        self.constants = {}
        for op in self.ops:
            for i in (int(v) for v in op["inputs"]):
                if i >= 0 and i not in produced and i not in self.inputs.values() and i not in self.constants:
                    self.constants[i] = self._dequantized(i, interpreter.get_tensor(i))
        # the state a step writes and the tensor it is read from next step (tied grids)
        self.state_pairs = {self.outputs[f"{name}_out"]: self.inputs[name] for name in self.inputs if name != "x"}
        self.roles = self._roles()

    def _start_after_normalization(self) -> None:
        """A model that takes raw readings (:mod:`.export.tflite_normalize`) is replayed from its
        normalised input ``x_normalized``, like any other: the ops that compute it and the
        ``deviation`` output (:data:`~.export.tflite_normalize.COMPUTED`) are left out."""
        names = {index: d["name"] for index, d in self.details.items()}
        normalized = next(index for index, name in names.items() if name == NORMALIZED)
        added = {index for index, name in names.items() if name in COMPUTED}
        self.ops = [op for op in self.ops if not {int(o) for o in op["outputs"]} & added]
        self.inputs["x"] = normalized
        del self.outputs[DEVIATION]

    def _end_before_copies_mean(self) -> None:
        """A stream model whose ``y`` is the mean of offset copies (:mod:`.export.tflite_output_copies`)
        is replayed up to the int8 copies, as the integer model is; :meth:`run` returns their mean."""
        names = {index: d["name"] for index, d in self.details.items()}
        integers = next((i for i, name in names.items() if name == tflite_output_copies.INTEGERS), None)
        if integers is None:
            return
        reshape = next(op for op in self.ops if int(op["outputs"][0]) == integers)
        added = {i for i, name in names.items() if name in tflite_output_copies.COMPUTED}
        mean = next(i for i, name in names.items() if name == tflite_output_copies.COMPUTED[-1])
        self.copies = int(self.details[integers]["shape"][-1]) // int(self.details[mean]["shape"][-1])
        self.ops = [op for op in self.ops if not {int(o) for o in op["outputs"]} & added]
        self.outputs["y"] = int(reshape["inputs"][0])

    def _dequantized(self, index: int, value: np.ndarray) -> np.ndarray:
        q = self.details[index]["quantization_parameters"]
        value = np.asarray(value, np.float64)
        if not len(q["scales"]) or np.dtype(self.details[index]["dtype"]) == np.float32:
            return value
        shape = [1] * value.ndim
        if len(q["scales"]) > 1:
            shape[int(q.get("quantized_dimension", 0))] = -1
        return (value - q["zero_points"].reshape(shape)) * q["scales"].reshape(shape)

    def _roles(self) -> dict:
        """tensor -> (class, layer) for every activation tensor with a grid."""
        producer = {int(o): op for op in self.ops for o in op["outputs"]}
        roles = {}
        for name, index in self.inputs.items():
            roles[index] = ("x", None) if name == "x" else (("c" if name.startswith("c") else "h"), int(name.split("_")[1]))
        for name, index in self.outputs.items():
            roles[index] = ("y", None) if name == "y" else roles[self.inputs[name[: -len("_out")]]]
        for index, d in self.details.items():
            if index in roles:
                continue
            match = _NAME.search(d["name"])
            if match:
                role, layer = match.group(1), match.group(3) if match.group(3) is not None else match.group(4)
                roles[index] = (role, int(layer))
        for op in self.ops:  # bookkeeping ops take the role of what they carry
            out, first = int(op["outputs"][0]), int(op["inputs"][0]) if len(op["inputs"]) else -1
            if op["op_name"] == "QUANTIZE" and out not in roles and first in roles:
                roles[out] = roles[first]
            elif op["op_name"] == "SPLIT":
                for index in (int(o) for o in op["outputs"]):
                    roles.setdefault(index, roles.get(int(op["inputs"][1]), (None, None)))
            elif op["op_name"] == "DEQUANTIZE" and first not in roles and out in roles:
                roles[first] = roles[out]
        for index in list(self.details):  # LOGISTIC / TANH outputs: named after their input
            op = producer.get(index)
            if index in roles or op is None or op["op_name"] not in ("LOGISTIC", "TANH"):
                continue
            source = roles.get(int(op["inputs"][0]), (None, None))
            if source[0] in ("z", "zx", "zh"):
                roles[index] = ("act(z)", source[1])
            elif source[0] in ("c", "ct"):
                roles[index] = ("act(c)", source[1])
        return roles

    def classes(self) -> dict:
        """Readable class name -> tensors of that class (grids only; the state's input and output together)."""
        found = {}
        for index in self.grid:
            if index in self.constants:
                continue
            role, layer = self.roles.get(index, (None, None))
            if role in RESIDUAL_PARTS:  # c = c_hi + c_lo only rounds as one: the carry moves whole hi steps
                role = RESIDUAL_PARTS[role]
            if role is None:
                op = next((op["op_name"] for op in self.ops if index in [int(o) for o in op["outputs"]]), "tensor")
                label = f"other {op} outputs"
            else:
                where = "" if layer is None else (f"Dense {layer}: " if role == "dense" else f"layer {layer}: ")
                label = where + ROLE_NAMES.get(role, role)
            found.setdefault(label, []).append(index)
        return found

    def _round(self, index: int, value: np.ndarray) -> np.ndarray:
        scale, zero, low, high = self.grid[index]
        return (np.clip(np.rint(value / scale) + zero, low, high) - zero) * scale

    def run(self, batch: np.ndarray, rounded=frozenset(), float_weights: dict | None = None) -> np.ndarray:
        """Outputs ``(n, T, outputs)`` for normalised ``batch`` ``(n, T, features)`` from a zero
        state; ``rounded`` tensors are put on their grids; ``float_weights`` (FC op position ->
        (weights, bias)) replaces the file's quantized weights."""
        n, steps = batch.shape[:2]
        state = {index: np.zeros((n, int(self.details[index]["shape"][1]))) for index in self.state_pairs.values()}
        out = np.empty((n, steps, int(self.details[self.outputs["y"]]["shape"][1])))
        for t in range(steps):
            values = dict(state)
            values[self.inputs["x"]] = batch[:, t].astype(np.float64)
            for index in list(values):
                if index in rounded:
                    values[index] = self._round(index, values[index])
            for position, op in enumerate(self.ops):
                ins = [int(v) for v in op["inputs"]]
                arg = lambda i: values[i] if i in values else self.constants[i]  # noqa: E731
                name = op["op_name"]
                if name == "FULLY_CONNECTED":
                    weights, bias = (float_weights or {}).get(position, (self.constants[ins[1]],
                                                                          self.constants.get(ins[2]) if ins[2] >= 0 else None))
                    result = [arg(ins[0]) @ weights.T + (0.0 if bias is None else bias)]
                elif name in _ELEMENTWISE:
                    result = [_ELEMENTWISE[name](arg(ins[0]), arg(ins[1]))]
                elif name == "LOGISTIC":
                    result = [1.0 / (1.0 + np.exp(-arg(ins[0])))]
                elif name == "TANH":
                    result = [np.tanh(arg(ins[0]))]
                elif name == "RELU":
                    result = [np.maximum(arg(ins[0]), 0.0)]
                elif name == "RSQRT":  # LayerNormalization's 1 / sqrt(variance + epsilon)
                    result = [1.0 / np.sqrt(arg(ins[0]))]
                elif name == "SPLIT":
                    result = np.split(arg(ins[1]), len(op["outputs"]), axis=1)
                elif name == "CONCATENATION":
                    result = [np.concatenate([arg(i) for i in ins], axis=1)]
                elif name in ("QUANTIZE", "DEQUANTIZE"):
                    result = [arg(ins[0])]
                else:
                    raise NotImplementedError(f"the replay has no {name}")
                for index, value in zip((int(o) for o in op["outputs"]), result):
                    values[index] = self._round(index, value) if index in rounded else value
            state = {inp: values[out_index] for out_index, inp in self.state_pairs.items()}
            out[:, t] = values[self.outputs["y"]]
        return out if self.copies == 1 else out.reshape(n, steps, -1, self.copies).mean(axis=-1)

    def float_weights_from(self, network_weights: "Replay") -> dict:
        """The float model's FC weights, each matched to the FC of this model that holds it rounded.

        The two files may lay the same network out differently (the full-int8 graph computes each
        gate of each cell-state group with FCs of its own, the float graph one FC per group for all
        four gates; a residual GRU computes its gates in another order), so FCs pair by content: an
        int8 FC takes the rows of a float FC with as many columns (all of them, or a contiguous run of
        them) of which every one, rounded to half a step of its ``max |w| / 127`` grid, is the int8
        row, or its negation (a residual cell's ``1 - f`` gate). Empty when any int8 FC finds none.
        Each keeps its own bias: a graph layout may fold two of the float model's biases into one (a
        residual GRU's gate FC carries the input and the recurrent bias)."""
        theirs = [network_weights.constants[int(op["inputs"][1])] for op in network_weights.ops
                  if op["op_name"] == "FULLY_CONNECTED"]
        result = {}
        for a, op in enumerate(self.ops):
            if op["op_name"] != "FULLY_CONNECTED" or self.details[int(op["inputs"][1])]["dtype"] == np.float32:
                continue  # float FCs (the mean of the output copies) keep their weights
            quantized = self.constants[int(op["inputs"][1])]
            match = next((m for m in (_rows_matching(quantized, w) for w in theirs) if m is not None), None)
            if match is None:
                return {}
            own = [int(v) for v in op["inputs"]]  # the int8 file's own bias (int32: its rounding is negligible)
            result[a] = (match, self.constants.get(own[2]) if len(own) > 2 and own[2] >= 0 else None)
        return result


def _rows_matching(quantized: np.ndarray, weights: np.ndarray):
    """The contiguous rows of float ``weights`` (sign per row) that round to ``quantized``, or None;
    also every row of ``weights`` repeated (the output FC's offset copies, :mod:`.export.tflite_output_copies`)."""
    rows = quantized.shape[0]
    if weights.ndim == 2 and rows > weights.shape[0] and rows % weights.shape[0] == 0:
        weights = np.repeat(weights, rows // weights.shape[0], axis=0)
    if weights.ndim != 2 or weights.shape[1] != quantized.shape[1] or weights.shape[0] < rows:
        return None
    for start in range(weights.shape[0] - rows + 1):
        candidate = weights[start:start + rows]
        sign = np.where(np.sum(candidate * quantized, axis=1) < 0, -1.0, 1.0)
        step = np.abs(candidate).max(axis=1, keepdims=True) / 127.0
        if np.all(np.abs(quantized - candidate * sign[:, None]) <= 0.51 * step + 1e-7):
            return candidate * sign[:, None]
    return None


def attribute(int8_path, float_path, sequences: list, spread: float, last_only: bool, top: int = 3) -> dict:
    """Each tensor class rounded alone (weights float), and the weights alone: the error each
    costs at the output that matters, as RMSE / ``spread``; the ``top`` costliest named.

    ``sequences``: normalised held-out sequences (or windows) ``(T_k, features)``, streamed from a
    zero state; ``last_only`` measures each one's last step, else every step. The float model
    (``float_path``, replayed with nothing rounded) is the reference."""
    replay = Replay(int8_path)
    reference = Replay(float_path)
    float_weights = replay.float_weights_from(reference)
    lengths = np.array([len(s) for s in sequences])
    batch = np.zeros((len(sequences), int(lengths.max()), sequences[0].shape[1]))
    for k, sequence in enumerate(sequences):
        batch[k, : len(sequence)] = sequence
    mask = (np.arange(batch.shape[1])[None, :] == (lengths - 1)[:, None]) if last_only else \
        (np.arange(batch.shape[1])[None, :] < lengths[:, None])
    expected = reference.run(batch)

    def error(rounded=frozenset(), quantized_weights=False) -> float:
        y = replay.run(batch, rounded, None if quantized_weights else float_weights)
        if y.shape[-1] != expected.shape[-1]:  # an integer y of offset copies: their mean
            y = y.reshape(y.shape[:-1] + (expected.shape[-1], -1)).mean(axis=-1)
        return float(np.sqrt(np.mean(((y - expected)[mask]) ** 2)) / spread)

    every_tensor = frozenset(i for i in replay.grid if i not in replay.constants)
    costs = {label: error(frozenset(tensors)) for label, tensors in replay.classes().items()}
    if float_weights:
        costs["weights (int8, per channel)"] = error(quantized_weights=True)
    ranked = sorted(costs.items(), key=lambda item: -item[1])
    return {
        "replay_relative_rmse": error(every_tensor, quantized_weights=True),
        "costliest": [{"tensors": label, "relative_rmse_alone": cost} for label, cost in ranked[:top]],
        "all": {label: cost for label, cost in ranked},
        "measured_at": "last step" if last_only else "every step",
        "sequences": len(sequences),
        "method": "the int8 model replayed in numpy, one class of tensors on its int8 grid at a time, weights float",
    }
