"""Functional Keras models that are graphs, not chains: residual connections, parallel branches,
merges and LayerNormalization. A graph whose recurrent layers run forward in time and whose other
layers act per timestep is a step model (it streams one reading per call); a graph with a layer
that looks across time is a window model. Each matches the framework within 1e-5 in the numpy
reference and in the float TFLite and ONNX exports, and quantizes to int8."""

from __future__ import annotations

import json

import numpy as np
import pytest

import edgelstm
from edgelstm.convert.importers import load_network
from edgelstm.errors import UnsupportedLayerError
from edgelstm.model.reference import Reference

from .conftest import run_cli

F = 4


def _randomize(model, seed=0, scale=0.4):
    """Random weights of a useful size (fresh LayerNormalization is gamma 1, beta 0: it would hide bugs)."""
    generator = np.random.default_rng(seed)
    for weight in model.weights:
        center = 1.0 if "gamma" in weight.path else 0.0
        weight.assign((center + generator.normal(0.0, scale, weight.shape)).astype("float32"))
    return model


def _residual_gru_stack(L, x):
    """Two GRUs with a residual Add and LayerNormalization after it, as recent RUL papers build them."""
    first = L.GRU(12, return_sequences=True)(x)
    second = L.GRU(12, return_sequences=True)(first)
    normed = L.LayerNormalization()(L.Add()([first, second]))
    return L.Dense(1)(L.Dense(6, activation="relu")(normed))


def _float_step_outputs(network, sequence):
    """The float32 TFLite and ONNX step models built straight from the network, stepped over ``sequence``."""
    import onnxruntime
    from ai_edge_litert.interpreter import Interpreter

    from edgelstm.convert.export import onnx_step, tflite_step
    from edgelstm.convert.export.state_plan import StatePlan

    plan = StatePlan.single(network)
    runner = Interpreter(model_content=tflite_step.convert(network, plan, "float32")).get_signature_runner()
    session = onnxruntime.InferenceSession(onnx_step.build_float_model(network, plan).SerializeToString())
    results = []
    for step in ("tflite", "onnx"):
        state = {name: np.zeros((1, size), np.float32) for name, size in zip(network.state_names(), network.state_sizes())}
        outputs = []
        for x in sequence:
            feed = {"x": x[None].astype(np.float32), **state}
            if step == "tflite":
                got = runner(**feed)
            else:
                names = [o.name for o in session.get_outputs()]
                got = dict(zip(names, session.run(names, feed)))
            state = {name: got[f"{name}_out"] for name in state}
            outputs.append(got["y"][0])
        results.append(np.array(outputs))
    return results


MERGES = ["Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate"]


@pytest.mark.parametrize("merge", MERGES)
def test_merge_layers_in_a_step_model_match_keras(keras, tmp_path, merge):
    """Each Keras merge layer joining an LSTM branch and a GRU branch of one input: a step model,
    exact in the reference and in the float step exports."""
    L = keras.layers
    x = keras.Input((None, F))
    branches = [L.LSTM(6, return_sequences=True)(x), L.GRU(6, return_sequences=True)(x)]
    model = _randomize(keras.Model(x, L.Dense(2)(getattr(L, merge)()(branches))))
    model.save(tmp_path / "m.keras")
    network = load_network(tmp_path / "m.keras")
    assert network.mode == "step" and not network.is_chain
    assert [layer.kind for layer in network.layers] == ["lstm", "gru", "merge", "dense"]
    sequence = np.random.default_rng(1).normal(size=(15, F)).astype("float32")
    expected = model.predict(sequence[None], verbose=0)[0]
    outputs, _ = Reference(network).run(sequence)
    assert np.max(np.abs(outputs - expected)) <= 1e-5
    for got in _float_step_outputs(network, sequence):
        assert np.max(np.abs(got - expected)) <= 1e-5, merge


def test_residual_gru_stack_streams_one_reading_per_call(keras, tmp_path):
    """The residual GRU stack with LayerNormalization is a step model: converted to float32 and int8
    TFLite and ONNX, ``edgelstm.load(...).step()`` one reading per call matches Keras on held-out
    sequences, and the report gives the int8 error."""
    L = keras.layers
    x = keras.Input((None, F))
    model = _randomize(keras.Model(x, _residual_gru_stack(L, x)), scale=0.3)
    model.save(tmp_path / "residual.keras")
    generator = np.random.default_rng(2)
    np.save(tmp_path / "calib.npy", generator.normal(size=(24, 60, F)).astype("float32"))
    run_cli("convert", tmp_path / "residual.keras", "--calibration", tmp_path / "calib.npy", "--out", tmp_path / "b",
            "--quant", "int8,float32", "--long-steps", "500", "--quiet")
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["network"]["mode"] == "step" and manifest["network"]["graph"]
    assert [s["name"] for s in manifest["state"]] == ["h_0", "h_1"]
    assert {"step_int8.tflite", "step_int8_stream.tflite", "step_int8.onnx", "step_float32.onnx"} <= {
        m["file"] for m in manifest["models"]}
    int8_entry = next(m for m in manifest["models"] if m["file"] == "step_int8.tflite")
    assert int8_entry["edgetpu"]["compatible"], int8_entry["edgetpu"]  # ADD, FC, MUL, RSQRT: Edge TPU ops
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    for name in ("tflite int8", "tflite int8 stream", "onnx int8"):
        assert 0 < report["models"][name]["relative_rmse"] < 0.1, (name, report["models"][name])
    assert report["models"]["tflite float32"]["max_abs_error"] <= 1e-5

    held_out = generator.normal(size=(3, 30, F)).astype("float32")
    expected = model.predict(held_out, verbose=0)  # (3, 30, 1): every step, as the stream gives it
    spread = float(np.std(expected))
    for backend, quant in (("litert", "float32"), ("onnxruntime", "float32"), ("numpy", None), ("litert", "int8")):
        got = []
        for sequence in held_out:
            runtime = edgelstm.load(tmp_path / "b", backend=backend, model=quant)
            got.append([runtime.step(reading).copy() for reading in sequence])
        got = np.array(got).reshape(expected.shape)
        if quant == "int8":  # the report's measure: RMSE over every step, relative to the output's spread
            assert np.sqrt(np.mean((got - expected) ** 2)) / spread < 0.1
        else:
            assert np.max(np.abs(got - expected)) <= 1e-5, backend


def test_residual_gru_stack_from_keras2_hdf5_matches(tmp_path):
    """The same graph saved by tf-keras as HDF5 (Keras 2's functional config: inbound nodes as
    ``[name, node, tensor, kwargs]`` lists)."""
    tf_keras = pytest.importorskip("tf_keras")
    L = tf_keras.layers
    x = tf_keras.Input((None, F))
    model = tf_keras.Model(x, _residual_gru_stack(L, x))
    generator = np.random.default_rng(3)
    for weight in model.weights:
        weight.assign((("gamma" in weight.name) + generator.normal(0.0, 0.3, weight.shape)).astype("float32"))
    model.save(tmp_path / "residual.h5")
    network = load_network(tmp_path / "residual.h5")
    assert network.mode == "step" and not network.is_chain
    batch = generator.normal(size=(2, 20, F)).astype("float32")
    assert np.max(np.abs(Reference(network).predict(batch) - model.predict(batch, verbose=0))) <= 1e-5


def test_parallel_branches_window_model_matches_keras(keras, tmp_path):
    """A Conv1D branch and an LSTM branch concatenated per timestep, then global pooling: a
    window model (the convolution looks across time), exact in the float window exports."""
    import onnxruntime
    from ai_edge_litert.interpreter import Interpreter

    from edgelstm.convert.export import onnx_window, tflite_window

    L = keras.layers
    T = 10
    x = keras.Input((T, F))
    conv = L.Conv1D(5, 3, padding="causal", activation="relu")(x)
    lstm = L.LSTM(7, return_sequences=True)(x)
    merged = L.Concatenate()([conv, lstm])
    pooled = L.GlobalAveragePooling1D()(L.LayerNormalization()(merged))
    model = _randomize(keras.Model(x, L.Dense(1, activation="sigmoid")(pooled)))
    model.save(tmp_path / "w.keras")
    network = load_network(tmp_path / "w.keras")
    assert network.mode == "window" and network.window == T
    batch = np.random.default_rng(4).normal(size=(1, T, F)).astype("float32")
    expected = model.predict(batch, verbose=0)
    assert np.max(np.abs(Reference(network).predict(batch) - expected)) <= 1e-5
    runner = Interpreter(model_content=tflite_window.convert(network, "float32")).get_signature_runner()
    assert np.max(np.abs(runner(x=batch)["y"] - expected)) <= 1e-5
    session = onnxruntime.InferenceSession(onnx_window.build_float_model(network).SerializeToString())
    assert np.max(np.abs(session.run(["y"], {"x": batch})[0] - expected)) <= 1e-5


def test_activation_anywhere_and_batch_norm_in_a_graph(keras, tmp_path):
    """An Activation after a recurrent layer stays a layer of its own; after a linear Dense nothing
    else reads it folds into that Dense; BatchNormalization in a graph becomes a diagonal Dense."""
    L = keras.layers
    x = keras.Input((None, F))
    lstm = L.LSTM(6, return_sequences=True)(x)
    skip = L.Activation("tanh")(L.Dense(6)(x))
    joined = L.BatchNormalization()(L.Add()([L.Activation("relu")(lstm), skip]))
    model = _randomize(keras.Model(x, L.Dense(1)(joined)))
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            layer.set_weights([np.abs(w) + 0.5 for w in layer.get_weights()])
    model.save(tmp_path / "m.keras")
    network = load_network(tmp_path / "m.keras")
    kinds = [layer.kind for layer in network.layers]
    assert kinds.count("activation") == 1 and kinds.count("dense") == 3, kinds
    batch = np.random.default_rng(5).normal(size=(2, 9, F)).astype("float32")
    assert np.max(np.abs(Reference(network).predict(batch) - model.predict(batch, verbose=0))) <= 1e-5


@pytest.mark.parametrize("build, message", [
    ("two_inputs", r"2 inputs \(.*\); exactly one is supported"),
    ("shared_layer", r"layer 'shared' \(Dense\) is called 2 times \(a shared layer\)"),
    ("time_concatenate", r"layer \d+ 'concatenate\w*' \(Concatenate\): concatenates along axis 1"),
])
def test_graphs_that_do_not_convert_are_refused_by_name(keras, tmp_path, build, message):
    L = keras.layers
    x = keras.Input((None, F))
    if build == "two_inputs":
        other = keras.Input((None, F))
        model = keras.Model([x, other], L.Dense(1)(L.LSTM(4)(L.Add()([x, other]))))
    elif build == "shared_layer":
        shared = L.Dense(4, name="shared")
        model = keras.Model(x, L.LSTM(3)(L.Add()([shared(x), shared(L.Dense(F)(x))])))
    elif build == "time_concatenate":
        model = keras.Model(x, L.LSTM(3)(L.Concatenate(axis=1)([x, L.Dense(F)(x)])))
    else:
        model = keras.Model(x, L.LSTM(3)(L.Concatenate(axis=1)([x, L.Dense(F)(x)])))
    model.save(tmp_path / "m.keras")
    with pytest.raises(UnsupportedLayerError, match=message):
        load_network(tmp_path / "m.keras")
    result = run_cli("inspect", tmp_path / "m.keras", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr


T = 10


def _attention_case(keras, case):
    L = keras.layers
    x = keras.Input((T, F))
    lstm = L.LSTM(6, return_sequences=True)(x)
    if case == "attention_lstm":  # the attention LSTM for RUL: self-attention over the LSTM's outputs
        attended = L.Attention()([lstm, lstm])
    elif case == "attention_scaled_causal":
        attended = L.Attention(use_scale=True)([lstm, L.Dense(5)(lstm), lstm], use_causal_mask=True)
    elif case == "additive":  # Bahdanau-style scores with a learned weight per feature
        attended = L.AdditiveAttention(use_scale=True)([L.Dense(6)(lstm), lstm])
    elif case == "additive_causal_key":
        attended = L.AdditiveAttention(use_scale=False)([lstm, L.Dense(5)(lstm), L.Dense(6)(lstm)], use_causal_mask=True)
    elif case == "multi_head_self":
        attended = L.MultiHeadAttention(num_heads=2, key_dim=4)(lstm, lstm)
    else:  # cross attention: query from the LSTM, value and key from a convolution, causal
        conv = L.Conv1D(5, 3, padding="causal")(x)
        attended = L.MultiHeadAttention(num_heads=3, key_dim=2, value_dim=3, output_shape=4)(
            lstm, conv, key=L.Dense(4)(conv), use_causal_mask=True)
    pooled = L.GlobalAveragePooling1D()(L.Concatenate()([lstm, attended]))
    return keras.Model(x, L.Dense(1)(pooled))


@pytest.mark.parametrize("case", ["attention_lstm", "attention_scaled_causal", "additive", "additive_causal_key",
                                  "multi_head_self", "multi_head_cross_causal"])
def test_attention_window_models_match_keras(keras, tmp_path, case):
    """Attention, AdditiveAttention and MultiHeadAttention (self and cross, causal masks,
    key/value/output dims) in the numpy reference and the float TFLite and ONNX window graphs:
    within 1e-5 of Keras."""
    import onnxruntime
    from ai_edge_litert.interpreter import Interpreter

    from edgelstm.convert.export import onnx_window, tflite_window

    model = _randomize(_attention_case(keras, case), scale=0.5)
    model.save(tmp_path / "a.keras")
    network = load_network(tmp_path / "a.keras")
    assert network.mode == "window" and network.window == T
    batch = np.random.default_rng(6).normal(size=(1, T, F)).astype("float32")
    expected = model.predict(batch, verbose=0)
    assert np.max(np.abs(Reference(network).predict(batch) - expected)) <= 1e-5
    runner = Interpreter(model_content=tflite_window.convert(network, "float32")).get_signature_runner()
    assert np.max(np.abs(runner(x=batch)["y"] - expected)) <= 1e-5
    session = onnxruntime.InferenceSession(onnx_window.build_float_model(network).SerializeToString())
    assert np.max(np.abs(session.run(["y"], {"x": batch})[0] - expected)) <= 1e-5


@pytest.mark.parametrize("case", ["attention_lstm", "additive"])
def test_attention_converts_to_int8(keras, tmp_path, case):
    """The attention LSTM for RUL, and AdditiveAttention (ADD broadcast, TANH, the weighted sum as a
    matrix product, TRANSPOSE), in int8 TFLite and ONNX: the report gives the int8 error, and the
    bundle's Edge TPU verdict says BATCH_MATMUL (the attention scores) stays on the CPU."""
    _randomize(_attention_case(keras, case), scale=0.5).save(tmp_path / "a.keras")
    np.save(tmp_path / "calib.npy", np.random.default_rng(9).normal(size=(16, 40, F)).astype("float32"))
    run_cli("convert", tmp_path / "a.keras", "--calibration", tmp_path / "calib.npy", "--out", tmp_path / "b",
            "--quant", "int8,float32", "--window-samples", "300", "--eval-windows", "200", "--quiet")
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    for name in ("tflite int8", "onnx int8"):
        assert 0 < report["models"][name]["relative_rmse"] < 0.25, (name, report["models"][name])
    assert report["models"]["tflite float32"]["relative_rmse"] < 1e-5
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    edgetpu = next(m for m in manifest["models"] if m["file"] == "window_int8.tflite")["edgetpu"]
    assert not edgetpu["compatible"] and "BATCH_MATMUL" in json.dumps(edgetpu)


def test_attention_from_keras2_hdf5_matches(tmp_path):
    """tf-keras HDF5: MultiHeadAttention (its projections stored query, key, value, output; the value
    passed as a keyword), a scaled Attention and a scaled AdditiveAttention, all causal
    (``use_causal_mask`` in the call)."""
    tf_keras = pytest.importorskip("tf_keras")
    L = tf_keras.layers
    x = tf_keras.Input((T, F))
    lstm = L.LSTM(6, return_sequences=True)(x)
    heads = L.MultiHeadAttention(num_heads=2, key_dim=3)(lstm, lstm, use_causal_mask=True)
    scaled = L.Attention(use_scale=True)([lstm, lstm], use_causal_mask=True)
    added = L.AdditiveAttention(use_scale=True)([lstm, lstm], use_causal_mask=True)
    model = tf_keras.Model(x, L.Dense(1)(L.GlobalAveragePooling1D()(L.Concatenate()([lstm, heads, scaled, added]))))
    generator = np.random.default_rng(7)
    for weight in model.weights:
        weight.assign(generator.normal(0.0, 0.5, weight.shape).astype("float32"))
    model.save(tmp_path / "a.h5")
    network = load_network(tmp_path / "a.h5")
    assert [getattr(layer, "causal", None) for layer in network.layers if "attention" in layer.kind] == [True, True, True]
    batch = generator.normal(size=(2, T, F)).astype("float32")
    assert np.max(np.abs(Reference(network).predict(batch) - model.predict(batch, verbose=0))) <= 1e-5


def test_guides_hybrid_model_converts_and_streams(keras, tmp_path):
    """The guide's hybrid text model: Embedding, Bidirectional(LSTM(64)), MultiHeadAttention(4 heads,
    key_dim 64) over it, Concatenate, GlobalAveragePooling1D, Dense(sigmoid). Converted to float32 and
    int8 TFLite and ONNX; the float exports match Keras, the runtime steps it one token per call, and
    ``inspect --target coral-usb`` says which ops stay on the CPU (BATCH_MATMUL is not an Edge TPU op)."""
    L = keras.layers
    length, vocabulary = 12, 40
    x = keras.Input((length,), dtype="int32")
    recurrent = L.Bidirectional(L.LSTM(64, return_sequences=True))(L.Embedding(vocabulary, 16)(x))
    attended = L.MultiHeadAttention(num_heads=4, key_dim=64)(recurrent, recurrent)
    pooled = L.GlobalAveragePooling1D()(L.Concatenate()([recurrent, attended]))
    model = _randomize(keras.Model(x, L.Dense(1, activation="sigmoid")(pooled)), scale=0.15)
    model.save(tmp_path / "hybrid.keras")
    generator = np.random.default_rng(8)
    np.save(tmp_path / "tokens.npy", generator.integers(0, vocabulary, size=(30, 48)))
    run_cli("convert", tmp_path / "hybrid.keras", "--calibration", tmp_path / "tokens.npy", "--out", tmp_path / "b",
            "--quant", "int8,float32", "--window-samples", "200", "--eval-windows", "150", "--quiet")
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["network"]["mode"] == "window" and manifest["input"]["kind"] == "token"
    assert {"window_int8.tflite", "window_int8.onnx", "window_float32.tflite", "window_float32.onnx"} <= {
        m["file"] for m in manifest["models"]}
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert report["models"]["tflite float32"]["max_abs_error"] <= 1e-5
    for name in ("tflite int8", "onnx int8"):
        assert 0 < report["models"][name]["max_abs_error"] < 0.05, (name, report["models"][name])

    tokens = generator.integers(0, vocabulary, size=length + 4)
    expected = np.concatenate([model.predict(tokens[t - length + 1 : t + 1][None], verbose=0)
                               for t in range(length - 1, len(tokens))])  # (steps, 1)
    for backend, quant, tolerance in (("litert", "float32", 1e-5), ("onnxruntime", "float32", 1e-5), ("numpy", None, 1e-5),
                                      ("litert", "int8", 0.05)):
        runtime = edgelstm.load(tmp_path / "b", backend=backend, model=quant)
        outputs = np.array([runtime.step(token).copy() for token in tokens]).reshape(len(tokens), 1)
        assert np.isnan(outputs[: length - 1]).all()
        assert np.max(np.abs(outputs[length - 1 :] - expected)) <= tolerance, (backend, quant)
    result = run_cli("inspect", tmp_path / "b" / "window_int8.tflite", "--target", "coral-usb")
    assert "BATCH_MATMUL is not in the Edge TPU's supported operations" in result.stdout


def _two_heads(L, x):
    """A multi-task model: a RUL head of order 100 and a failure-probability head on one LSTM."""
    h = L.LSTM(8, return_sequences=True)(x)
    rul = L.Dense(1, name="rul")(L.Dense(6, activation="relu")(h))
    return [rul, L.Dense(1, activation="sigmoid", name="failure")(h)]


def test_a_two_output_model_steps_both_heads(keras, tmp_path):
    """Two outputs convert (float32 and int8 TFLite and ONNX); ``step()`` returns both heads side by
    side (``rt.outputs`` names their columns), the float ones within float32 rounding of Keras, and
    the report measures each head in its own units: each head is scaled inside the model by a power
    of two, so one int8 ``y`` serves the probability head as well as the RUL head."""
    L = keras.layers
    x = keras.Input((None, F))
    model = _randomize(keras.Model(x, _two_heads(L, x)), scale=0.5)
    kernel, bias = model.get_layer("rul").get_weights()
    model.get_layer("rul").set_weights([kernel * 40, bias + 60])
    model.save(tmp_path / "two.keras")
    generator = np.random.default_rng(10)
    np.save(tmp_path / "calib.npy", generator.normal(size=(20, 50, F)).astype("float32"))
    run_cli("convert", tmp_path / "two.keras", "--calibration", tmp_path / "calib.npy", "--out", tmp_path / "b",
            "--quant", "int8,float32", "--long-steps", "500", "--quiet")
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert [(o["name"], o["size"]) for o in manifest["outputs"]] == [("rul", 1), ("failure", 1)]
    factors = [o["factor"] for o in manifest["outputs"]]
    assert factors[0] >= 64 and factors[1] <= 2 and all(np.log2(f) == round(np.log2(f)) for f in factors)
    assert next(m for m in manifest["models"] if m["file"] == "step_int8.tflite")["edgetpu"]["compatible"]
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    for name in ("tflite int8", "tflite int8 stream", "onnx int8"):
        heads = report["models"][name]["outputs"]
        assert set(heads) == {"rul", "failure"}
        assert all(0 < heads[h]["relative_rmse"] < 0.15 for h in heads), (name, heads)
        assert report["models"][name]["relative_rmse"] == max(heads[h]["relative_rmse"] for h in heads)
    sequence = generator.normal(size=(20, F)).astype("float32")
    expected = np.concatenate(model.predict(sequence[None], verbose=0), axis=-1)[0]  # (steps, 2)
    for backend, quant in (("litert", "float32"), ("onnxruntime", "float32"), ("numpy", None), ("litert", "int8")):
        runtime = edgelstm.load(tmp_path / "b", backend=backend, model=quant)
        assert runtime.outputs == {"rul": slice(0, 1), "failure": slice(1, 2)}
        got = np.array([runtime.step(reading).copy() for reading in sequence])
        if quant == "int8":
            for head, columns in runtime.outputs.items():
                spread = np.std(expected[:, columns])
                assert np.sqrt(np.mean((got[:, columns] - expected[:, columns]) ** 2)) / spread < 0.15, head
        else:
            assert np.all(np.abs(got - expected) <= 1e-5 * np.maximum(1.0, np.abs(expected))), backend


def test_a_two_output_model_from_keras2_hdf5_matches(tmp_path):
    tf_keras = pytest.importorskip("tf_keras")
    x = tf_keras.Input((None, F))
    model = tf_keras.Model(x, _two_heads(tf_keras.layers, x))
    model.save(tmp_path / "two.h5")
    network = load_network(tmp_path / "two.h5")
    assert network.layers[-1].kind == "outputs" and network.layers[-1].heads == ("rul", "failure")
    batch = np.random.default_rng(11).normal(size=(2, 12, F)).astype("float32")
    expected = np.concatenate(model.predict(batch, verbose=0), axis=-1)
    assert np.max(np.abs(Reference(network).predict(batch) - expected)) <= 1e-5
