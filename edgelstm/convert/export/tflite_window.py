"""TFLite window models: the unrolled window graph of :mod:`.window_graph` in TensorFlow ops.

Input ``x`` is ``(batch, T, features)`` (token models: ``(batch, T)`` int32 ids), output
``y`` is the source model's output for the window: ``(batch, outputs)`` or
``(batch, T', outputs)``. Quantization variants as for step models. With ``io="stream"``
an int8 model keeps float32 ``x`` and ``y`` (QUANTIZE / DEQUANTIZE inside the graph; there
is no state to keep integer), with ``io="quantized"`` every boundary is int8 (the Edge TPU's form).
"""

from __future__ import annotations


from edgelstm.model.network import Network
from . import window_graph
from .tflite_float_tables import embedding_tables, keep_tables_float
from .tflite_ops import TFOps, convert_function, tensorflow


def build_window_function(network: Network, batch: int = 1, per_gate: bool = False):
    """A concrete ``tf.function`` over one window and the module that owns it (``per_gate``: the
    full-integer graph, each gate on a grid of its own; :class:`.window_graph.Ops`)."""
    tf = tensorflow()
    steps = network.window
    token = network.input_kind == "token"
    spec = (tf.TensorSpec([batch, steps], tf.int32, name="x") if token
            else tf.TensorSpec([batch, steps, network.n_features], tf.float32, name="x"))

    def window(x):
        if token:  # one GATHER for the whole window: a table per step would be quantized once per step
            x = tf.gather(tf.constant(network.layers[0].table), x)  # (batch, T, dim)
        width = int(x.shape[-1])
        parts = [tf.reshape(part, [-1, width]) for part in tf.split(x, steps, axis=1)]
        value = window_graph.lower(network, TFOps(tf, per_gate=per_gate), parts, embedded=token)
        return {"y": tf.stack(value, axis=1) if isinstance(value, list) else value}

    module = tf.Module()
    module.window = tf.function(window, input_signature=[spec], autograph=False)  # plain Python loops: no autograph
    return module.window.get_concrete_function(), module


_traced: dict = {}  # (id(network), batch, per_gate) -> (network, function, module): one trace per network and graph


def _window_function(network: Network, batch: int, per_gate: bool):
    key = (id(network), batch, per_gate)
    found = _traced.get(key)
    if found is None or found[0] is not network:
        if any(k[0] != id(network) for k in _traced):
            _traced.clear()  # one network at a time: traces of large unrolled graphs are big
        found = _traced[key] = (network, *build_window_function(network, batch=batch, per_gate=per_gate))
    return found[1], found[2]


def convert(network: Network, quant: str, representative=None, batch: int = 1, io: str = "quantized") -> bytes:
    """Convert the window graph to a TFLite flatbuffer (see the module docstring for ``io``)."""
    function, module = _window_function(network, batch, per_gate=quant == "int8")
    model = convert_function(function, module, quant, representative, io=io,
                             integer_input=network.input_kind != "token", what="the window model ")
    if quant == "dynamic":  # the Embedding table float32, not int8 on one grid (tflite_float_tables)
        model = keep_tables_float(model, embedding_tables(network))
    return model
