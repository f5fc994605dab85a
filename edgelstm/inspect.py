"""``edgelstm inspect``: what is in a model file, a step-model file or a bundle.

Layers, shapes, parameters, ops, quantization and Edge TPU compatibility, as a dict
(for ``--json``) and as readable text.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import edgetpu
from .bundle import Bundle
from .errors import ModelFormatError


def inspect_path(path, target: str | None = None) -> dict:
    path = Path(path)
    if path.is_dir():
        result = _inspect_bundle(path)
    elif path.suffix == ".tflite":
        result = _inspect_tflite(path)
    elif path.suffix == ".onnx":
        result = _inspect_onnx(path)
    else:
        from .importers import load_network, sniff_format

        network = load_network(path)
        result = {"kind": "model", "path": str(path), "format": sniff_format(path), "network": network.describe(), "notes": network.notes}
    if target:
        from .targets import load_target

        profile = load_target(target)
        result["target"] = profile.name
        if profile.edgetpu_check:
            result["edgetpu"] = _edgetpu_for(path, result)
    return result


def _edgetpu_for(path: Path, result: dict) -> dict:
    if result["kind"] == "bundle":
        entries = [m for m in result["models"] if m["format"] == "tflite" and m["quant"] == "int8"]
        if not entries:
            return {"compatible": False, "problems": ["bundle has no int8 TFLite model"], "offending_ops": [], "notes": []}
        return _inspect_tflite(path / entries[0]["file"])["edgetpu"]
    if result["kind"] == "tflite":
        return result["edgetpu"]
    return {"compatible": False, "problems": [f"{result['kind']} files do not run on the Edge TPU; convert to int8 TFLite"], "offending_ops": [], "notes": []}


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
            {k: v for k, v in entry.items() if k in ("file", "format", "quant", "bytes", "ops", "tensors", "edgetpu")}
            for entry in m["models"]
        ],
        "default_model": m.get("default_model"),
        "target": m.get("target", {}).get("name"),
    }


def tensor_summary(stepper) -> list:
    """Every tensor of a loaded TFLite model: name, dtype, shape, and whether it is a constant
    (an op input that no op produces and that is not a model input: weights and biases)."""
    ops = stepper.interpreter._get_ops_details()
    produced = {int(i) for op in ops for i in op["outputs"]}
    graph_inputs = {int(d["index"]) for d in stepper.inputs.values()}
    constants = {int(i) for op in ops for i in op["inputs"] if int(i) >= 0} - produced - graph_inputs
    return [
        {
            "name": d["name"],
            "dtype": np.dtype(d["dtype"]).name,
            "shape": [int(v) for v in d["shape"]],
            "is_constant": int(d["index"]) in constants,
        }
        for d in stepper.interpreter.get_tensor_details()
    ]


def _inspect_tflite(path: Path) -> dict:
    from .runtime.steppers import TFLiteStepper

    try:
        stepper = TFLiteStepper(path)
    except (ValueError, RuntimeError) as exc:
        raise ModelFormatError(f"{path}: not a loadable TFLite step model ({str(exc).splitlines()[0]})") from None
    tensors = tensor_summary(stepper)

    def describe(details):
        return {
            name: {"dtype": np.dtype(d["dtype"]).name, "shape": [int(v) for v in d["shape"]], "quantization": list(d["quantization"])}
            for name, d in details.items()
        }

    check = edgetpu.check(stepper.ops(), tensors, path.stat().st_size)
    check["compiler_command"] = edgetpu.compiler_command(path)
    return {
        "kind": "tflite",
        "path": str(path),
        "bytes": path.stat().st_size,
        "ops": stepper.ops(),
        "inputs": describe(stepper.inputs),
        "outputs": describe(stepper.outputs),
        "edgetpu": check,
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


def format_inspection(result: dict) -> str:
    lines = [f"{result['kind']}: {result['path']}"]
    network = result.get("network")
    if network:
        lines.append(
            f"  input: {network['n_features']} features per step; output: {network['output_size']} "
            f"({network['output_mode']}); {network['parameters']} parameters"
        )
        for layer in network["layers"]:
            extra = f" {layer['activation']}"
            if layer["kind"] == "lstm":
                extra += f"/{layer['recurrent_activation']}" + (" return_sequences" if layer["return_sequences"] else "")
            lines.append(f"  {layer['kind']:<6}{layer['name']:<24}{layer['input_size']:>5} -> {layer['units']:<5}{layer['parameters']:>8} params{extra}")
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
        e = result["edgetpu"]
        lines.append(f"  Edge TPU ({result.get('target', 'coral')}): {'compatible' if e['compatible'] else 'NOT compatible'}")
        for problem in e["problems"]:
            lines.append(f"    - {problem}")
        for note in e.get("notes", []):
            lines.append(f"    note: {note}")
        if e.get("compiler_command"):
            lines.append(f"    compile where edgetpu_compiler is installed: {e['compiler_command']}")
    return "\n".join(lines)
