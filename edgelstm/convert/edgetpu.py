"""Edge TPU compatibility of a TFLite model, checked without the Edge TPU compiler.

The Edge TPU runs only fully int8 (or uint8) models with static shapes, made of the
operations its compiler maps. This module reads a ``.tflite`` flatbuffer (:func:`read_tflite`),
walks its ops in execution order and checks each op and tensor against Coral's documented
rules (:func:`check`), and gives the ``edgetpu_compiler`` command to run where the compiler
is installed (:func:`compiler_command`; it is distributed for x86-64 Debian/Ubuntu only,
through Coral's own apt repository, which this project cannot reach).

Rules (Coral, "TensorFlow models on the Edge TPU", https://coral.ai/docs/edgetpu/models-intro/,
section "Model requirements" and the "Supported operations" table, compiler 16):

- tensor parameters and activations are 8-bit quantized (int8/uint8; biases int32);
- tensor sizes are constant at compile time (no dynamic sizes) and model parameters are
  constant at compile time;
- tensors are 1-, 2- or 3-dimensional; a tensor of higher rank may have sizes above 1 only
  in its 3 innermost dimensions;
- only the ops of the supported-operations table map, each with its known limitations;
- the compiler cannot partition a model more than once: at the first op it cannot map, that
  op and every op after it run on the CPU, even ops it could map. Float inputs and outputs
  are allowed: their QUANTIZE/DEQUANTIZE ops run on the CPU at the edges of the graph.

A model that breaks a rule of the first kind is reported as an *error* (the compiler refuses
it or maps nothing of it); ops that would run on the CPU and parameters over the on-chip
cache are *warnings*. ``edgetpu_compiler``'s own log stays the final word: this is a static
check of the documented rules, and the compiler also declines ops for undocumented reasons
("Operation is otherwise supported, but not mapped due to some unspecified limitation").
"""

from __future__ import annotations

import shlex
from pathlib import Path

#: TFLite builtin op names that the Edge TPU compiler maps (Coral's supported-operations
#: table, compiler 16 / runtime 14). Not in it, among others: GATHER (an Embedding lookup),
#: UNPACK, DEQUANTIZE, CAST, DIV, EXP, HARD_SWISH, BATCH_MATMUL, WHILE.
SUPPORTED_OPS = frozenset(
    """ADD AVERAGE_POOL_2D CONCATENATION CONV_2D DEPTHWISE_CONV_2D EXPAND_DIMS FULLY_CONNECTED
    L2_NORMALIZATION LOGISTIC LSTM UNIDIRECTIONAL_SEQUENCE_LSTM MAXIMUM MAX_POOL_2D MEAN MINIMUM MUL PACK
    PAD PRELU QUANTIZE REDUCE_MAX REDUCE_MIN RELU RELU6 RELU_N1_TO_1 RESHAPE RESIZE_BILINEAR
    RESIZE_NEAREST_NEIGHBOR RSQRT SLICE SOFTMAX SPACE_TO_DEPTH SPLIT SQUEEZE STRIDED_SLICE SUB SUM
    SQUARED_DIFFERENCE TANH TRANSPOSE TRANSPOSE_CONV""".split()
)
#: The "known limitations" column of Coral's table, for the ops that have one.
LIMITATIONS = {
    "AVERAGE_POOL_2D": "no fused activation function",
    "CONCATENATION": "no fused activation function; a compile-time constant input is allowed only as one of "
                     "exactly 2 inputs and only if it is all zeros (a zero padding)",
    "CONV_2D": "same dilation in x and y",
    "DEPTHWISE_CONV_2D": "same dilation in x and y",
    "FULLY_CONNECTED": "only the default weights format; the output tensor is one-dimensional",
    "LSTM": "unidirectional LSTM only",
    "UNIDIRECTIONAL_SEQUENCE_LSTM": "unidirectional LSTM only",
    "MAX_POOL_2D": "no fused activation function",
    "MEAN": "no reduction in the batch dimension; a z-reduction needs a z-dimension that is a multiple of 4",
    "PACK": "no packing in the batch dimension",
    "PAD": "no padding in the batch dimension",
    "PRELU": "alpha must be 1-dimensional (only its innermost dimension above 1)",
    "REDUCE_MAX": "cannot operate on the batch dimension",
    "REDUCE_MIN": "cannot operate on the batch dimension",
    "SUM": "cannot operate on the batch dimension",
    "RESHAPE": "certain reshapes might not be mapped for large tensor sizes",
    "RESIZE_BILINEAR": "3-dimensional input/output; depending on the sizes it may stay on the CPU to avoid precision loss",
    "RESIZE_NEAREST_NEIGHBOR": "3-dimensional input/output; depending on the sizes it may stay on the CPU to avoid precision loss",
    "SOFTMAX": "only a 1-D input tensor of at most 16,000 elements",
    "SQUEEZE": "only squeezing leading 1s (no relayout)",
    "STRIDED_SLICE": "all strides 1, ellipsis_mask 0 and new_axis_mask 0",
}
#: Why some common ops are missing, printed with the finding.
HINTS = {
    "GATHER": "an Embedding lookup: Edge TPU models take the embedded vectors as input instead",
    "UNPACK": "SPLIT (+ RESHAPE) does the same on the Edge TPU",
    "DEQUANTIZE": "float outputs are converted on the CPU",
    "HARD_SWISH": "not in Coral's table",
}
COMPILED_OP = "edgetpu-custom-op"  # the custom op that edgetpu_compiler puts in its place
#: SRAM on the Edge TPU. Parameters are cached in it; what does not fit is streamed from the
#: host at every inference (slower). Compiler 16 reported 6.89 MiB used + 1 KiB remaining
#: for model parameters (google-coral/edgetpu#512), so the parameter budget is below 8 MiB.
ON_CHIP_MEMORY_BYTES = 8 * 1024 * 1024
PARAMETER_CACHE_BYTES = int(6.9 * 1024 * 1024)
INTEGER_TYPES = ("int8", "uint8", "int32")  # int32 only for constants (biases, axes, shapes)
EDGE_TYPES = ("int8", "uint8")
FLOAT_TYPES = ("float32", "float16", "float64", "bfloat16")
SOFTMAX_MAX_ELEMENTS = 16_000
_NO_FUSED_ACTIVATION = ("AVERAGE_POOL_2D", "CONCATENATION", "MAX_POOL_2D")
_BATCH_AXIS_OPS = {"MEAN": 1, "SUM": 1, "REDUCE_MAX": 1, "REDUCE_MIN": 1}  # op -> index of its axis input


# ---------------------------------------------------------------------------------------
# Reading a .tflite flatbuffer (ops in execution order, tensors, constants, op options)


def _schema():
    """The TFLite flatbuffer schema module shipped with LiteRT (or TensorFlow)."""
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:
        try:
            from tensorflow.lite.python import schema_py_generated as schema
        except ImportError:
            from edgelstm.errors import BackendUnavailableError

            raise BackendUnavailableError(
                "reading TFLite files needs LiteRT's schema module: pip install ai-edge-litert"
            ) from None
    return schema


def read_tflite(path) -> dict:
    """The main subgraph of a TFLite file: ops in execution order (``index``, ``op``,
    ``inputs``, ``outputs``, ``options``, ``custom_code``), every tensor (``index``, ``name``,
    ``dtype``, ``shape``, ``shape_signature``, ``is_constant``, ``bytes``, quantization; small
    integer constants with their ``value``, every constant with ``all_zero``), the graph's
    input and output tensor indices and its signature names. No interpreter is created, so
    this also reads models with custom ops (a compiled ``*_edgetpu.tflite``)."""
    import numpy as np

    from edgelstm.errors import ModelFormatError

    path = Path(path)
    data = path.read_bytes()
    schema = _schema()
    if len(data) < 8 or not schema.Model.ModelBufferHasIdentifier(data, 0):
        raise ModelFormatError(f"{path}: not a TFLite file (no TFL3 identifier)")
    try:
        model = schema.ModelT.InitFromPackedBuf(data, 0)
        graph = model.subgraphs[0]
    except Exception as exc:  # a damaged flatbuffer raises anything from struct.error to IndexError
        raise ModelFormatError(f"{path}: damaged TFLite file ({type(exc).__name__}: {exc})") from None
    op_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    type_names = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    tensors = []
    for index, t in enumerate(graph.tensors or []):
        dtype = type_names.get(t.type, str(t.type))
        shape = [int(v) for v in (t.shape if t.shape is not None else [])]
        signature = [int(v) for v in t.shapeSignature] if t.shapeSignature is not None and len(t.shapeSignature) else shape
        buffer = model.buffers[t.buffer] if model.buffers and 0 < t.buffer < len(model.buffers) else None
        raw = buffer.data if buffer is not None and buffer.data is not None and len(buffer.data) else None
        constant = raw is not None or (buffer is not None and buffer.offset > 1)
        entry = {
            "index": index,
            "name": (t.name or b"").decode("utf-8", "replace"),
            "dtype": dtype,
            "shape": shape,
            "shape_signature": signature,
            "is_constant": bool(constant),
            "bytes": int(len(raw)) if raw is not None else (int(buffer.size) if constant else 0),
        }
        q = t.quantization
        if q is not None and q.scale is not None and len(q.scale):
            entry["quantization"] = {"scale": [float(v) for v in q.scale][:4], "zero_point": [int(v) for v in q.zeroPoint][:4],
                                     "per_channel": len(q.scale) > 1}
        if raw is not None:
            raw = np.asarray(raw, np.uint8)
            entry["all_zero"] = not raw.any()
            if dtype in ("int32", "int64", "int8", "uint8", "int16") and raw.size <= 64:
                entry["value"] = np.frombuffer(raw.tobytes(), dtype).tolist()
        tensors.append(entry)
    ops = []
    for index, op in enumerate(graph.operators or []):
        code = model.operatorCodes[op.opcodeIndex]
        name = op_names.get(max(int(code.builtinCode), int(code.deprecatedBuiltinCode)), f"BUILTIN_{code.builtinCode}")
        options = {}
        if op.builtinOptions is not None:
            options = {k: v for k, v in vars(op.builtinOptions).items() if isinstance(v, (bool, int, float))}
        ops.append({
            "index": index,
            "op": name,
            "custom_code": code.customCode.decode("utf-8", "replace") if code.customCode else None,
            "inputs": [int(i) for i in (op.inputs if op.inputs is not None else [])],
            "outputs": [int(i) for i in (op.outputs if op.outputs is not None else [])],
            "options": options,
        })
    signature = {"inputs": {}, "outputs": {}}
    for sig in model.signatureDefs or []:
        if sig.subgraphIndex == 0:
            for kind, maps in (("inputs", sig.inputs), ("outputs", sig.outputs)):
                signature[kind] = {m.name.decode(): int(m.tensorIndex) for m in (maps or [])}
            break
    return {
        "ops": ops,
        "tensors": tensors,
        "inputs": [int(i) for i in (graph.inputs if graph.inputs is not None else [])],
        "outputs": [int(i) for i in (graph.outputs if graph.outputs is not None else [])],
        "signature": signature,
        "subgraphs": len(model.subgraphs),
        "bytes": len(data),
    }


def check_file(path) -> dict:
    """:func:`check` of a ``.tflite`` file, op by op, with the compiler command."""
    model = read_tflite(path)
    result = check(model["ops"], model["tensors"], model["bytes"], inputs=model["inputs"], outputs=model["outputs"],
                   subgraphs=model["subgraphs"])
    result.update(commands(path, compiled=result["compiled"]))
    return result


# ---------------------------------------------------------------------------------------
# The check


def check(ops: list, tensors: list, model_bytes: int, inputs=None, outputs=None, subgraphs: int = 1) -> dict:
    """Check a model's ops and tensors against the Edge TPU's rules.

    ``ops``: op dicts from :func:`read_tflite` (execution order, with tensor indices), or
    plain op names (then only op types and tensors are checked, without the mapping order).
    ``tensors``: dicts with ``name``, ``dtype``, ``shape``, ``is_constant`` (and from
    :func:`read_tflite` also ``index``, ``shape_signature``, ``bytes``).

    Returns ``compatible`` (no errors and every op on the Edge TPU), ``verdict``, ``errors``,
    ``warnings``, ``problems`` (errors + warnings), ``notes``, ``offending_ops`` (op types that
    cannot map themselves), ``tensor_findings``, and with op dicts also ``ops`` (per op:
    ``index``, ``op``, ``mapped``, ``reasons``), ``mapped_ops``, ``cpu_ops`` and
    ``first_unmapped`` (the op where the compiler stops mapping), ``parameter_bytes``.
    """
    detailed = bool(ops) and isinstance(ops[0], dict)
    if not detailed:
        return _check_types(list(ops), tensors, model_bytes)
    graph_inputs, graph_outputs = set(inputs or []), set(outputs or [])
    used = {i for op in ops for i in op["inputs"] + op["outputs"]} | graph_inputs | graph_outputs
    tensors = [t for t in tensors if t["index"] in used]  # a converter may leave dangling tensors behind
    by_index = {t["index"]: t for t in tensors}
    consumers = {}
    for op in ops:
        for i in op["inputs"]:
            consumers.setdefault(i, []).append(op)
    io_ops = {op["index"] for op in ops if _is_io_conversion(op, by_index, graph_inputs, graph_outputs, consumers)}
    errors, warnings, notes = [], [], []
    findings = _tensor_findings(tensors, ops, io_ops)
    errors += [f["problem"] for f in findings if f["severity"] == "error"]
    compiled = any(op["op"] == "CUSTOM" and op.get("custom_code") == COMPILED_OP for op in ops)

    rows, first = [], None
    for op in ops:
        row = {"index": op["index"], "op": op["op"] if op["op"] != "CUSTOM" else f"CUSTOM({op.get('custom_code')})"}
        if op["index"] in io_ops:
            row.update(mapped=False, role="io", reasons=[
                ("quantizes a float graph input" if op["op"] == "QUANTIZE" else "dequantizes into a float graph output")
                + " on the CPU (float I/O is allowed; the conversion stays on the CPU)"])
        else:
            reasons = _op_reasons(op, by_index)
            if first is None and not reasons:
                row.update(mapped=True, reasons=["compiled into the Edge TPU custom op"] if row["op"] == f"CUSTOM({COMPILED_OP})" else [])
            elif first is None:
                first = row
                row.update(mapped=False, reasons=reasons)
            else:
                row.update(mapped=False, reasons=reasons or [
                    f"after op #{first['index']} {first['op']}: the compiler maps one Edge TPU subgraph and runs "
                    "everything after the first op it cannot map on the CPU"])
        if op["op"] in LIMITATIONS:
            row["limitation"] = LIMITATIONS[op["op"]]
        rows.append(row)
    mapped = [r for r in rows if r["mapped"]]
    cpu = [r for r in rows if not r["mapped"]]
    offending = sorted({r["op"] for r in rows if not r["mapped"] and r.get("role") != "io"
                        and not r["reasons"][0].startswith("after op #")})
    compute = [r for r in rows if r.get("role") != "io"]
    if compute and not mapped:
        errors.append(
            f"no op would run on the Edge TPU: mapping stops at the first op, #{first['index']} {first['op']} "
            f"({'; '.join(first['reasons'])})"
        )
    elif first is not None:
        after = [r for r in compute if not r["mapped"]]
        warnings.append(
            f"mapping stops at op #{first['index']} {first['op']} ({'; '.join(first['reasons'])}): "
            f"{len(after)} of {len(compute)} ops (#{first['index']} to #{after[-1]['index']}) would run on the CPU, "
            "with activations moved between the Edge TPU and the CPU at every step"
        )
    if subgraphs > 1:
        warnings.append(f"the model has {subgraphs} TFLite subgraphs (control flow); the compiler maps only the main one")
    parameter_bytes = sum(int(t.get("bytes", 0)) for t in tensors if t.get("is_constant"))
    if parameter_bytes > PARAMETER_CACHE_BYTES:
        warnings.append(
            f"parameters take {parameter_bytes / 2**20:.2f} MiB, more than the ~{PARAMETER_CACHE_BYTES / 2**20:.1f} MiB the "
            "Edge TPU caches on chip: the rest is streamed from the host at every inference (slower)"
        )
    io_rows = [r for r in rows if r.get("role") == "io"]
    if io_rows:
        notes.append(f"{len(io_rows)} float I/O conversion op(s) run on the CPU: "
                     + ", ".join(f"#{r['index']} {r['op']}" for r in io_rows)
                     + "; a model with int8 inputs and outputs avoids them")
    limited = sorted({r["op"] for r in mapped if r["op"] in ("RESHAPE", "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR")})
    for name in limited:
        notes.append(f"{name}: {LIMITATIONS[name]} (not checkable without the compiler)")
    batch = _batch(tensors, graph_inputs)
    if batch and batch > 1:
        notes.append(f"the inputs have batch {batch}: an Edge TPU model is compiled for fixed shapes and "
                     "FULLY_CONNECTED needs a one-dimensional output, so convert with batch 1 (one stream per Invoke)")
    if compiled:
        notes.append("this file is already compiled for the Edge TPU (it contains edgetpu-custom-op): it runs only with "
                     "the libedgetpu delegate, never on a plain CPU interpreter")
    if any(f["kind"] == "dynamic shape" for f in findings):
        verdict = "will not run on the Edge TPU: edgetpu_compiler refuses models with dynamic-size tensors"
    elif errors:
        verdict = "will not run on the Edge TPU"
    elif compiled:
        verdict = "already compiled for the Edge TPU (edgetpu-custom-op" + (f"; {len(cpu)} op(s) on the CPU)" if cpu else ")")
    elif not cpu:
        verdict = f"all {len(rows)} ops map to the Edge TPU"
    else:
        verdict = (f"partly on the Edge TPU: {len(mapped)} of {len(rows)} ops map, {len(cpu)} run on the CPU"
                   + (f" (mapping stops at op #{first['index']} {first['op']})" if first else " (float I/O conversions)"))
    return {
        "compatible": not errors and not cpu,
        "verdict": verdict,
        "errors": errors,
        "warnings": warnings,
        "problems": errors + warnings,
        "notes": notes,
        "offending_ops": offending,
        "tensor_findings": findings,
        "ops": rows,
        "mapped_ops": len(mapped),
        "cpu_ops": [{"index": r["index"], "op": r["op"], "reason": r["reasons"][0]} for r in cpu],
        "first_unmapped": ({"index": first["index"], "op": first["op"], "reasons": first["reasons"]} if first else None),
        "parameter_bytes": parameter_bytes,
        "parameter_cache_bytes": PARAMETER_CACHE_BYTES,
        "compiled": compiled,
    }


def _check_types(ops: list, tensors: list, model_bytes: int) -> dict:
    """The check from op names alone (no order, no per-op tensors): what a caller without
    the file gets (the converter's manifest entry). ``edgelstm inspect`` checks op by op."""
    offending = sorted({op for op in ops if op not in SUPPORTED_OPS})
    findings = _tensor_findings(tensors, [], set())
    errors = [f["problem"] for f in findings if f["severity"] == "error"]
    warnings = [f"op {op} is not supported by the Edge TPU: it and every op after it run on the CPU" for op in offending]
    parameter_bytes = sum(int(t.get("bytes", 0)) for t in tensors if t.get("is_constant")) or int(model_bytes)
    if parameter_bytes > PARAMETER_CACHE_BYTES:
        warnings.append(f"parameters take {parameter_bytes / 2**20:.2f} MiB, more than the ~{PARAMETER_CACHE_BYTES / 2**20:.1f} MiB "
                        "the Edge TPU caches on chip: the rest is streamed from the host at every inference")
    compatible = not errors and not offending
    return {
        "compatible": compatible,
        "verdict": "all op types map to the Edge TPU" if compatible else ("will not run on the Edge TPU" if errors else "partly on the Edge TPU"),
        "errors": errors,
        "warnings": warnings,
        "problems": errors + warnings,
        "notes": ["checked op types only; `edgelstm inspect FILE --target coral-usb` checks op by op"],
        "offending_ops": offending,
        "tensor_findings": findings,
    }


def _is_io_conversion(op, tensors, graph_inputs, graph_outputs, consumers) -> bool:
    """A QUANTIZE of a float graph input, or a DEQUANTIZE into a float graph output: run on
    the CPU at the edge of the graph without splitting the Edge TPU subgraph."""
    if op["op"] == "QUANTIZE" and op["inputs"]:
        source = tensors.get(op["inputs"][0], {})
        return op["inputs"][0] in graph_inputs and source.get("dtype") in FLOAT_TYPES
    if op["op"] == "DEQUANTIZE" and op["outputs"]:
        out = op["outputs"][0]
        return out in graph_outputs and not consumers.get(out) and tensors.get(out, {}).get("dtype") in FLOAT_TYPES
    return False


def _tensor_findings(tensors, ops, io_ops) -> list:
    """Per-tensor findings: dynamic sizes, data types the Edge TPU does not compute with,
    ranks it does not map. Float tensors at a float graph edge (converted on the CPU by an
    I/O QUANTIZE/DEQUANTIZE) are notes, not errors."""
    io_tensors = set()
    for op in ops:
        if op["index"] in io_ops:
            io_tensors.update(op["inputs"][:1] if op["op"] == "QUANTIZE" else op["outputs"][:1])
    findings = []

    def add(tensor, kind, severity, problem):
        findings.append({"tensor": tensor["name"], "index": tensor.get("index"), "kind": kind,
                         "severity": severity, "problem": problem})

    for t in tensors:
        name, dtype = t["name"], t["dtype"]
        signature = t.get("shape_signature", t["shape"])
        if any(dim is None or int(dim) < 0 for dim in list(signature) + list(t["shape"])):
            add(t, "dynamic shape", "error",
                f"tensor '{name}' has a dynamic shape {list(signature)}: the Edge TPU compiler needs sizes that are "
                "constant at compile time (convert with a fixed batch, e.g. 1)")
        if dtype in EDGE_TYPES or (dtype == "int32" and t.get("is_constant")):
            pass
        elif t.get("index") in io_tensors:
            add(t, "float I/O", "note", f"tensor '{name}' is {dtype} at the graph's edge: converted on the CPU")
        elif dtype == "int32":
            add(t, "data type", "error", f"tensor '{name}' is an int32 activation; the Edge TPU computes in int8/uint8 "
                                         "(only constants such as biases may be int32)")
        elif t.get("is_constant"):
            add(t, "data type", "error", f"tensor '{name}' holds {dtype} parameters; the Edge TPU needs every parameter "
                                         "quantized to int8 at compile time (full-integer quantization)")
        else:
            add(t, "data type", "error", f"tensor '{name}' is {dtype}; the Edge TPU needs int8 tensors "
                                         "(full-integer quantization)")
        if not t.get("is_constant") and _bad_rank(t["shape"]):
            add(t, "rank", "warning", f"tensor '{name}' has shape {t['shape']}: the Edge TPU maps tensors of up to 3 "
                                      "dimensions (beyond, only the 3 innermost may be larger than 1)")
    return findings


def _bad_rank(shape) -> bool:
    return len(shape) > 3 and any(int(d) > 1 for d in list(shape)[:-3])


def _op_reasons(op, tensors) -> list:
    """Why this op cannot map to the Edge TPU by itself (empty: it can)."""
    name = op["op"]
    if name == "CUSTOM":
        if op.get("custom_code") == COMPILED_OP:
            return []
        return [f"custom op {op.get('custom_code')!r} is not an Edge TPU op"]
    reasons = []
    if name not in SUPPORTED_OPS:
        hint = HINTS.get(name)
        reasons.append(f"{name} is not in the Edge TPU's supported operations" + (f" ({hint})" if hint else ""))
    ins = [tensors[i] for i in op["inputs"] if i >= 0 and i in tensors]
    outs = [tensors[i] for i in op["outputs"] if i in tensors]
    for t in ins + outs:
        if t["dtype"] not in EDGE_TYPES and not (t["dtype"] == "int32" and t.get("is_constant")):
            reasons.append(f"works on {t['dtype']} tensor '{t['name']}' (unsupported data type)")
            break
    for t in ins + outs:
        if any(int(d) < 0 for d in t.get("shape_signature", t["shape"])):
            reasons.append(f"tensor '{t['name']}' has a dynamic size")
            break
    for t in ins + outs:
        if not t.get("is_constant") and _bad_rank(t["shape"]):
            reasons.append(f"tensor '{t['name']}' {t['shape']} has an unsupported rank (up to 3 innermost dimensions map)")
            break
    if name in SUPPORTED_OPS:
        reasons += _limitation_reasons(op, ins, outs)
    return reasons


def _limitation_reasons(op, ins, outs) -> list:
    """The per-op known limitations of Coral's table that the file shows."""
    name, options = op["op"], op.get("options", {})
    reasons = []
    if name in _NO_FUSED_ACTIVATION and options.get("fusedActivationFunction", 0) != 0:
        reasons.append(f"{name} with a fused activation function")
    if name == "FULLY_CONNECTED":
        if options.get("weightsFormat", 0) != 0:
            reasons.append("FULLY_CONNECTED weights not in the default format")
        if len(ins) > 1 and not ins[1].get("is_constant"):
            reasons.append(f"FULLY_CONNECTED weights '{ins[1]['name']}' are not constant at compile time")
        if outs and sum(1 for d in outs[0]["shape"] if int(d) > 1) > 1:
            reasons.append(f"FULLY_CONNECTED output '{outs[0]['name']}' {outs[0]['shape']} is not one-dimensional (batch must be 1)")
    if name in ("CONV_2D", "DEPTHWISE_CONV_2D") and options.get("dilationWFactor", 1) != options.get("dilationHFactor", 1):
        reasons.append(f"{name} with different dilation in x and y")
    if name == "CONCATENATION":
        constants = [t for t in ins if t.get("is_constant")]
        if constants and (len(ins) != 2 or not all(t.get("all_zero") for t in constants)):
            reasons.append("CONCATENATION with a constant input that is not an all-zero second input (zero padding)")
    if name == "SOFTMAX" and ins:
        shape = ins[0]["shape"]
        size = 1
        for d in shape:
            size *= int(d)
        if sum(1 for d in shape if int(d) > 1) > 1 or size > SOFTMAX_MAX_ELEMENTS:
            reasons.append(f"SOFTMAX input {shape}: only a 1-D input of at most {SOFTMAX_MAX_ELEMENTS} elements maps")
    if name in _BATCH_AXIS_OPS and len(ins) > 1:
        axes = ins[_BATCH_AXIS_OPS[name]].get("value")
        rank = len(ins[0]["shape"])
        if axes is not None and rank > 1 and any(int(a) % rank == 0 for a in axes):
            reasons.append(f"{name} over the batch dimension (axes {axes})")
        if name == "MEAN" and axes is not None and rank == 4 and any(int(a) % 4 == 3 for a in axes) and int(ins[0]["shape"][3]) % 4:
            reasons.append(f"MEAN over a z-dimension of {ins[0]['shape'][3]}, not a multiple of 4")
    if name == "PAD" and len(ins) > 1 and ins[1].get("value") and any(int(v) for v in ins[1]["value"][:2]):
        reasons.append("PAD in the batch dimension")
    if name == "PACK" and options.get("axis", 0) == 0:
        reasons.append("PACK in the batch dimension (axis 0)")
    if name == "SQUEEZE" and ins and outs:
        before, after = list(ins[0]["shape"]), list(outs[0]["shape"])
        dropped = len(before) - len(after)
        if dropped < 0 or before[dropped:] != after or any(int(d) != 1 for d in before[:dropped]):
            reasons.append(f"SQUEEZE {before} -> {after} removes dimensions that are not leading 1s (a relayout)")
    if name == "STRIDED_SLICE":
        strides = ins[3].get("value") if len(ins) > 3 else None
        if strides is not None and any(int(s) != 1 for s in strides):
            reasons.append(f"STRIDED_SLICE with strides {strides} (only 1 maps)")
        if options.get("ellipsisMask", 0) or options.get("newAxisMask", 0):
            reasons.append("STRIDED_SLICE with an ellipsis or new-axis mask")
    if name == "PRELU" and len(ins) > 1 and sum(1 for d in ins[1]["shape"][:-1] if int(d) > 1):
        reasons.append(f"PRELU alpha {ins[1]['shape']} is not 1-dimensional")
    return reasons


def _batch(tensors, graph_inputs) -> int | None:
    sizes = [int(t["shape"][0]) for t in tensors if t.get("index") in graph_inputs and len(t["shape"]) >= 2]
    return max(sizes) if sizes else None


# ---------------------------------------------------------------------------------------
# The compiler


def compiled_name(model_path) -> str:
    """The file ``edgetpu_compiler`` writes for a model: ``step_int8.tflite`` -> ``step_int8_edgetpu.tflite``."""
    return Path(model_path).stem + "_edgetpu.tflite"


def compiler_command(model_path) -> str:
    """The command that compiles the model for the Edge TPU where ``edgetpu_compiler`` is
    installed: the compiled model and its log go next to the model."""
    return f"edgetpu_compiler --show_operations --out_dir {shlex.quote(_parent(model_path))} {shlex.quote(str(model_path))}"


def commands(model_path, bundle=None, compiled: bool = False) -> dict:
    """What to run, in order: compile (unless the file already is compiled), then register the
    compiled model in the bundle with its hash (``edgelstm bundle-add``)."""
    out_dir = Path(bundle) if bundle is not None else Path(_parent(model_path))
    if compiled:
        return {"compiler_command": None, "compiled_file": None, "compiler_log": None, "bundle_add_command": None}
    compiled_file = out_dir / compiled_name(model_path)
    return {
        "compiler_command": compiler_command(model_path),
        "compiled_file": str(compiled_file),
        "compiler_log": str(compiled_file.with_suffix(".log")),
        "bundle_add_command": (f"edgelstm bundle-add {shlex.quote(str(bundle))} {shlex.quote(str(compiled_file))}"
                               if bundle is not None else None),
    }


def _parent(path) -> str:
    return str(Path(path).parent) or "."
