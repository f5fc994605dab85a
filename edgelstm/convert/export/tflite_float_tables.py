"""Embedding tables kept float32 in the dynamic-range step model.

TensorFlow's dynamic-range quantizer stores every large constant as int8 with one scale per
tensor, and an Embedding's table (vocabulary x dimensions) is one: its rows are read by a
GATHER and a DEQUANTIZE, so each token's vector comes back rounded onto one grid for the whole
table. Every other weight of that model is int8 per output channel, inside an FC that quantizes
its input on the fly. The table is small (the zoo's character model: 97 x 32 values, 12 kB in
float32) and read one row per step, so :func:`keep_tables_float` puts the float table back: the
GATHER reads float32 rows and the DEQUANTIZE goes. Measured on the zoo's character LSTM
(``python bench/int8_fidelity.py --models char_lstm_stdlib --no-peers``): docs/measurements.md.
"""

from __future__ import annotations

import numpy as np

from edgelstm.model.network import EmbeddingLayer, Network
from .tflite_edit import ModelEditor


#: tables up to this many values stay float32 (256 kB); larger ones keep the quantizer's int8 (a
#: 10,000-word vocabulary of 128 dimensions would take 5 MB in float32, 1.3 MB in int8)
MAX_FLOAT_VALUES = 65_536


def embedding_tables(network: Network) -> list:
    """The network's Embedding tables (float32) small enough to stay float (:data:`MAX_FLOAT_VALUES`)."""
    return [np.asarray(layer.table, np.float32) for layer in network.layers
            if isinstance(layer, EmbeddingLayer) and np.size(layer.table) <= MAX_FLOAT_VALUES]


def keep_tables_float(model: bytes, tables: list) -> bytes:
    """``model`` with each int8 table a GATHER reads (then DEQUANTIZEd) replaced by the float32
    table of ``tables`` with the same shape; the DEQUANTIZE's readers read the GATHER instead."""
    edit = ModelEditor(model)
    schema = edit.schema
    tensors = edit.subgraph.tensors
    by_shape = {tuple(np.shape(table)): np.asarray(table, np.float32) for table in tables}
    dequantize_of = {}
    for op in edit.subgraph.operators:
        if edit.builtin(op) == schema.BuiltinOperator.DEQUANTIZE:
            dequantize_of[int(op.inputs[0])] = op
    replaced = set()
    for op in list(edit.subgraph.operators):
        if edit.builtin(op) != schema.BuiltinOperator.GATHER:
            continue
        table, gathered = int(op.inputs[0]), int(op.outputs[0])
        shape = tuple(int(v) for v in tensors[table].shape)
        if tensors[table].type != schema.TensorType.INT8 or gathered not in dequantize_of:
            continue
        if shape not in by_shape:  # a table too large to keep float
            continue
        buffer = edit.parsed.buffers[tensors[table].buffer]
        buffer.data = np.frombuffer(by_shape[shape].tobytes(), np.uint8)
        tensors[table].type = schema.TensorType.FLOAT32
        tensors[table].quantization = None
        tensors[gathered].type = schema.TensorType.FLOAT32
        tensors[gathered].quantization = None
        dequantize = dequantize_of[gathered]
        result = int(dequantize.outputs[0])
        for reader in edit.subgraph.operators:
            reader.inputs = [gathered if int(i) == result else int(i) for i in reader.inputs]
        edit.subgraph.outputs = [gathered if int(i) == result else int(i) for i in edit.subgraph.outputs]
        replaced.add(id(dequantize))
    edit.subgraph.operators = [op for op in edit.subgraph.operators if id(op) not in replaced]
    return edit.packed(extra=sum(np.asarray(t).size * 4 for t in tables))
