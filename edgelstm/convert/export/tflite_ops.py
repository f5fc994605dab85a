"""TensorFlow's side of the op interface: what both TFLite exporters (step and window) are written in.

:class:`TFOps` implements :class:`.window_graph.Ops` with TensorFlow ops, :func:`activation`
maps an activation name onto the ops the converter turns into TFLite builtins, and
:func:`convert_function` runs TensorFlow's converter once for every quantization variant.
The step exporter (:mod:`.tflite_step`) and the window exporter (:mod:`.tflite_window`) both
import this module and not each other.
"""

from __future__ import annotations

import contextlib
import io as _io
import os

import numpy as np

from edgelstm.errors import ConversionError

from . import window_graph

QUANT_MODES = ("float32", "float16", "dynamic", "int8", "int16x8")


def quant_params_for_range(lo: float, hi: float, dtype: str) -> tuple:
    """TFLite's (scale, zero_point) for a real range, with zero exactly representable."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if dtype == "int16":
        bound = max(abs(lo), abs(hi), 1e-8)
        return bound / 32767.0, 0
    if hi - lo < 1e-8:
        hi = lo + 1e-8
    scale = (hi - lo) / 255.0
    zero_point = int(np.clip(round(-128 - lo / scale), -128, 127))
    return scale, zero_point


def tensorflow():
    """Import TensorFlow with its C++ log quietened (the converter is chatty)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    return tf


def activation(tf, name: str, value):
    """``name`` applied to ``value`` in ops that TFLite has as int8 builtins."""
    if name == "linear":
        return value
    if name == "relu":
        return tf.nn.relu(value)
    if name == "sigmoid":
        return tf.sigmoid(value)
    if name == "tanh":
        return tf.tanh(value)
    if name == "hard_sigmoid":  # relu6(x + 3) / 6: ADD, RELU6, MUL
        return tf.nn.relu6(value + 3.0) * (1.0 / 6.0)
    if name == "hard_sigmoid_keras2":  # clip(0.2 x + 0.5, 0, 1): MUL, ADD, RELU_0_TO_1
        return tf.clip_by_value(value * 0.2 + 0.5, 0.0, 1.0)
    if name == "swish":
        return value * tf.sigmoid(value)
    if name == "gelu":
        return tf.nn.gelu(value, approximate=False)
    if name == "softmax":
        return tf.nn.softmax(value, axis=-1)
    raise ConversionError(f"activation '{name}' has no TFLite mapping")


class TFOps(window_graph.Ops):
    """The op interface on TensorFlow tensors; each weight array becomes one constant."""

    def __init__(self, tf, per_gate: bool = True):
        self.tf = tf
        self.per_gate = per_gate
        self._constants = {}  # content -> constant: one per weight array, however many steps use it

    def constant(self, array):
        key = window_graph.constant_key(array)
        if key not in self._constants:
            self._constants[key] = self.tf.constant(array)
        return self._constants[key]

    def dense(self, x, kernel, bias=None):
        value = self.tf.matmul(x, self.constant(kernel))
        return value if bias is None else value + self.constant(bias)

    def add(self, a, b):
        return a + b

    def sub(self, a, b):
        return a - b

    def mul(self, a, b):
        return a * b

    def mul_const(self, a, vector):
        return a * self.constant(np.asarray(vector, np.float32))

    def add_const(self, a, vector):
        return a + self.constant(np.asarray(vector, np.float32))

    def activation(self, name, value):
        return activation(self.tf, name, value)

    def split(self, value, parts):
        return self.tf.split(value, parts, axis=1)

    def concat(self, values):
        return self.tf.concat(values, axis=1)

    def maximum(self, a, b):
        return self.tf.maximum(a, b)

    def gather(self, table, ids):
        return self.tf.gather(self.constant(table), ids)

    def minimum(self, a, b):
        return self.tf.minimum(a, b)

    def stack(self, values):
        return self.tf.stack(values, axis=1)

    def unstack(self, value, count):
        return self.tf.unstack(value, num=count, axis=1)

    def matmul(self, a, b, transpose_b=False):
        return self.tf.matmul(a, b, transpose_b=transpose_b)

    def steps(self, value, start, stop):
        return value[:, start:stop]

    def split_last(self, value, parts):
        return self.tf.split(value, parts, axis=-1)

    def concat_axis(self, values, axis):
        return self.tf.concat(values, axis=axis)

    def swap_last(self, value):
        return self.tf.transpose(value, [0, 2, 1])

    def layer_norm(self, x, gamma, beta, epsilon):
        """FULLY_CONNECTED, MUL, ADD and RSQRT (int8 builtins, all on the Edge TPU's list): ``x - mean``
        is one FC by ``I - 1/F``, the variance one FC by ``1/F`` that gives it already broadcast over
        the features, so no op needs broadcasting."""
        size = int(np.asarray(gamma).shape[0])
        centered = self.tf.matmul(x, self.constant((np.eye(size) - 1.0 / size).astype(np.float32)))
        variance = self.tf.matmul(centered * centered, self.constant(np.full((size, size), 1.0 / size, np.float32)))
        inverse = self.tf.math.rsqrt(variance + self.constant(np.full(size, epsilon, np.float32)))
        return centered * inverse * self.constant(np.asarray(gamma, np.float32)) + self.constant(np.asarray(beta, np.float32))


def convert_function(function, module, quant: str, representative=None, io: str = "quantized",
                     integer_input: bool = True, what: str = "") -> bytes:
    """Run TensorFlow's converter on a concrete function for one quantization variant.

    ``integer_input``: whether the model's ``x`` becomes integer in the quantized forms (token
    ids stay int32: the GATHER reads them as indices). ``what`` names the model in errors.
    """
    if quant not in QUANT_MODES:
        raise ConversionError(f"unknown quantization '{quant}'; choose one of {', '.join(QUANT_MODES)}")
    tf = tensorflow()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], module)
    if quant == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quant == "dynamic":  # what most guides show: Optimize.DEFAULT, no representative data
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif quant in ("int8", "int16x8"):
        if representative is None:
            raise ConversionError(f"{quant} quantization needs calibration data")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        if quant == "int8":
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            if io == "quantized":
                if integer_input:
                    converter.inference_input_type = tf.int8
                converter.inference_output_type = tf.int8
        else:
            converter.target_spec.supported_ops = [
                tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
            ]
            if integer_input:
                converter.inference_input_type = tf.int16
            converter.inference_output_type = tf.int16
    log = _io.StringIO()
    try:
        with contextlib.redirect_stdout(log):
            return bytes(converter.convert())
    except Exception as exc:  # the converter raises many types; report its first line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConversionError(f"TFLite converter failed for {what}{quant}: {first}") from None
