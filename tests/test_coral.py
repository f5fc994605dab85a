"""The Coral path: the Edge TPU check (`inspect --target coral-usb`) and the runtime's choice
of a compiled ``*_edgetpu.tflite``.

There is no Edge TPU, no libedgetpu and no edgetpu_compiler here (the compiler is distributed
only through Coral's apt repository). So the check runs on real converted bundles and on
TFLite models converted here that break the rules, and the runtime is tested up to the
delegate's absence with one fake: a stand-in for the compiler's output (the real model's
tensors with its ops replaced by one ``edgetpu-custom-op``), since a compiled model cannot
be made here.
"""

from __future__ import annotations

import ctypes.util
import json
import shutil

import pytest

import edgelstm
from edgelstm.convert import edgetpu
from edgelstm.runtime.bundle import Bundle
from edgelstm.errors import BackendUnavailableError, BundleError
from edgelstm.runtime.stream import _choose_model
from edgelstm.runtime.targets import load_target

from .conftest import run_cli

STEP_OPS = {"FULLY_CONNECTED", "ADD", "SUB", "LOGISTIC", "MUL", "TANH", "CONCATENATION"}  # one FC pair per gate: no SPLIT


# --- (a) a real converted bundle --------------------------------------------------------


def test_inspect_bundle_for_coral_maps_every_op_of_the_int8_io_model(cmapss_bundle):
    data = json.loads(run_cli("inspect", cmapss_bundle, "--target", "coral-usb", "--json").stdout)
    e = data["edgetpu"]
    assert (e["checked_file"], e["checked_io"]) == ("step_int8.tflite", "quantized")  # int8 in and out
    assert e["compatible"] and not e["errors"] and not e["warnings"] and not e["cpu_ops"]
    assert e["first_unmapped"] is None and e["verdict"].startswith("all ")
    assert len(e["ops"]) == e["mapped_ops"] > 50 and all(op["mapped"] for op in e["ops"])
    assert [op["index"] for op in e["ops"]] == list(range(len(e["ops"])))
    assert {op["op"] for op in e["ops"]} == STEP_OPS
    assert 0 < e["parameter_bytes"] < e["parameter_cache_bytes"]
    model = cmapss_bundle / "step_int8.tflite"
    assert e["compiler_command"] == f"edgetpu_compiler --show_operations --out_dir {cmapss_bundle} {model}"
    assert e["compiled_file"] == str(cmapss_bundle / "step_int8_edgetpu.tflite")
    assert e["bundle_add_command"] == f"edgelstm bundle-add {cmapss_bundle} {cmapss_bundle / 'step_int8_edgetpu.tflite'}"
    assert e["compiled_model"] == {"file": "step_int8_edgetpu.tflite", "present": False, "registered": False}

    text = run_cli("inspect", cmapss_bundle, "--target", "coral-usb", "--strict").stdout  # --strict: exit 0 here
    assert f"Edge TPU (coral-usb): compatible: all {len(e['ops'])} ops map to the Edge TPU" in text
    assert "#0  FULLY_CONNECTED             Edge TPU" in text
    assert f"{len(e['ops'])} of {len(e['ops'])} ops on the Edge TPU, 0 on the CPU" in text
    assert e["compiler_command"] in text and e["bundle_add_command"] in text


def test_the_stream_variant_is_a_cpu_model_and_the_check_says_so(cmapss_bundle):
    """The stream variant normalises raw readings with float ops at its front (the CPU runtime's
    model): the Edge TPU would map nothing after them, and the check names the first. The Edge
    TPU's model is the integer-I/O one (step_int8.tflite), checked above."""
    e = edgetpu.check_file(cmapss_bundle / "step_int8_stream.tflite")
    assert e["first_unmapped"]["op"] == "SUB" and e["mapped_ops"] == 0 and not e["compatible"]
    assert "will not run" in e["verdict"]
    floats = edgetpu.check_file(cmapss_bundle / "step_float32.tflite")
    assert floats["errors"] and floats["mapped_ops"] == 0 and "will not run" in floats["verdict"]


# --- (b) TFLite models that break the rules ---------------------------------------------


@pytest.fixture(scope="module")
def bad_models(tmp_path_factory):
    """Tiny models converted with TensorFlow here: an UNPACK in the middle of an int8 model,
    an int8 Embedding-style GATHER, a float model, an int8 model with a dynamic batch."""
    import numpy as np
    import tensorflow as tf

    out = tmp_path_factory.mktemp("coral_models")
    rng = np.random.default_rng(0)
    w1 = tf.constant(rng.normal(size=(8, 8)).astype("float32"))
    w2 = tf.constant(rng.normal(size=(4, 3)).astype("float32"))
    table = tf.constant(rng.normal(size=(50, 8)).astype("float32"))

    def unpack(x):
        h = tf.nn.relu(tf.matmul(x, w1))
        a, b = tf.unstack(tf.reshape(h, [1, 2, 4]), axis=1)  # UNPACK: not an Edge TPU op
        return tf.matmul(a * b, w2)

    def gather(ids):
        return tf.matmul(tf.gather(table, ids), w1)

    def dense(x):
        return tf.nn.tanh(tf.matmul(x, w1))

    def convert(name, fn, spec, int8, samples=None):
        function = tf.function(fn, input_signature=[spec]).get_concrete_function()
        converter = tf.lite.TFLiteConverter.from_concrete_functions([function], tf.Module())
        if int8:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda: ([s] for s in samples)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            if spec.dtype == tf.float32:
                converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
        (out / name).write_bytes(converter.convert())
        return out / name

    floats = [rng.normal(size=(1, 8)).astype("float32") for _ in range(32)]
    ids = [rng.integers(0, 50, size=(1,)).astype("int32") for _ in range(32)]
    return {
        "unpack": convert("unpack_int8.tflite", unpack, tf.TensorSpec([1, 8], tf.float32), True, floats),
        "gather": convert("gather_int8.tflite", gather, tf.TensorSpec([1], tf.int32), True, ids),
        "float": convert("float.tflite", dense, tf.TensorSpec([1, 8], tf.float32), False),
        "dynamic": convert("dynamic_int8.tflite", dense, tf.TensorSpec([None, 8], tf.float32), True, floats),
    }


def test_an_unsupported_op_stops_the_mapping_and_everything_after_runs_on_the_cpu(bad_models):
    e = edgetpu.check_file(bad_models["unpack"])
    names = [op["op"] for op in e["ops"]]
    k = names.index("UNPACK")
    assert e["first_unmapped"]["index"] == k and e["first_unmapped"]["op"] == "UNPACK"
    assert all(op["mapped"] for op in e["ops"][:k]) and k >= 1
    assert [c["index"] for c in e["cpu_ops"]] == list(range(k, len(names)))
    assert "not in the Edge TPU's supported operations" in e["ops"][k]["reasons"][0]
    assert all(op["reasons"][0].startswith(f"after op #{k} UNPACK") for op in e["ops"][k + 1:])
    assert e["offending_ops"] == ["UNPACK"] and not e["errors"] and not e["compatible"]
    assert f"mapping stops at op #{k} UNPACK" in e["warnings"][0] and "partly on the Edge TPU" in e["verdict"]

    result = run_cli("inspect", bad_models["unpack"], "--target", "coral-usb")  # exit 0: the check itself worked
    assert f"#{k}  UNPACK                      CPU" in result.stdout
    assert f"mapping stops at op #{k} UNPACK" in result.stdout and "edgetpu_compiler --show_operations" in result.stdout
    assert run_cli("inspect", bad_models["unpack"], "--target", "coral-usb", "--strict", check=False).returncode == 1


def test_an_embedding_gather_keeps_the_whole_model_off_the_edge_tpu(bad_models):
    e = edgetpu.check_file(bad_models["gather"])
    assert e["ops"][0]["op"] == "GATHER" and not e["ops"][0]["mapped"] and e["mapped_ops"] == 0
    assert "Embedding" in e["ops"][0]["reasons"][0]
    assert any("no op would run on the Edge TPU" in m and "#0 GATHER" in m for m in e["errors"])
    (finding,) = [f for f in e["tensor_findings"] if f["severity"] == "error"]
    assert finding["tensor"] == "serving_default_ids:0" and "int32" in finding["problem"]


def test_a_float_model_is_an_error_naming_its_tensors(bad_models):
    e = edgetpu.check_file(bad_models["float"])
    named = {f["tensor"] for f in e["tensor_findings"] if f["severity"] == "error"}
    assert "serving_default_x:0" in named and len(named) >= 3  # input, weights, activations
    assert any("float32 parameters" in f["problem"] for f in e["tensor_findings"])
    assert e["mapped_ops"] == 0 and "float32 tensor 'serving_default_x:0'" in e["ops"][0]["reasons"][0]
    assert not e["compatible"] and e["verdict"].startswith("will not run")


def test_a_dynamic_batch_dimension_is_refused(bad_models):
    e = edgetpu.check_file(bad_models["dynamic"])
    dynamic = [f for f in e["tensor_findings"] if f["kind"] == "dynamic shape"]
    assert dynamic and dynamic[0]["tensor"] == "serving_default_x:0" and "[-1, 8]" in dynamic[0]["problem"]
    assert all(f["severity"] == "error" for f in dynamic) and "dynamic-size tensors" in e["verdict"]
    data = json.loads(run_cli("inspect", bad_models["dynamic"], "--target", "coral-usb", "--json").stdout)
    assert data["edgetpu"]["tensor_findings"] == json.loads(json.dumps(e["tensor_findings"]))
    assert data["inputs"]["x"]["shape_signature"] == [-1, 8]


def test_per_op_limits_and_the_parameter_cache():
    """Limits that a file from the converters here does not show, on hand-made op lists."""
    t = lambda i, name, shape, dtype="int8", const=False, nbytes=0, **kw: dict(  # noqa: E731
        index=i, name=name, shape=shape, shape_signature=shape, dtype=dtype, is_constant=const, bytes=nbytes, **kw)
    fc = {"index": 0, "op": "FULLY_CONNECTED", "inputs": [0, 1, 2], "outputs": [3], "options": {}}
    big = 8 * 1024 * 1024
    tensors = [t(0, "x", [1, 4096]), t(1, "w", [2048, 4096], const=True, nbytes=big), t(2, "b", [2048], "int32", True, 8192),
               t(3, "y", [1, 2048])]
    e = edgetpu.check([fc], tensors, big, inputs=[0], outputs=[3])
    assert e["compatible"] and any("caches on chip" in w for w in e["warnings"])  # runs, weights streamed
    batched = [t(0, "x", [4, 16]), t(1, "w", [8, 16], const=True, nbytes=128), t(2, "b", [8], "int32", True, 32), t(3, "y", [4, 8])]
    e = edgetpu.check([fc], batched, 200, inputs=[0], outputs=[3])
    assert "not one-dimensional" in e["ops"][0]["reasons"][0] and any("batch 4" in n for n in e["notes"])
    concat = {"index": 0, "op": "CONCATENATION", "inputs": [0, 1], "outputs": [2], "options": {"fusedActivationFunction": 1}}
    e = edgetpu.check([concat], [t(0, "a", [1, 4]), t(1, "b", [1, 4]), t(2, "c", [1, 8])], 100, inputs=[0, 1], outputs=[2])
    assert e["first_unmapped"]["index"] == 0 and "fused activation" in e["first_unmapped"]["reasons"][0]
    rank = [t(0, "x", [2, 3, 4, 5]), t(1, "y", [2, 3, 4, 5])]
    e = edgetpu.check([{"index": 0, "op": "TANH", "inputs": [0], "outputs": [1], "options": {}}], rank, 100, inputs=[0], outputs=[1])
    assert any(f["kind"] == "rank" and f["tensor"] == "x" for f in e["tensor_findings"]) and e["mapped_ops"] == 0


# --- (c) the runtime and a compiled model ------------------------------------------------


def _fake_compiled(source, target):
    """The one fake here (an Edge TPU and its compiler cannot exist on this machine): the
    source model with all its ops replaced by one ``edgetpu-custom-op``, as the compiler
    leaves them (the real op's payload, the compiled Edge TPU program, is missing)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(source.read_bytes(), 0)
    graph = model.subgraphs[0]
    code = schema.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.CUSTOM
    code.customCode, code.version = edgetpu.COMPILED_OP, 1
    op = schema.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, list(graph.inputs), list(graph.outputs)
    model.operatorCodes, graph.operators = [code], [op]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    target.write_bytes(builder.Output())


@pytest.fixture()
def coral_bundle(cmapss_bundle, tmp_path):
    """A copy of the bundle with the coral-usb target's delegate and a compiled model beside
    step_int8.tflite, not yet listed in the manifest."""
    if ctypes.util.find_library("edgetpu"):
        pytest.skip("libedgetpu is installed here: these tests cover its absence")
    copy = tmp_path / "coral"
    shutil.copytree(cmapss_bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["target"]["delegate"] = load_target("coral-usb").delegate
    (copy / "manifest.json").write_text(json.dumps(manifest))
    _fake_compiled(copy / "step_int8.tflite", copy / "step_int8_edgetpu.tflite")
    return copy


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # LiteRT's Delegate.__del__ after a failed load
def test_runtime_prefers_a_registered_compiled_model_only_with_the_delegate(coral_bundle):
    from ai_edge_litert.interpreter import Interpreter

    compiled = coral_bundle / "step_int8_edgetpu.tflite"
    with pytest.raises(RuntimeError, match="edgetpu-custom-op"):  # why the CPU must never pick it
        Interpreter(model_path=str(compiled)).allocate_tensors()
    with pytest.raises(BundleError, match="does not list.*bundle-add"):  # present but its hash unchecked
        edgelstm.load(coral_bundle)
    assert "added step_int8_edgetpu.tflite" in run_cli("bundle-add", coral_bundle, compiled).stdout
    bundle = Bundle.open(coral_bundle)

    assert _choose_model(bundle, "litert", None, None)["file"] == "step_int8_stream.tflite"
    assert edgelstm.load(coral_bundle, delegate=None).model_file == "step_int8_stream.tflite"
    with pytest.raises(BundleError, match="runs only through the libedgetpu delegate"):
        edgelstm.load(coral_bundle, delegate=None, model="step_int8_edgetpu.tflite")

    delegate = load_target("coral-usb").delegate
    entry = _choose_model(bundle, "litert", None, delegate)
    assert entry["file"] == "step_int8_edgetpu.tflite" and entry["edgetpu_compiled"]
    assert entry["compiled_from"] == "step_int8.tflite" and entry["tensors"]["x"]["dtype"] == "int8"
    assert _choose_model(bundle, "litert", "step_int8.tflite", delegate)["file"] == "step_int8.tflite"  # named: kept
    with pytest.raises(BackendUnavailableError,
                       match=r"libedgetpu.so.1 cannot be loaded.*apt-get install libedgetpu1-std.*step_int8_edgetpu.tflite runs only through it"):
        edgelstm.load(coral_bundle)  # delegate from the manifest's target
    with pytest.raises(ValueError, match="batch 1"):
        edgelstm.load(coral_bundle, streams=4)

    text = run_cli("inspect", coral_bundle, "--target", "coral-usb").stdout
    assert "step_int8_edgetpu.tflite is in the bundle and registered" in text
    e = edgetpu.check_file(compiled)
    assert e["compiled"] and e["compiler_command"] is None and e["ops"][0]["op"] == "CUSTOM(edgetpu-custom-op)"
