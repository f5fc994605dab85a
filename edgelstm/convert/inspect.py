"""``edgelstm inspect``: what is in a model file, a step-model file or a bundle.

Layers, shapes, parameters, ops, quantization and Edge TPU compatibility, as a dict
(for ``--json``) and as readable text.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import edgetpu
from edgelstm.runtime.bundle import Bundle
from edgelstm.errors import ModelFormatError


def inspect_path(path, target: str | None = None) -> dict:
    path = Path(path)
    if path.is_dir():
        result = _inspect_bundle(path)
    elif path.suffix == ".tflite":
        result = _inspect_tflite(path)
    elif path.suffix == ".onnx" and not _has_recurrent_ops(path):  # an exported step or window model
        result = _inspect_onnx(path)
    else:  # a source model, ONNX from torch included: what the converter would make of it
        from .importers import load_network, sniff_format

        network = load_network(path)
        result = {"kind": "model", "path": str(path), "format": sniff_format(path), "network": network.describe(), "notes": network.notes}
    if target:
        from edgelstm.runtime.targets import load_target

        profile = load_target(target)
        result["target"] = profile.name
        if profile.edgetpu_check:
            result["edgetpu"] = _edgetpu_for(path, result)
    return result


def _has_recurrent_ops(path: Path) -> bool:
    """Whether an ONNX file holds LSTM or GRU ops (a model to convert, e.g. a torch export) rather
    than an edgelstm export, whose recurrence is written out in MatMul, Sigmoid, Tanh, ..."""
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception:  # unreadable: the model importer names the problem
        return True
    return any(node.op_type in ("LSTM", "GRU") for node in graph.node)


def _edgetpu_for(path: Path, result: dict) -> dict:
    """The Edge TPU check of a file, or of a bundle's full-integer int8 TFLite model (int8
    inputs and outputs: what edgetpu_compiler takes), with the commands to compile it and
    to register the compiled model in the bundle."""
    if result["kind"] == "bundle":
        entries = [m for m in result["models"] if m["format"] == "tflite" and m["quant"] == "int8"]
        entries.sort(key=lambda m: {"quantized": 0, "stream": 1}.get(m.get("io", "quantized"), 2))
        if not entries:
            have = ", ".join(f"{m['format']} {m['quant']}" for m in result["models"])
            message = f"bundle has no int8 TFLite model (it has {have}); convert with --quant int8 (e.g. --target coral-usb)"
            return {"compatible": False, "verdict": "will not run on the Edge TPU", "errors": [message], "warnings": [],
                    "problems": [message], "offending_ops": [], "notes": [], "ops": [], "cpu_ops": [], "first_unmapped": None}
        entry = entries[0]
        check = edgetpu.check_file(path / entry["file"])
        check.update(edgetpu.commands(path / entry["file"], bundle=path, compiled=check["compiled"]))
        check["checked_file"] = entry["file"]
        check["checked_io"] = entry.get("io", "quantized")
        if check["checked_io"] != "quantized":
            check["notes"].insert(0, f"{entry['file']} has float x and y; the bundle has no int8-in/int8-out model, which "
                                     "is what the Edge TPU should get (convert again with this edgelstm)")
        compiled = edgetpu.compiled_name(entry["file"])
        listed = {f["file"] for f in Bundle.open(path, verify=False).manifest.get("files", [])}
        check["compiled_model"] = {"file": compiled, "present": (path / compiled).exists(), "registered": compiled in listed}
        return check
    if result["kind"] == "tflite":
        check = edgetpu.check_file(path)
        bundle = path.parent if (path.parent / "manifest.json").exists() else None
        check.update(edgetpu.commands(path, bundle=bundle, compiled=check["compiled"]))
        check["checked_file"] = path.name
        return check
    message = f"{result['kind']} files do not run on the Edge TPU; convert to int8 TFLite"
    return {"compatible": False, "verdict": "will not run on the Edge TPU", "errors": [message], "warnings": [],
            "problems": [message], "offending_ops": [], "notes": [], "ops": [], "cpu_ops": [], "first_unmapped": None}


def _inspect_bundle(path: Path) -> dict:
    bundle = Bundle.open(path)
    m = bundle.manifest
    return {
        "kind": "bundle",
        "path": str(path),
        "bundle_id": m.get("bundle_id"),
        "source": m.get("source"),
        "network": m.get("network"),
        "input": {"features": m["input"].get("features"), "normalization": m["input"]["normalization"]["kind"]},
        "state": m["state"],
        "models": [
            _model_summary(path, entry)
            for entry in m["models"]
        ],
        "default_model": m.get("default_model"),
        "target": m.get("target", {}).get("name"),
    }


def _model_summary(path: Path, entry: dict) -> dict:
    summary = {k: v for k, v in entry.items() if k in ("file", "format", "quant", "io", "bytes", "ops", "tensors", "edgetpu")}
    if "edgetpu" in summary:  # the converter wrote it from its staging directory: name the file where it is now
        summary["edgetpu"] = dict(summary["edgetpu"], compiler_command=edgetpu.compiler_command(path / entry["file"]))
    return summary


def tensor_summary(stepper) -> list:
    """Every tensor of a loaded TFLite model: name, dtype, shape (and its signature: -1 for a
    dynamic size), and whether it is a constant (an op input that no op produces and that
    is not a model input: weights and biases)."""
    ops = stepper.interpreter._get_ops_details()
    produced = {int(i) for op in ops for i in op["outputs"]}
    graph_inputs = {int(d["index"]) for d in stepper.inputs.values()}
    constants = {int(i) for op in ops for i in op["inputs"] if int(i) >= 0} - produced - graph_inputs
    return [
        {
            "name": d["name"],
            "dtype": np.dtype(d["dtype"]).name,
            "shape": [int(v) for v in d["shape"]],
            "shape_signature": [int(v) for v in d.get("shape_signature", d["shape"])],
            "is_constant": int(d["index"]) in constants,
        }
        for d in stepper.interpreter.get_tensor_details()
    ]


def _inspect_tflite(path: Path) -> dict:
    """Any TFLite file, read from its flatbuffer (no interpreter: a compiled *_edgetpu.tflite
    with its custom op is described too). Inputs and outputs by signature name."""
    model = edgetpu.read_tflite(path)
    tensors = model["tensors"]

    def describe(kind):
        named = model["signature"][kind] or {tensors[i]["name"]: i for i in model[kind]}
        out = {}
        for name, index in named.items():
            t = tensors[index]
            q = t.get("quantization")
            out[name] = {"dtype": t["dtype"], "shape": t["shape"],
                         "quantization": [q["scale"][0], q["zero_point"][0]] if q else [0.0, 0]}
            if t["shape_signature"] != t["shape"]:
                out[name]["shape_signature"] = t["shape_signature"]
        return out

    names = []
    for op in model["ops"]:
        name = op["op"] if op["op"] != "CUSTOM" else f"CUSTOM({op['custom_code']})"
        if name not in names:
            names.append(name)
    return {
        "kind": "tflite",
        "path": str(path),
        "bytes": model["bytes"],
        "ops": names,
        "op_count": len(model["ops"]),
        "inputs": describe("inputs"),
        "outputs": describe("outputs"),
    }


def _inspect_onnx(path: Path) -> dict:
    try:
        import onnx
    except ImportError:
        raise ModelFormatError("inspecting ONNX files needs the onnx package (pip install 'edgelstm[convert]')") from None
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError and others
        raise ModelFormatError(f"{path}: not a readable ONNX file ({exc})") from None
    ops = []
    for node in model.graph.node:
        if node.op_type not in ops:
            ops.append(node.op_type)
    shape = lambda vi: [d.dim_value or d.dim_param for d in vi.type.tensor_type.shape.dim]  # noqa: E731
    return {
        "kind": "onnx",
        "path": str(path),
        "bytes": path.stat().st_size,
        "opset": [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")],
        "ops": ops,
        "inputs": {i.name: {"shape": shape(i)} for i in model.graph.input},
        "outputs": {o.name: {"shape": shape(o)} for o in model.graph.output},
    }


def _layer_details(layer: dict) -> str:
    """The options of a described layer worth a glance: activations, direction, sizes."""
    kind = layer["kind"]
    if kind == "bidirectional":
        return f" {layer['merge_mode']}: {layer['forward']['kind']} both ways" + (" return_sequences" if layer["return_sequences"] else "")
    if kind in ("lstm", "gru"):
        text = f" {layer['activation']}/{layer['recurrent_activation']}"
        text += " return_sequences" if layer["return_sequences"] else ""
        text += " go_backwards" if layer.get("go_backwards") else ""
        return text + (" reset_after" if layer.get("reset_after") else "")
    if kind == "conv1d":
        return f" kernel {layer['kernel_size']} stride {layer['strides']} {layer['padding']} {layer['activation']}"
    if kind == "repeat_vector":
        return f" x{layer['times']}"
    if kind == "pooling1d":
        return f" {layer['mode']} {layer['pool_size']}/{layer['strides']}"
    if kind == "merge":
        return f" {layer['mode']}"
    return f" {layer['activation']}" if "activation" in layer else ""


def format_inspection(result: dict) -> str:
    lines = [f"{result['kind']}: {result['path']}"]
    network = result.get("network")
    if network:
        mode = network.get("mode", "step")
        lines.append(
            f"  {mode} model" + (f" over windows of {network['window']} steps" if mode == "window" else "")
            + (" (autoencoder: the anomaly score is its reconstruction error)" if network.get("autoencoder") else "")
            + f"; input: {network['n_features']} features per step; output: {network['output_size']} "
            f"({network['output_mode']}); {network['parameters']} parameters"
        )
        for layer in network["layers"]:  # a graph: each layer says what it reads
            reads = f" <- {', '.join('input' if n == '<input>' else n for n in layer['inputs'])}" if "inputs" in layer else ""
            lines.append(f"  {layer['kind']:<14}{layer['name']:<24}{layer['input_size']:>5} -> {layer['units']:<5}"
                         f"{layer['parameters']:>8} params{_layer_details(layer)}{reads}")
        if mode == "step":
            lines.append("  state: " + ", ".join(f"{s['name']}({s['size']})" for s in network["state"]))
    if result["kind"] == "bundle":
        lines.append(f"  features: {', '.join(result['input']['features'])}; normalisation {result['input']['normalization']}")
        for m in result["models"]:
            q = m["tensors"].get("x", {})
            quant = f" x scale {q['scale']:.4g} zp {q['zero_point']}" if q.get("scale") else ""
            lines.append(f"  {m['file']:<24}{m['format']:<7}{m['quant']:<9}{m['bytes']:>8} B  ops: {', '.join(m['ops'])}{quant}")
            if "edgetpu" in m:
                lines.append(f"  {'':<24}Edge TPU: {'compatible' if m['edgetpu']['compatible'] else 'not compatible'}")
    if result["kind"] in ("tflite", "onnx"):
        lines.append(f"  {result['bytes']} bytes; ops: {', '.join(result['ops'])}")
        for direction in ("inputs", "outputs"):
            for name, d in result[direction].items():
                lines.append(f"  {direction[:-1]:<7}{name:<12}{d.get('dtype', ''):<8}{d['shape']}  {d.get('quantization', '')}")
    if "edgetpu" in result:
        lines += format_edgetpu(result["edgetpu"], result.get("target") or "coral")
    return "\n".join(lines)


def format_edgetpu(e: dict, target: str) -> list:
    """The Edge TPU section of ``inspect --target coral-*``: verdict, every op (Edge TPU or
    CPU, and why), tensor findings, errors, warnings, notes, and the commands to run."""
    checked = f" [{e['checked_file']}" + (f", io {e['checked_io']}" if e.get("checked_io") else "") + "]" if e.get("checked_file") else ""
    lines = [f"  Edge TPU ({target}): {'compatible' if e['compatible'] else 'NOT compatible'}: {e.get('verdict', '')}{checked}"]
    ops = e.get("ops") or []
    if ops:
        lines.append(f"    {'op':>5}  {'type':<28}{'runs on':<10}why")
        for row in ops:
            where = "Edge TPU" if row["mapped"] else "CPU"
            lines.append(f"    {'#' + str(row['index']):>5}  {row['op']:<28}{where:<10}{'; '.join(row['reasons'])}".rstrip())
        lines.append(f"    {e['mapped_ops']} of {len(ops)} ops on the Edge TPU, {len(e['cpu_ops'])} on the CPU"
                     + (f"; mapping stops at op #{e['first_unmapped']['index']} {e['first_unmapped']['op']}" if e.get("first_unmapped") else ""))
        limits = {row["op"]: row["limitation"] for row in ops if row.get("limitation")}
        for name, limit in limits.items():
            lines.append(f"    {name} limitation (Coral's table): {limit}")
    findings = [f for f in e.get("tensor_findings", []) if f["severity"] != "note"]
    if findings:
        lines.append("    tensors:")
        lines += [f"      {f['severity']}: {f['problem']}" for f in findings]
    lines += [f"    error: {m}" for m in e.get("errors", []) if not any(m == f["problem"] for f in findings)]
    lines += [f"    warning: {m}" for m in e.get("warnings", [])]
    lines += [f"    note: {m}" for m in e.get("notes", [])]
    if "parameter_bytes" in e:
        lines.append(f"    parameters: {e['parameter_bytes']:,} B of the ~{e['parameter_cache_bytes'] / 2**20:.1f} MiB the Edge TPU caches on chip")
    if e.get("compiler_command"):
        lines.append("    compile it where edgetpu_compiler is installed (x86-64 Debian/Ubuntu, package edgetpu-compiler "
                     "from Coral's apt repository; not installable here):")
        lines.append(f"      {e['compiler_command']}")
        lines.append(f"    it writes {e['compiled_file']} and its log {e['compiler_log']} (the compiler's own op-by-op verdict)")
        if e.get("bundle_add_command"):
            lines.append("    then list the compiled model in the bundle with its hash, so load() verifies and prefers it "
                         "with the libedgetpu delegate (a Coral target, or delegate='libedgetpu.so.1'):")
            lines.append(f"      {e['bundle_add_command']}")
        else:
            lines.append("    then add it to the bundle the model came from: edgelstm bundle-add BUNDLE " + e["compiled_file"])
    compiled = e.get("compiled_model")
    if compiled and compiled["present"]:
        lines.append(f"    {compiled['file']} is in the bundle"
                     + (" and registered: load() uses it with the Edge TPU delegate" if compiled["registered"]
                        else " but NOT registered: load() refuses it until `edgelstm bundle-add` lists it"))
    return lines
