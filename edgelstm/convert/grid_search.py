"""Activation grids chosen for the output error over whole calibration sequences, not per tensor min/max.

The converter gives each int8 tensor the grid of its calibrated min/max. For a step model that
is rarely the grid the recurrence wants: a pre-activation whose range is set by a few transient
steps keeps a coarse step for all the others, and that rounding enters the state at every step.
:func:`search_grids` replays the int8 model in numpy (:class:`.attribution.Replay`, every tensor
on its grid, the file's int8 weights) over calibration sequences streamed from a zero state and,
tensor by tensor (greedy coordinate descent, in graph order), narrows the range to the
candidate that gives the smallest RMSE against the float reference's output. Only tensors
whose grid the int8 kernels take as a free parameter are touched: outputs of FULLY_CONNECTED
(bias-free or not: the bias scale follows the input and weights), ADD, SUB and MUL, together
with the SPLIT outputs that must share their input's grid. Fixed grids (LOGISTIC, TANH), the
state tensors (tied, :func:`.export.tflite_step.tie_state_quantization`), the tensors joined
by a CONCATENATION, the residual cell and hidden-state parts (carry, lo, sum: on grids derived
from the hi grid), the model's input ``x`` and its (de)quantize ops keep theirs.

:func:`apply_grids` writes chosen grids into a flatbuffer by tensor name, so one search serves
both int8 variants (integer I/O and stream), whose internal tensors carry the same names.
"""

from __future__ import annotations

import numpy as np

from .attribution import RESIDUAL_PARTS, Replay

#: Successive narrowings tried for each tensor's range (stopping at the first that does not help), when no ``factors``.
STEPS = (0.8, 0.8, 0.8, 0.8, 0.8, 0.8)
#: Factors of each tensor's range all tried, the best kept (the default search).
FACTORS = (0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3)
_FREE = ("FULLY_CONNECTED", "ADD", "SUB", "MUL")


def _grid_for(lo: float, hi: float) -> tuple:
    from .export.tflite_ops import quant_params_for_range

    return quant_params_for_range(lo, hi, "int8")


def _io_tensors(replay: Replay) -> dict:
    """Key (``@x``, ``@y``, ``@h_0``, ``@h_0_out``, ...) -> the int8 tensor that carries that signature
    tensor: itself, or the output of the QUANTIZE that reads it / the input of the DEQUANTIZE that writes it
    (the two int8 variants hold these under different names)."""
    found = {}
    for name, index in list(replay.inputs.items()) + list(replay.outputs.items()):
        if np.dtype(replay.details[index]["dtype"]) == np.int8:
            found["@" + name] = index
            continue
        for op in replay.ops:
            if op["op_name"] == "QUANTIZE" and int(op["inputs"][0]) == index:
                found["@" + name] = int(op["outputs"][0])
            if op["op_name"] == "DEQUANTIZE" and int(op["outputs"][0]) == index:
                found["@" + name] = int(op["inputs"][0])
    return found


def tunable_units(replay: Replay, io: bool = True) -> list:
    """Lists of tensor indices that share one grid and may be given any grid together, in graph order.

    ``io``: also the int8 ``x`` and ``y`` and each single-grid hidden state (its input and output,
    tied, with the CONCATENATION parts that form it); an FC with a bias that reads a tuned tensor
    has its int32 bias requantized with it (:func:`_bias_links`)."""
    carriers = _io_tensors(replay)
    fixed = set(replay.inputs.values()) | set(replay.outputs.values()) | set(replay.constants) | set(carriers.values())
    concat_of = {}
    for op in replay.ops:
        if op["op_name"] == "CONCATENATION":
            fixed |= {int(i) for i in op["inputs"]} | {int(o) for o in op["outputs"]}
            concat_of[int(op["outputs"][0])] = [int(i) for i in op["inputs"]]
        if op["op_name"] in ("QUANTIZE", "DEQUANTIZE"):
            fixed |= {int(i) for i in op["inputs"]} | {int(o) for o in op["outputs"]}
    for index, (role, _) in replay.roles.items():
        if role in RESIDUAL_PARTS:
            fixed.add(index)
    split_outputs = {}
    for op in replay.ops:
        if op["op_name"] == "SPLIT":
            split_outputs[int(op["inputs"][1])] = [int(o) for o in op["outputs"]]
    units = []
    if io and "@x" in carriers and carriers["@x"] in replay.grid:
        units.append([carriers["@x"]])
    for op in replay.ops:
        if op["op_name"] not in _FREE:
            continue
        out = int(op["outputs"][0])
        if out in fixed or out not in replay.grid or np.dtype(replay.details[out]["dtype"]) != np.int8:
            continue
        unit = [out] + split_outputs.get(out, [])
        if any(i in fixed for i in unit[1:]):
            continue
        units.append(unit)
    if io:
        names = [n for n in replay.inputs if n != "x"]
        for name in names:  # single-grid hidden states (residual ones, and cells, keep their derived grids)
            if not name.startswith("h_") or name.endswith("_lo") or f"{name}_lo" in names:
                continue
            into, out = carriers.get("@" + name), carriers.get(f"@{name}_out")
            if into is None or out is None or into not in replay.grid:
                continue
            units.append([into, out] + concat_of.get(out, []))
        if "@y" in carriers and carriers["@y"] in replay.grid:
            units.append([carriers["@y"]])
    return units


def _bias_links(replay: Replay, units: list) -> dict:
    """Tuned tensor -> [(bias tensor, weight tensor)] of the FCs with a bias that read it."""
    tuned = {i for unit in units for i in unit}
    links = {}
    for op in replay.ops:
        ins = [int(v) for v in op["inputs"]]
        if op["op_name"] == "FULLY_CONNECTED" and len(ins) > 2 and ins[2] >= 0 and ins[0] in tuned:
            links.setdefault(ins[0], []).append((ins[2], ins[1]))
    return links


def _keys(replay: Replay) -> dict:
    """Tensor index -> the key its grid is stored under (the tensor's name; ``@name`` for signature carriers)."""
    keys = {index: replay.details[index]["name"] for index in replay.details}
    keys.update({index: key for key, index in _io_tensors(replay).items()})
    return keys


class _Error(float):
    """The error over every sequence (the float) and over the even and odd sequences (``halves``)."""

    def __new__(cls, total, halves):
        value = super().__new__(cls, total)
        value.halves = halves
        return value

    def better(self, other: "_Error", min_gain: float) -> bool:
        return self < other * (1.0 - min_gain) and all(a < b for a, b in zip(self.halves, other.halves))


class _Streamer:
    """The TFLite interpreter streaming every calibration sequence at once (batch = sequences) from a
    zero state; :meth:`error` is the RMSE / std of its output against the float output, every step."""

    def __init__(self, model: bytes, sequences: list, expected: list):
        from .export.tflite_ops import tensorflow

        self.tf = tensorflow()
        interpreter = self.tf.lite.Interpreter(model_content=bytes(model), num_threads=1)
        runner = interpreter.get_signature_runner()
        self.inputs = {name: (d["index"], list(d["shape"][1:]), d["dtype"], d["quantization_parameters"])
                       for name, d in runner.get_input_details().items()}
        self.outputs = {name: d["index"] for name, d in runner.get_output_details().items()}
        del runner, interpreter
        lengths = np.array([len(s) for s in sequences])
        self.batch = np.zeros((int(lengths.max()), len(sequences), sequences[0].shape[1]), np.float32)
        target = np.zeros((int(lengths.max()), len(sequences), expected[0].shape[1]))
        for k, (sequence, values) in enumerate(zip(sequences, expected)):
            self.batch[: len(sequence), k] = sequence
            target[: len(sequence), k] = values
        self.mask = np.arange(self.batch.shape[0])[:, None] < lengths[None, :]
        self.target = target[self.mask]
        self.spread = float(np.std(self.target)) or 1.0
        self.halves = False
        which = np.broadcast_to(np.arange(len(sequences))[None, :] % 2, self.mask.shape)[self.mask]
        self.parts = (which == 0, which == 1)  # even and odd sequences

    def error(self, model: bytes) -> float:
        tf, n = self.tf, self.batch.shape[1]
        # TFLite's reference int8 kernels (no XNNPACK): grids fitted to one delegate's rounding would not carry over
        interpreter = tf.lite.Interpreter(model_content=bytes(model), num_threads=1, experimental_op_resolver_type=(
            tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES))
        for index, shape, _, _ in self.inputs.values():
            interpreter.resize_tensor_input(index, [n] + shape)
        interpreter.allocate_tensors()
        states = {}
        for name, (index, shape, dtype, q) in self.inputs.items():
            if name != "x":  # a zero state: the grid's zero point
                zero = int(q["zero_points"][0]) if len(q["zero_points"]) else 0
                states[name] = np.full([n] + shape, zero, dtype)
        pairs = [(self.inputs[name][0], self.outputs[f"{name}_out"]) for name in states]
        x_index, y_index = self.inputs["x"][0], self.outputs["y"]
        for index, value in ((self.inputs[name][0], value) for name, value in states.items()):
            interpreter.set_tensor(index, value)
        ys = np.empty(self.batch.shape[:2] + (self.target.shape[-1],))
        for t in range(self.batch.shape[0]):
            interpreter.set_tensor(x_index, self.batch[t])
            interpreter.invoke()
            ys[t] = interpreter.get_tensor(y_index)
            for into, out in pairs:
                interpreter.set_tensor(into, interpreter.get_tensor(out))
        squared = ((ys[self.mask] - self.target) ** 2).mean(axis=-1)
        total = float(np.sqrt(np.mean(squared)) / self.spread)
        if not self.halves:
            return total
        halves = tuple(float(np.sqrt(np.mean(squared[part])) / self.spread) for part in self.parts)
        return _Error(total, halves)


class _Grids:
    """Scale and zero point of the tuned tensors (and the int32 biases that follow them) as numpy views into
    the flatbuffer's own bytes: :meth:`set` patches the model in place."""

    def __init__(self, model: bytearray, units: list, links: dict):
        from tensorflow.lite.python import schema_py_generated as schema

        parsed = schema.Model.GetRootAs(model, 0)
        subgraph = parsed.Subgraphs(0)

        def quant(index):
            q = subgraph.Tensors(index).Quantization()
            return q.ScaleAsNumpy(), q.ZeroPointAsNumpy()

        self.views = {index: quant(index) for unit in units for index in unit}
        self.biases = {}  # tensor -> [(bias int32 view, bias scale view, real bias, weight scales)]
        for index, pairs in links.items():
            for bias, weight in pairs:
                data = parsed.Buffers(subgraph.Tensors(bias).Buffer()).DataAsNumpy().view(np.int32)
                bias_scale, _ = quant(bias)
                weight_scale, _ = quant(weight)
                real = data.astype(np.float64) * np.broadcast_to(bias_scale, data.shape)
                self.biases.setdefault(index, []).append((data, bias_scale, real, np.asarray(weight_scale, np.float64)))

    def get(self, index: int) -> tuple:
        scale, zero = self.views[index]
        return float(scale[0]), int(zero[0])

    def set(self, unit: list, grid: tuple) -> None:
        for index in unit:
            scale, zero = self.views[index]
            scale[0], zero[0] = grid
            for data, bias_scale, real, weight_scale in self.biases.get(index, []):
                new_scale = np.broadcast_to(grid[0] * weight_scale, data.shape)
                data[:] = np.clip(np.rint(real / new_scale), -2**31, 2**31 - 1).astype(np.int32)
                bias_scale[:] = new_scale[: len(bias_scale)] if len(bias_scale) > 1 else new_scale[:1]


def search_grids(model: bytes, sequences: list, expected: list, steps=STEPS, min_gain: float = 0.002, passes: int = 1,
                 factors=FACTORS, both_halves: bool = True, io: bool = False, log=None) -> dict:
    """Tensor name -> (scale, zero point) of the grids that lower the int8 stream model's output error.

    ``model``: the int8 model with float ``x``/``y`` (io="stream"); ``sequences``: normalised
    calibration sequences ``(T_k, features)``; ``expected``: the float model's outputs on them. Each
    tunable tensor (in graph order) has its range narrowed step by step (``steps``: factors of the
    current range) while the error measured by the interpreter over every step of every sequence
    falls by more than ``min_gain`` of itself."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "model.tflite"
        path.write_bytes(model)
        replay = Replay(path)
    units = tunable_units(replay, io=io)
    buffer = bytearray(model)
    grids = _Grids(buffer, units, _bias_links(replay, units))
    streamer = _Streamer(model, sequences, expected)
    streamer.halves = both_halves

    def improves(e, best) -> bool:
        return e.better(best, min_gain) if both_halves else e < best * (1.0 - min_gain)

    original = {unit[0]: grids.get(unit[0]) for unit in units}
    best = start = streamer.error(buffer)
    evaluations = 1
    for unit in [u for _ in range(passes) for u in units]:
        scale, zero = grids.get(unit[0])
        lo, hi = (-128 - zero) * scale, (127 - zero) * scale
        kept = (scale, zero)
        candidates = factors if factors is not None else steps
        factor = 1.0
        for value in candidates:
            factor = value if factors is not None else factor * value
            grid = tuple(float(v) if i == 0 else int(v) for i, v in enumerate(_grid_for(lo * factor, hi * factor)))
            grids.set(unit, grid)
            e = streamer.error(buffer)
            evaluations += 1
            if improves(e, best):
                best, kept = e, grid
            elif factors is None:
                break
        grids.set(unit, kept)
    keys = _keys(replay)
    chosen = {}
    for unit in units:
        if grids.get(unit[0]) != original[unit[0]]:
            for i in unit:
                chosen[keys[i]] = grids.get(i)
    if log is not None:
        log({"calibration_error_before": start, "calibration_error_after": best, "tensors_changed": len(chosen),
             "tunable": len(units), "evaluations": evaluations})
    return chosen


def apply_grids(model: bytes, grids: dict) -> bytes:
    """Rewrite the tensors' scale and zero point (keys: tensor names, or ``@x``-style signature carriers; keys
    the model lacks are left alone), requantizing the int32 bias of every FC whose input grid changed."""
    import tempfile
    from pathlib import Path

    from tensorflow.lite.python import schema_py_generated as schema

    from .export.tflite_step import _packed

    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "model.tflite"
        path.write_bytes(model)
        replay = Replay(path)
    by_key = {key: index for index, key in _keys(replay).items()}
    targets = {by_key[key]: grid for key, grid in grids.items() if key in by_key}
    parsed = schema.ModelT.InitFromPackedBuf(bytearray(model), 0)
    subgraph = parsed.subgraphs[0]
    tensors = subgraph.tensors
    changed = {}
    for index, (scale, zero) in targets.items():
        q = tensors[index].quantization
        if q is None or q.scale is None:
            continue
        changed[index] = float(q.scale[0])
        q.scale, q.zeroPoint = [float(scale)], [int(zero)]
    for op in subgraph.operators:
        code = parsed.operatorCodes[op.opcodeIndex]
        if max(code.builtinCode, code.deprecatedBuiltinCode) != schema.BuiltinOperator.FULLY_CONNECTED:
            continue
        ins = [int(v) for v in op.inputs]
        if len(ins) < 3 or ins[2] < 0 or ins[0] not in changed:
            continue
        bias, weight = tensors[ins[2]], tensors[ins[1]]
        buffer = parsed.buffers[bias.buffer]
        data = np.frombuffer(np.asarray(buffer.data, np.uint8).tobytes(), np.int32)
        real = data.astype(np.float64) * np.broadcast_to(np.asarray(bias.quantization.scale, np.float64), data.shape)
        new_scale = np.broadcast_to(float(tensors[ins[0]].quantization.scale[0]) * np.asarray(weight.quantization.scale, np.float64), data.shape)
        buffer.data = np.frombuffer(np.clip(np.rint(real / new_scale), -2**31, 2**31 - 1).astype(np.int32).tobytes(), np.uint8)
        bias.quantization.scale = [float(v) for v in new_scale] if len(bias.quantization.scale) > 1 else [float(new_scale[0])]
    return _packed(parsed, len(model))
