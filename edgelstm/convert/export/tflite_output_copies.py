"""The full-integer step model's output on a grid four times finer, with int8 ops only.

A full-integer model ends in an int8 tensor: its output ``y`` is rounded onto 256 levels over
its range. On the RUL models (outputs of 0-150 cycles) that one rounding costs about 0.6 % of
the output's spread; on the PyTorch 4-layer GRU forecaster it was the costliest tensor class of
all (1.41 % of its 2.03 %, the bundle report's error attribution).

When the network ends in a linear ``Dense`` layer, the step graph computes that layer ``K``
times (:data:`COPIES`; one FULLY_CONNECTED with ``K`` identical rows per output, so the
copies share one int8 grid of step ``s``), and :func:`offset_output_copies` adds to copy ``k``
of each output ``(k - (K - 1) / 2) / K`` of a grid step, through its int32 bias. By Hermite's
identity, ``sum_k round(u + (k - (K - 1) / 2) / K) = round(K u)``: the mean of the ``K``
rounded copies is the output rounded onto a grid of step ``s / K``, exactly, for every value
inside the grid's range. The copies cost ``K - 1`` more rows in the last FC (a few hundred
multiply-adds on these models).

The mean is taken after the int8 part: in the stream model (float ``y``) by one float
FULLY_CONNECTED appended behind the DEQUANTIZE (:func:`average_output_copies`); the
integer-I/O model (the Edge TPU's) keeps the ``K`` copies as its int8 output, and the runtime
averages them after dequantizing (manifest field ``output_copies``).

Measured (``python bench/int8_fidelity.py --no-peers``): see docs/measurements.md.
"""

from __future__ import annotations

import numpy as np

from edgelstm.errors import ConversionError
from edgelstm.model.network import DenseLayer, Network
from .tflite_edit import ModelEditor

#: copies of the output the full-integer step model computes (1: the output as it was)
COPIES = 4
#: the stream model's int8 copies read as whole numbers (scale 1): the first tensor the mean adds
INTEGERS = "y_copies_integers"
#: every tensor :func:`average_output_copies` adds (the attribution replay stops before them)
COMPUTED = (INTEGERS, "y_copies_counts", "y_copies_total", "y_copies_mean")


def output_copies(network: Network) -> int:
    """How many copies of its output the full-integer step model of ``network`` computes:
    :data:`COPIES` when the network ends in a linear Dense layer (an int32 bias to shift), else 1."""
    last = network.layers[-1] if network.layers else None
    if network.mode == "step" and isinstance(last, DenseLayer) and last.activation == "linear":
        return COPIES
    return 1


def offsets(copies: int) -> np.ndarray:
    """Copy ``k``'s shift in grid steps: ``(k - (K - 1) / 2) / K``, centred, so no copy moves by more than half a step."""
    return (np.arange(copies) - (copies - 1) / 2.0) / copies


def _output_fc(edit: ModelEditor, copies: int):
    """The int8 ``y`` tensor (the model's output, or what its DEQUANTIZE reads) and the FULLY_CONNECTED writing it."""
    schema = edit.schema
    y_map = edit.signature_tensor("y", outputs=True)
    if y_map is None:
        raise ConversionError("output copies: the step model has no output 'y'")
    index = int(y_map.tensorIndex)
    op = edit.producer(index)
    if op is not None and edit.builtin(op) == schema.BuiltinOperator.DEQUANTIZE:
        index = int(op.inputs[0])
        op = edit.producer(index)
    if op is None or edit.builtin(op) != schema.BuiltinOperator.FULLY_CONNECTED:
        raise ConversionError("output copies: 'y' is not written by a FULLY_CONNECTED")
    width = int(edit.subgraph.tensors[index].shape[-1])
    if width % copies:
        raise ConversionError(f"output copies: 'y' has {width} values, not a multiple of {copies} copies")
    return index, op


def offset_output_copies(model: bytes, copies: int) -> bytes:
    """Shift copy ``k`` of every output by :func:`offsets` ``[k]`` steps of ``y``'s int8 grid (its int32 bias).

    ``y``'s values are laid out output by output: ``[y0 copy 0 .. y0 copy K-1, y1 copy 0, ...]``."""
    edit = ModelEditor(model)
    index, op = _output_fc(edit, copies)
    tensors = edit.subgraph.tensors
    y_scale = float(tensors[index].quantization.scale[0])
    if len(op.inputs) < 3 or op.inputs[2] < 0:  # the converter drops an all-zero bias: one of zeros again
        op.inputs = [int(v) for v in op.inputs[:2]] + [_zero_bias(edit, op)]
    bias = tensors[int(op.inputs[2])]
    if bias.type != edit.schema.TensorType.INT32:
        raise ConversionError("output copies: the output FC's bias is not int32 (not a full-integer model)")
    buffer = edit.parsed.buffers[bias.buffer]
    data = np.frombuffer(np.asarray(buffer.data, np.uint8).tobytes(), np.int32).astype(np.int64)
    bias_scale = np.broadcast_to(np.asarray(bias.quantization.scale, np.float64), data.shape)
    shift = np.tile(offsets(copies), data.size // copies) * y_scale / bias_scale
    shifted = np.clip(data + np.rint(shift).astype(np.int64), -2**31, 2**31 - 1).astype(np.int32)
    buffer.data = np.frombuffer(shifted.tobytes(), np.uint8)
    return edit.packed()


def _zero_bias(edit: ModelEditor, op) -> int:
    """An int32 bias of zeros for FC ``op``, on the scale the int8 kernel expects (input scale times weight scale)."""
    schema = edit.schema
    tensors = edit.subgraph.tensors
    source, weights = tensors[int(op.inputs[0])], tensors[int(op.inputs[1])]
    rows = int(weights.shape[0])
    scales = np.asarray(weights.quantization.scale, np.float64) * float(source.quantization.scale[0])
    index = edit.tensor("y_copies_bias", [rows], schema.TensorType.INT32, np.zeros(rows, np.int32))
    quantization = schema.QuantizationParametersT()
    quantization.scale = [float(v) for v in scales]
    quantization.zeroPoint = [0] * len(scales)
    quantization.quantizedDimension = 0
    tensors[index].quantization = quantization
    return index


def average_output_copies(model: bytes, copies: int) -> bytes:
    """A float-``y`` model (the stream variant): ``y`` becomes the mean of its copies, computed so
    that the runtime's mean of the integer model's copies is the same to the bit (any summation
    order gives one result): the int8 copies are read as integers (a RESHAPE to a view of the same
    bytes with scale 1 and the copies' zero point), dequantized to exact whole numbers, summed by a
    float FULLY_CONNECTED of ones (exact), and multiplied by ``scale / K`` (one rounding). These
    replace the converter's DEQUANTIZE of the copies."""
    edit = ModelEditor(model)
    schema = edit.schema
    tensors = edit.subgraph.tensors
    y_map = edit.signature_tensor("y", outputs=True)
    wide = int(y_map.tensorIndex) if y_map is not None else -1
    if wide < 0 or tensors[wide].type != schema.TensorType.FLOAT32:
        raise ConversionError("output copies: only a float output 'y' can be averaged inside the model")
    index, _ = _output_fc(edit, copies)
    shape = [int(v) for v in tensors[wide].shape]
    outputs = shape[-1] // copies
    scale, zero = float(tensors[index].quantization.scale[0]), int(tensors[index].quantization.zeroPoint[0])
    edit.subgraph.operators = [op for op in edit.subgraph.operators if wide not in [int(o) for o in op.outputs]]
    as_integers = edit.tensor(INTEGERS, shape, schema.TensorType.INT8)
    view = schema.QuantizationParametersT()
    view.scale, view.zeroPoint = [1.0], [zero]
    tensors[as_integers].quantization = view
    # any number of streams: the batch dimension is left to the RESHAPE (-1)
    new_shape = edit.tensor("y_copies_shape", [2], schema.TensorType.INT32, np.array([-1, shape[-1]], np.int32))
    counts = edit.tensor("y_copies_counts", shape)
    ones = edit.tensor("y_copies_ones", [outputs, shape[-1]], data=np.kron(np.eye(outputs), np.ones((1, copies))).astype(np.float32))
    total = edit.tensor("y_copies_total", shape[:-1] + [outputs])
    factor = edit.tensor("y_copies_factor", [1], data=np.array([mean_factor(scale, copies)], np.float32))
    mean = edit.tensor("y_copies_mean", shape[:-1] + [outputs])
    reshape, fc, mul = schema.ReshapeOptionsT(), schema.FullyConnectedOptionsT(), schema.MulOptionsT()
    reshape.newShape = [-1, shape[-1]]
    fc.fusedActivationFunction = mul.fusedActivationFunction = schema.ActivationFunctionType.NONE
    ops, options = schema.BuiltinOperator, schema.BuiltinOptions
    edit.subgraph.operators += [
        edit.operator(ops.RESHAPE, [index, new_shape], [as_integers], options.ReshapeOptions, reshape),
        edit.operator(ops.DEQUANTIZE, [as_integers], [counts], options.NONE, None),
        edit.operator(ops.FULLY_CONNECTED, [counts, ones, -1], [total], options.FullyConnectedOptions, fc),
        edit.operator(ops.MUL, [total, factor], [mean], options.MulOptions, mul),
    ]
    edit.subgraph.outputs = [mean if int(i) == wide else int(i) for i in edit.subgraph.outputs]
    y_map.tensorIndex = mean
    return edit.packed()


def mean_factor(scale: float, copies: int) -> np.float32:
    """What the summed whole-number copies are multiplied by: ``scale / K`` in float32 (the runtime's
    :class:`~edgelstm.runtime.steppers.TFLiteStepper` computes the same number for the integer model)."""
    return np.float32(float(scale) / copies)
