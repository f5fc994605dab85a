"""The input normalisation folded into a float-input TFLite step model.

A step model takes the normalised reading ``x = (raw - offset) / scale``. The device runtime
computed it with numpy before every ``Invoke`` (a subtraction and a multiplication into the
input buffer) and measured the reading against its bound (a dot product of the result with
itself): three numpy calls per step, about 3 us of a 28 us step on the C-MAPSS int8 stream
model here, 0.12-0.16x of the bare ``Invoke`` (``bench/device_budget.py``). Folded into the
graph they are four small float ops at the front of the model:

- ``SUB`` of the offset and ``MUL`` by ``1 / scale`` turn the raw reading (the new input ``x``,
  float32) into the tensor the model read before (renamed ``x_normalized``): subtract first,
  as the runtime did, so sensor values such as 1590 +- 5 keep their digits in float32; the
  same two float32 operations, so the normalised values are the ones numpy computed;
- ``MUL`` of that tensor by itself and ``SUM`` over every stream and feature give the summed
  squares of the normalised readings; at the end of the graph ``SUM`` of ``y`` times 0 is added
  (0 when ``y`` is finite, NaN when it is not), giving the output ``deviation``, which the
  runtime compares with its bound after the ``Invoke`` (NaN and Inf propagate into it). When it
  is out of bound the runtime does not feed the new state back: nothing changes, as before; a
  non-finite ``y`` (a float state gone bad) takes the runtime's slow path, which resets that
  stream. It replaces the runtime's own finiteness check of ``y``: two numpy calls per step.

Only models whose ``x`` is float32 are folded (the int8 stream model, whose QUANTIZE of ``x``
now reads the normalised tensor, and the float32, float16 and dynamic-range models); the
integer-I/O models (the Edge TPU's, int16x8) keep a normalised integer ``x``, computed by the
runtime, because float ops at the front of an Edge TPU model would run on its CPU and end the
part the compiler maps. The manifest entry of a folded model says ``"input": "raw"``.
"""

from __future__ import annotations

import numpy as np

from edgelstm.errors import ConversionError
from .tflite_edit import ModelEditor, text as _text

#: the output that carries the summed squares of the normalised readings
DEVIATION = "deviation"
#: the name the normalised input tensor keeps inside a folded model
NORMALIZED = "x_normalized"
#: the tensors the ops added by :func:`fold_normalization` compute (the attribution replay leaves them out)
COMPUTED = (NORMALIZED, "x_centred", "x_squares", "x_deviation", "y_sum", "y_finite", DEVIATION)


def fold_normalization(model: bytes, offset, scale) -> bytes:
    """``model`` taking raw readings: ``x`` float32 ``(batch, features)`` in raw units, the
    ``deviation`` output ``(1, 1)`` added (see the module docstring)."""
    edit = ModelEditor(model)
    schema, subgraph, signature, tensor, operator = edit.schema, edit.subgraph, edit.signature, edit.tensor, edit.operator
    x_map = next((m for m in signature.inputs if _text(m.name) == "x"), None)
    if x_map is None:
        raise ConversionError("the step model has no input 'x' to fold the normalisation into")
    if any(_text(m.name) == DEVIATION for m in signature.outputs):
        raise ConversionError("the step model already takes raw readings")
    normalized = int(x_map.tensorIndex)
    x_tensor = subgraph.tensors[normalized]
    if x_tensor.type != schema.TensorType.FLOAT32:
        raise ConversionError("only a float32 input 'x' can take the normalisation into the model")
    shape = [int(v) for v in x_tensor.shape]
    features = shape[-1]
    offset32 = np.asarray(offset, np.float64).astype(np.float32).reshape(-1)
    factor32 = (1.0 / np.asarray(scale, np.float64)).astype(np.float32).reshape(-1)
    if offset32.size != features or factor32.size != features:
        raise ConversionError(f"normalisation of {offset32.size} features for a model of {features}")

    raw = tensor("x", shape)
    x_tensor.name = NORMALIZED.encode()
    centred = tensor("x_centred", shape)
    offset_tensor = tensor("normalization_offset", [features], data=offset32)
    factor_tensor = tensor("normalization_factor", [features], data=factor32)
    squares = tensor("x_squares", shape)
    axes = tensor("deviation_axes", [2], schema.TensorType.INT32, np.array([0, 1], np.int32))
    input_part = tensor("x_deviation", [1, 1])
    y_map = next((m for m in signature.outputs if _text(m.name) == "y"), None)
    if y_map is None or subgraph.tensors[int(y_map.tensorIndex)].type != schema.TensorType.FLOAT32:
        raise ConversionError("only a model with a float32 output 'y' can take the normalisation into the model")
    y_index = int(y_map.tensorIndex)
    y_sum = tensor("y_sum", [1, 1])
    zero = tensor("deviation_zero", [1], data=np.zeros(1, np.float32))
    y_zero = tensor("y_finite", [1, 1])
    deviation = tensor(DEVIATION, [1, 1])
    sub, mul, reduce = schema.SubOptionsT(), schema.MulOptionsT(), schema.ReducerOptionsT()
    sub.fusedActivationFunction = mul.fusedActivationFunction = schema.ActivationFunctionType.NONE
    reduce.keepDims = True
    operators = schema.BuiltinOperator, schema.BuiltinOptions
    front = [
        operator(operators[0].SUB, [raw, offset_tensor], [centred], operators[1].SubOptions, sub),
        operator(operators[0].MUL, [centred, factor_tensor], [normalized], operators[1].MulOptions, mul),
        operator(operators[0].MUL, [normalized, normalized], [squares], operators[1].MulOptions, mul),
        operator(operators[0].SUM, [squares, axes], [input_part], operators[1].ReducerOptions, reduce),
    ]
    add = schema.AddOptionsT()
    add.fusedActivationFunction = schema.ActivationFunctionType.NONE
    back = [  # y's sum times 0: 0, or NaN when y is not finite
        operator(operators[0].SUM, [y_index, axes], [y_sum], operators[1].ReducerOptions, reduce),
        operator(operators[0].MUL, [y_sum, zero], [y_zero], operators[1].MulOptions, mul),
        operator(operators[0].ADD, [input_part, y_zero], [deviation], operators[1].AddOptions, add),
    ]
    subgraph.operators = front + list(subgraph.operators) + back
    subgraph.inputs = [raw if int(i) == normalized else int(i) for i in subgraph.inputs]
    subgraph.outputs = [int(i) for i in subgraph.outputs] + [deviation]
    x_map.tensorIndex = raw
    output = schema.TensorMapT()
    output.name, output.tensorIndex = DEVIATION.encode(), deviation
    signature.outputs.append(output)
    return edit.packed()


def takes_float_input(model: bytes) -> bool:
    """Whether the step model's input ``x`` is float32 (what :func:`fold_normalization` takes)."""
    edit = ModelEditor(model)
    x_map = edit.signature_tensor("x")
    return x_map is not None and edit.subgraph.tensors[int(x_map.tensorIndex)].type == edit.schema.TensorType.FLOAT32
