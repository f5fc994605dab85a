"""Edge TPU compatibility of a TFLite model, checked without the Edge TPU compiler.

The Edge TPU runs only fully int8 models with static shapes, made of the operations its
compiler maps (Coral's "supported operations" table, compiler 16). This module checks a
model's ops and tensors against those rules and prints the ``edgetpu_compiler`` command
to run where it is installed (it is distributed for x86-64 Debian/Ubuntu only through
Coral's own apt repository, which this project cannot reach).
"""

from __future__ import annotations

#: TFLite builtin op names that the Edge TPU compiler maps (Coral docs, compiler 16).
SUPPORTED_OPS = frozenset(
    """ADD AVERAGE_POOL_2D CONCATENATION CONV_2D DEPTHWISE_CONV_2D EXPAND_DIMS FULLY_CONNECTED
    L2_NORMALIZATION LOGISTIC LSTM UNIDIRECTIONAL_SEQUENCE_LSTM MAXIMUM MAX_POOL_2D MEAN MINIMUM MUL PACK
    PAD PRELU QUANTIZE REDUCE_MAX REDUCE_MIN RELU RELU6 RELU_N1_TO_1 RESHAPE RESIZE_BILINEAR
    RESIZE_NEAREST_NEIGHBOR RSQRT SLICE SOFTMAX SPACE_TO_DEPTH SPLIT SQUEEZE STRIDED_SLICE SUB SUM
    SQUARED_DIFFERENCE TANH TRANSPOSE TRANSPOSE_CONV HARD_SWISH""".split()
)
#: Parameter data the Edge TPU caches on chip; larger models stream weights from the host.
ON_CHIP_MEMORY_BYTES = 8 * 1024 * 1024
INTEGER_TYPES = ("int8", "uint8", "int32")  # int32 only for biases


def check(ops: list, tensors: list, model_bytes: int) -> dict:
    """Check op names and tensors (dicts with ``name``, ``dtype``, ``shape``, ``is_constant``).

    Returns ``{"compatible": bool, "offending_ops": [...], "problems": [...], "notes": [...]}``.
    """
    offending = sorted({op for op in ops if op not in SUPPORTED_OPS})
    problems = [f"op {op} is not supported by the Edge TPU" for op in offending]
    for tensor in tensors:
        dtype = tensor["dtype"]
        if dtype not in INTEGER_TYPES:
            problems.append(f"tensor '{tensor['name']}' is {dtype}; the Edge TPU needs int8 tensors")
        elif dtype == "int32" and not tensor.get("is_constant"):
            problems.append(f"tensor '{tensor['name']}' is an int32 activation; only biases may be int32")
        if any(dim is None or int(dim) < 0 for dim in tensor["shape"]):
            problems.append(f"tensor '{tensor['name']}' has a dynamic shape {tensor['shape']}")
    notes = []
    if model_bytes > ON_CHIP_MEMORY_BYTES:
        notes.append(
            f"model is {model_bytes / 1e6:.1f} MB, over the {ON_CHIP_MEMORY_BYTES / 1e6:.0f} MB on-chip cache: "
            "weights will stream over USB/PCIe each step"
        )
    return {"compatible": not problems, "offending_ops": offending, "problems": problems, "notes": notes}


def compiler_command(model_path) -> str:
    """The command that compiles the model for the Edge TPU where ``edgetpu_compiler`` is installed."""
    return f"edgetpu_compiler --show_operations --out_dir {_parent(model_path)} {model_path}"


def _parent(path) -> str:
    from pathlib import Path

    return str(Path(path).parent) or "."
