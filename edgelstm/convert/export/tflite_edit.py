"""Small edits of a converted TFLite flatbuffer: add tensors, constants and builtin ops, find signature tensors.

The step exporters finish a model after TensorFlow's converter has quantized it (the normalisation
folded into the front, the output copies averaged at the end): what they add is float bookkeeping
the converter would otherwise have quantized too. :class:`ModelEditor` holds the parsed model
(``schema.ModelT``) and packs it back when done.
"""

from __future__ import annotations

import numpy as np


def text(value) -> str:
    """A flatbuffer string (bytes) as ``str``."""
    return value.decode() if isinstance(value, bytes) else str(value)


class ModelEditor:
    """A parsed TFLite model (first subgraph and signature) with helpers to extend it."""

    def __init__(self, model: bytes):
        from tensorflow.lite.python import schema_py_generated as schema

        self.schema = schema
        self.size_hint = len(model)
        self.parsed = schema.ModelT.InitFromPackedBuf(bytearray(model), 0)
        self.subgraph = self.parsed.subgraphs[0]
        self.signature = self.parsed.signatureDefs[0]

    def signature_tensor(self, name: str, outputs: bool = False):
        """The signature's ``TensorMapT`` called ``name`` (an input, or an output), or None."""
        items = self.signature.outputs if outputs else self.signature.inputs
        return next((m for m in items if text(m.name) == name), None)

    def producer(self, index: int):
        """The operator writing tensor ``index``, or None."""
        return next((op for op in self.subgraph.operators if index in [int(o) for o in op.outputs]), None)

    def builtin(self, op) -> int:
        code = self.parsed.operatorCodes[op.opcodeIndex]
        return max(code.builtinCode, code.deprecatedBuiltinCode)

    def tensor(self, name: str, dims, dtype=None, data: np.ndarray | None = None) -> int:
        """A new tensor (float32 unless ``dtype``); constant when ``data`` is given; returns its index."""
        schema = self.schema
        item = schema.TensorT()
        item.shape, item.name = list(dims), name.encode()
        item.type = schema.TensorType.FLOAT32 if dtype is None else dtype
        item.buffer = 0  # buffer 0 is the empty one: a tensor the interpreter computes
        if data is not None:
            buffer = schema.BufferT()
            buffer.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8)
            self.parsed.buffers.append(buffer)
            item.buffer = len(self.parsed.buffers) - 1
        self.subgraph.tensors.append(item)
        return len(self.subgraph.tensors) - 1

    def opcode(self, builtin: int) -> int:
        for index, code in enumerate(self.parsed.operatorCodes):
            if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin:
                return index
        code = self.schema.OperatorCodeT()
        code.builtinCode, code.deprecatedBuiltinCode, code.version = builtin, min(builtin, 127), 1
        self.parsed.operatorCodes.append(code)
        return len(self.parsed.operatorCodes) - 1

    def operator(self, builtin: int, inputs: list, outputs: list, options_type: int, options):
        """A new operator (not yet placed in the subgraph's operator list)."""
        op = self.schema.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = self.opcode(builtin), list(inputs), list(outputs)
        op.builtinOptionsType, op.builtinOptions = options_type, options
        return op

    def packed(self, extra: int = 1024) -> bytes:
        import flatbuffers

        builder = flatbuffers.Builder(self.size_hint + extra + 1024)
        builder.Finish(self.parsed.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())
