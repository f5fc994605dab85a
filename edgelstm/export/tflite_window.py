"""TFLite window models: the unrolled window graph of :mod:`.window_graph` in TensorFlow ops.

Input ``x`` is ``(batch, T, features)`` (token models: ``(batch, T)`` int32 ids), output
``y`` is the source model's output for the window: ``(batch, outputs)`` or
``(batch, T', outputs)``. Quantization variants as for step models. With ``io="stream"``
an int8 model keeps float32 ``x`` and ``y`` (QUANTIZE / DEQUANTIZE inside the graph; there
is no state to keep integer), with ``io="quantized"`` every boundary is int8 (the Edge TPU's form).
"""

from __future__ import annotations

import contextlib
import io as _io

import numpy as np

from ..errors import ConversionError
from edgelstm.model.network import Network
from . import window_graph
from .tflite_step import QUANT_MODES, _activation, _tf


class TFOps(window_graph.Ops):
    def __init__(self, tf):
        self.tf = tf
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
        return _activation(self.tf, name, value)

    def split(self, value, parts):
        return self.tf.split(value, parts, axis=1)

    def concat(self, values):
        return self.tf.concat(values, axis=1)

    def maximum(self, a, b):
        return self.tf.maximum(a, b)

    def gather(self, table, ids):
        return self.tf.gather(self.constant(table), ids)


def build_window_function(network: Network, batch: int = 1):
    """A concrete ``tf.function`` over one window and the module that owns it."""
    tf = _tf()
    steps = network.window
    token = network.input_kind == "token"
    spec = (tf.TensorSpec([batch, steps], tf.int32, name="x") if token
            else tf.TensorSpec([batch, steps, network.n_features], tf.float32, name="x"))

    def window(x):
        layers = network.layers
        if token:  # one GATHER for the whole window: a table per step would be quantized once per step
            table = layers[0].table
            x = tf.gather(tf.constant(table), x)  # (batch, T, dim)
            layers = layers[1:]
        width = int(x.shape[-1])
        parts = [tf.reshape(part, [-1, width]) for part in tf.split(x, steps, axis=1)]
        value = window_graph.lower_layers(layers, TFOps(tf), parts)
        return {"y": tf.stack(value, axis=1) if isinstance(value, list) else value}

    module = tf.Module()
    module.window = tf.function(window, input_signature=[spec], autograph=False)  # plain Python loops: no autograph
    return module.window.get_concrete_function(), module


_traced: dict = {}  # (id(network), batch) -> (network, function, module): one trace per network for all variants


def _window_function(network: Network, batch: int):
    key = (id(network), batch)
    found = _traced.get(key)
    if found is None or found[0] is not network:
        _traced.clear()  # one network at a time: traces of large unrolled graphs are big
        found = _traced[key] = (network, *build_window_function(network, batch=batch))
    return found[1], found[2]


def convert(network: Network, quant: str, representative=None, batch: int = 1, io: str = "quantized") -> bytes:
    """Convert the window graph to a TFLite flatbuffer (see the module docstring for ``io``)."""
    if quant not in QUANT_MODES:
        raise ConversionError(f"unknown quantization '{quant}'; choose one of {', '.join(QUANT_MODES)}")
    tf = _tf()
    function, module = _window_function(network, batch)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], module)
    if quant == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quant == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif quant in ("int8", "int16x8"):
        if representative is None:
            raise ConversionError(f"{quant} quantization needs calibration data")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        token = network.input_kind == "token"
        if quant == "int8":
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            if io == "quantized":
                if not token:  # token ids stay int32: the GATHER reads them as indices
                    converter.inference_input_type = tf.int8
                converter.inference_output_type = tf.int8
        else:
            converter.target_spec.supported_ops = [
                tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
            ]
            if not token:
                converter.inference_input_type = tf.int16
            converter.inference_output_type = tf.int16
    log = _io.StringIO()
    try:
        with contextlib.redirect_stdout(log):
            return bytes(converter.convert())
    except Exception as exc:  # the converter raises many types; report its first line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConversionError(f"TFLite converter failed for the {quant} window model: {first}") from None
