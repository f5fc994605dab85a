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

#: Successive narrowings tried for each tensor's range (stopping at the first that does not help).
STEPS = (0.8, 0.8, 0.8, 0.8, 0.8, 0.8)
_FREE = ("FULLY_CONNECTED", "ADD", "SUB", "MUL")


def _grid_for(lo: float, hi: float) -> tuple:
    from .export.tflite_ops import quant_params_for_range

    return quant_params_for_range(lo, hi, "int8")


def tunable_units(replay: Replay) -> list:
    """Lists of tensor indices that share one grid and may be given any grid together, in graph order."""
    fixed = set(replay.inputs.values()) | set(replay.outputs.values()) | set(replay.constants)
    for op in replay.ops:
        if op["op_name"] == "CONCATENATION":
            fixed |= {int(i) for i in op["inputs"]} | {int(o) for o in op["outputs"]}
        if op["op_name"] in ("QUANTIZE", "DEQUANTIZE"):
            fixed |= {int(i) for i in op["inputs"]} | {int(o) for o in op["outputs"]}
        if op["op_name"] == "FULLY_CONNECTED" and len(op["inputs"]) > 2 and int(op["inputs"][2]) >= 0:
            fixed.add(int(op["inputs"][0]))  # the int32 bias is on (input scale x weight scale)
    for index, (role, _) in replay.roles.items():
        if role in RESIDUAL_PARTS:
            fixed.add(index)
    split_outputs = {}
    for op in replay.ops:
        if op["op_name"] == "SPLIT":
            split_outputs[int(op["inputs"][1])] = [int(o) for o in op["outputs"]]
    units = []
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
    return units


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

    def error(self, model: bytes) -> float:
        tf, n = self.tf, self.batch.shape[1]
        interpreter = tf.lite.Interpreter(model_content=bytes(model), num_threads=1)
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
        return float(np.sqrt(np.mean((ys[self.mask] - self.target) ** 2)) / self.spread)


def _grid_views(model: bytearray, units: list) -> dict:
    """Tensor index -> (scale, zero point) numpy views into the flatbuffer's own bytes (patched in place)."""
    from tensorflow.lite.python import schema_py_generated as schema

    subgraph = schema.Model.GetRootAs(model, 0).Subgraphs(0)
    views = {}
    for unit in units:
        for index in unit:
            q = subgraph.Tensors(index).Quantization()
            views[index] = (q.ScaleAsNumpy(), q.ZeroPointAsNumpy())
    return views


def search_grids(model: bytes, sequences: list, expected: list, steps=STEPS, min_gain: float = 0.002, passes: int = 1,
                 log=None) -> dict:
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
    units = tunable_units(replay)
    buffer = bytearray(model)
    views = _grid_views(buffer, units)
    streamer = _Streamer(model, sequences, expected)
    best = start = streamer.error(buffer)
    evaluations = 1
    for unit in [u for _ in range(passes) for u in units]:
        scale, zero, low, high = float(views[unit[0]][0][0]), int(views[unit[0]][1][0]), -128, 127
        lo, hi = (low - zero) * scale, (high - zero) * scale
        kept = (scale, zero)
        factor = 1.0
        for step in steps:
            factor *= step
            s, z = _grid_for(lo * factor, hi * factor)
            for i in unit:
                views[i][0][0], views[i][1][0] = s, z
            e = streamer.error(buffer)
            evaluations += 1
            if e < best * (1.0 - min_gain):
                best, kept = e, (float(s), int(z))
            else:
                break
        for i in unit:
            views[i][0][0], views[i][1][0] = kept
    chosen = {}
    for unit in units:
        if replay.grid[unit[0]][:2] != (float(views[unit[0]][0][0]), int(views[unit[0]][1][0])):
            for i in unit:
                chosen[replay.details[i]["name"]] = (float(views[i][0][0]), int(views[i][1][0]))
    if log is not None:
        log({"calibration_error_before": start, "calibration_error_after": best, "tensors_changed": len(chosen),
             "tunable": len(units), "evaluations": evaluations})
    return chosen


def apply_grids(model: bytes, grids: dict) -> bytes:
    """Rewrite the named tensors' scale and zero point (names the model lacks are left alone)."""
    from tensorflow.lite.python import schema_py_generated as schema

    from .export.tflite_step import _packed

    parsed = schema.ModelT.InitFromPackedBuf(bytearray(model), 0)
    for tensor in parsed.subgraphs[0].tensors:
        name = tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)
        if name in grids and tensor.quantization is not None and tensor.quantization.scale is not None:
            scale, zero = grids[name]
            tensor.quantization.scale = [float(scale)]
            tensor.quantization.zeroPoint = [int(zero)]
    return _packed(parsed, len(model))
