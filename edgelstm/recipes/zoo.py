"""The int8 fidelity zoo: small models of every kind the converter takes, trained on real data.

``bench/int8_fidelity.py`` converts each member and measures its int8 variants against the
source framework's own float output. The members (``examples/zoo/zoo.json`` lists them with
their files, recipe, data, use and output; :data:`MEMBERS` here is the same list):

==  ============================  ==========  =====================================  =======================
#   name                          framework   model                                  use
==  ============================  ==========  =====================================  =======================
1   cmapss_lstm_stream            Keras 3     LSTM 64/32 -> Dense 1 (the demo's)     streaming (reused)
2   cmapss_lstm_window30          Keras 3     LSTM 64/32 -> Dense 1                  many-to-one, window 30 (reused)
3   torch_lstm2_window30          PyTorch     2-layer LSTM 64, h_n[-1] -> Linear     many-to-one, window 30
4   gru256x128_stream             Keras 3     GRU 256 -> GRU 128 -> Dense 1          streaming
5   conv1d_gru_window30           Keras 3     Conv1D 32x5 -> GRU 48 -> Dense 1       window model, 30
6   torch_gru4_forecaster         PyTorch     4-layer GRU 64 -> Linear 14            streaming
7   lstm_uncapped_rul_stream      Keras 3     LSTM 64/32 -> Dense 1, output ~0..360  streaming
8   lstm_fail30_classifier        Keras 3     LSTM 32 -> Dense 1 sigmoid             many-to-one, window 30
9   cmapss_autoencoder            Keras 3     LSTM 16 autoencoder (anomaly score)    window model, 30 (reused)
10  char_lstm_stdlib              Keras 3     Embedding 32 -> LSTM 128 -> softmax 97 streaming (tokens)
11  tfkeras_gru_reset_before      Keras 2     GRU 64/32 reset_after=False -> Dense   streaming (legacy HDF5)
==  ============================  ==========  =====================================  =======================

Data. Every C-MAPSS member is trained on the FD001 training engines of
:func:`edgelstm.recipes.cmapss.validation_split` fold 0 (80 engines; the other 20 choose the
epoch where a recipe keeps its best one), with the 14 informative sensors and the z-score of
:func:`edgelstm.recipes.cmapss.load` (the autoencoder: its healthy-cycle z-score). The demo
model (1) was trained on all 100 training engines by the first version of the RUL recipe. The
bench calibrates on the 80 training engines and measures on the 100 FD001 *test* engines,
which no member has seen. The text model (10) reads CPython's own standard library source
from the interpreter that runs the recipe (:mod:`edgelstm.recipes.zoo_text`); the bench reads
the held-out files the same way.

Seeds are fixed (``keras.utils.set_random_seed`` with TF op determinism, ``torch.manual_seed``);
every recipe trains in 15-90 s on 2 cores (about 6 minutes in all). Outputs go to ``examples/zoo/`` with a
``.scaler.json`` per C-MAPSS model and ``zoo.json``::

    python -m edgelstm.recipes.zoo                       # every new member (~6 min), then zoo.json
    python -m edgelstm.recipes.zoo --only gru256x128_stream,char_lstm_stdlib
    python -m edgelstm.recipes.zoo --manifest-only       # rewrite zoo.json from the files there
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np

from . import cmapss
from .cmapss import RUL_CAP, WINDOW

ROOT = Path(__file__).resolve().parents[2]
ZOO_DIR = ROOT / "examples" / "zoo"
MANIFEST = "zoo.json"
FAIL_WITHIN = 30  # the classifier's label: fails within this many cycles
LARGE_SCALE = 100.0  # the uncapped-RUL model trains on RUL / 100; the factor is folded into its head

CMAPSS_DATA = ("NASA C-MAPSS FD001 train_FD001.txt, 14 sensors; trained on the 80 engines of "
               "edgelstm.recipes.cmapss.validation_split fold 0 (the other 20 choose the best epoch)")
CMAPSS_LICENCE = "data: NASA C-MAPSS, a work of the US Government, public domain; model: Apache-2.0 (this project)"
TEXT_LICENCE = ("training text: CPython standard library source (PSF License Version 2), read from the local "
                "installation at recipe time, not stored here; model: Apache-2.0 (this project)")

#: The zoo, in order. ``recipe`` is ``module:function``; ``use`` is streaming (every step's
#: output is used), many-to-one (a step model run over the last ``window`` readings, its last
#: output used) or window (a window model, one output per window).
MEMBERS = [
    dict(name="cmapss_lstm_stream", file="examples/cmapss_fd001_lstm.keras", scaler="examples/cmapss_fd001_lstm.scaler.json",
         framework="keras3", recipe="edgelstm.recipes.cmapss:train", use="streaming", window=None,
         output="RUL in cycles (capped at 125), one per cycle", data="cmapss",
         model="LSTM 64 -> LSTM 32 -> Dense 1 (the demo's model)", reused=True,
         notes="made by the first version of the RUL recipe (constant lr, 40 epochs, all 100 training engines)",
         train_seconds=30),
    dict(name="cmapss_lstm_window30", file="examples/cmapss_fd001_window30.keras",
         scaler="examples/cmapss_fd001_window30.scaler.json", framework="keras3",
         recipe="edgelstm.recipes.cmapss:train_window_model", use="many-to-one", window=WINDOW,
         output="RUL in cycles (capped at 125) at the window's last cycle", data="cmapss",
         model="LSTM 64 -> LSTM 32 -> Dense 1 on 30-cycle windows", reused=True, train_seconds=40),
    dict(name="torch_lstm2_window30", file="examples/zoo/torch_lstm2_window30.onnx",
         scaler="examples/zoo/torch_lstm2_window30.scaler.json", weights="examples/zoo/torch_lstm2_window30.weights.npz",
         framework="pytorch", recipe="edgelstm.recipes.zoo_torch:train_torch_lstm_window", use="many-to-one",
         window=WINDOW, output="RUL in cycles (capped at 125) at the window's last cycle", data="cmapss",
         model="nn.LSTM(14, 64, num_layers=2), h_n[-1] -> Linear(64, 1); torch.onnx.export(dynamo=False)"),
    dict(name="gru256x128_stream", file="examples/zoo/gru256x128_stream.keras",
         scaler="examples/zoo/gru256x128_stream.scaler.json", framework="keras3",
         recipe="edgelstm.recipes.zoo:train_gru_stream", use="streaming", window=None,
         output="RUL in cycles (capped at 125), one per cycle", data="cmapss",
         model="GaussianNoise 0.2 -> GRU 256 -> GRU 128 -> Dense 1 (return_sequences, whole trajectories)"),
    dict(name="conv1d_gru_window30", file="examples/zoo/conv1d_gru_window30.keras",
         scaler="examples/zoo/conv1d_gru_window30.scaler.json", framework="keras3",
         recipe="edgelstm.recipes.zoo:train_conv_gru_window", use="window", window=WINDOW,
         output="RUL in cycles (capped at 125) per 30-cycle window", data="cmapss",
         model="Conv1D(32, 5, relu, valid) -> GRU 48 -> Dense 1 on 30-cycle windows (a window model)"),
    dict(name="torch_gru4_forecaster", file="examples/zoo/torch_gru4_forecaster.onnx",
         scaler="examples/zoo/torch_gru4_forecaster.scaler.json", weights="examples/zoo/torch_gru4_forecaster.weights.npz",
         state_io="examples/zoo/torch_gru4_forecaster.state_io.onnx", framework="pytorch",
         recipe="edgelstm.recipes.zoo_torch:train_torch_gru_forecaster", use="streaming", window=None,
         output="the next cycle's 14 sensors (z-scored), one vector per cycle", data="cmapss",
         model="nn.GRU(14, 64, num_layers=4) -> Linear(64, 14) on every step; "
               "the .state_io.onnx twin (same weights, inputs x, h0, outputs y, h_n) is for onnxruntime peers"),
    dict(name="lstm_uncapped_rul_stream", file="examples/zoo/lstm_uncapped_rul_stream.keras",
         scaler="examples/zoo/lstm_uncapped_rul_stream.scaler.json", framework="keras3",
         recipe="edgelstm.recipes.zoo:train_uncapped_rul", use="streaming", window=None,
         output="uncapped RUL in cycles (0..~360, order 100; no output scaling outside the model)", data="cmapss",
         model="LSTM 64 -> LSTM 32 -> Dense 1; trained on RUL/100, the 100 folded into the Dense head"),
    dict(name="lstm_fail30_classifier", file="examples/zoo/lstm_fail30_classifier.keras",
         scaler="examples/zoo/lstm_fail30_classifier.scaler.json", framework="keras3",
         recipe="edgelstm.recipes.zoo:train_fail30_classifier", use="many-to-one", window=WINDOW,
         output=f"P(fails within {FAIL_WITHIN} cycles) at the window's last cycle (sigmoid)", data="cmapss",
         model="LSTM 32 -> Dense 1 sigmoid on 30-cycle windows"),
    dict(name="cmapss_autoencoder", file="examples/cmapss_fd001_autoencoder.keras",
         scaler="examples/cmapss_fd001_autoencoder.scaler.json", framework="keras3",
         recipe="edgelstm.recipes.cmapss_autoencoder:train", use="window", window=WINDOW,
         output="anomaly score: reconstruction MSE over the 30-cycle window (z-scored units)", data="cmapss",
         model="LSTM 16 -> RepeatVector 30 -> LSTM 16 -> TimeDistributed Dense 14", reused=True,
         notes="its scaler is fitted on the healthy first 30 % of each training life", train_seconds=33),
    dict(name="char_lstm_stdlib", file="examples/zoo/char_lstm_stdlib.keras", scaler=None, framework="keras3",
         recipe="edgelstm.recipes.zoo_text:train_char_lstm", use="streaming", window=None,
         output="next-character distribution (softmax over 97 ids), one per character", data="stdlib_text",
         model="Embedding(97, 32) -> LSTM 128 -> Dense 97 softmax (return_sequences)"),
    dict(name="tfkeras_gru_reset_before", file="examples/zoo/tfkeras_gru_reset_before.h5",
         scaler="examples/zoo/tfkeras_gru_reset_before.scaler.json", framework="tf_keras",
         recipe="edgelstm.recipes.zoo:train_tfkeras_gru", use="streaming", window=None,
         output="RUL in cycles (capped at 125), one per cycle", data="cmapss",
         model="legacy Keras 2 HDF5 (tf_keras): GRU 64 -> GRU 32 (reset_after=False) -> Dense 1"),
]


def member(name: str) -> dict:
    for entry in MEMBERS:
        if entry["name"] == name:
            return entry
    raise KeyError(f"no zoo member '{name}'; members: {', '.join(m['name'] for m in MEMBERS)}")


# ---------------------------------------------------------------- data


def cmapss_split() -> dict:
    """FD001 (``cmapss.load``), the z-scored training engines and the fold-0 split."""
    data = cmapss.load()
    sequences = [data["scaler"].apply(s) for s in data["train"].sequences]
    train_idx, val_idx = cmapss.validation_split(len(sequences))
    data.update(sequences=sequences, train_idx=train_idx, val_idx=val_idx,
                fit=[sequences[i] for i in train_idx], val=[sequences[i] for i in val_idx])
    return data


def window_validation(val: list, window: int = WINDOW) -> tuple:
    """The test-like validation cuts of :func:`cmapss.validation_cuts` as windows ending at each cut."""
    engine, cycle, rul = cmapss.validation_cuts([len(s) for s in val])
    x = np.stack([cmapss.left_pad(val[e][: c + 1], window)[-window:] for e, c in zip(engine, cycle)])
    return x, rul


def window_test(data: dict, window: int = WINDOW) -> np.ndarray:
    """The last ``window`` cycles of each FD001 test engine (z-scored)."""
    return np.stack([cmapss.left_pad(data["scaler"].apply(s), window)[-window:] for s in data["test"].sequences])


def _seed(seed: int) -> None:
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    try:
        tf.config.experimental.enable_op_determinism()
    except Exception:  # pragma: no cover - older TF
        pass


def _keep_best(model, fit_epoch, validate, epochs: int, lr: float, verbose: int, label: str, key: str = "rmse") -> dict:
    """Cosine-decayed epochs; keep the weights of the epoch with the lowest ``validate()[key]``."""
    best = {key: np.inf, "epoch": 0}
    for epoch in range(epochs):
        model.optimizer.learning_rate.assign(cmapss._cosine(lr, epoch, epochs))
        loss = fit_epoch()
        result = validate()
        if result[key] < best[key]:
            best = dict(result, epoch=epoch + 1, weights=model.get_weights())
        if verbose:
            print(f"{label} epoch {epoch + 1}/{epochs} loss {loss:.5f} val {key} {result[key]:.4f} "
                  f"(best {best[key]:.4f} @ {best['epoch']})", flush=True)
    model.set_weights(best.pop("weights"))
    return best


def save_plain(model, out: Path) -> None:
    """Save a Keras 3 model without its optimizer state (an uncompiled copy from its config with the
    same weights: Adam's moments would triple the file, and no converter reads them)."""
    clone = model.__class__.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    clone.save(out)


def _write_scaler(path: Path, scaler) -> None:
    path.write_text(json.dumps(scaler.to_json(), indent=2) + "\n")


def _stream_fit(model, data: dict, targets: list, batch_size: int, scale: float = RUL_CAP):
    """A one-epoch ``fit`` over whole padded training trajectories (zero weight on padding)."""
    x, y, weight = cmapss.pad(data["fit"], targets)

    def fit_epoch():
        history = model.fit(x, y / scale, sample_weight=weight, batch_size=batch_size, epochs=1, verbose=0, shuffle=True)
        return float(history.history["loss"][0])

    return fit_epoch


def _stream_validate(model, data: dict, scale: float = RUL_CAP):
    """RMSE / PHM08 at the validation engines' test-like cuts (one causal pass per engine)."""
    x_val, _, _ = cmapss.pad(data["val"])
    engine, cycle, rul = cmapss.validation_cuts([len(s) for s in data["val"]])

    def validate():
        predicted = model.predict(x_val, verbose=0, batch_size=len(x_val))[:, :, 0] * scale
        return cmapss.scores(predicted[engine, cycle], rul)

    return validate


def _stream_test(model, data: dict) -> dict:
    return cmapss.evaluate_last_cycle(lambda s: model.predict(s[None], verbose=0)[0, :, 0], data)


# ---------------------------------------------------------------- Keras recipes (C-MAPSS)


def train_gru_stream(out: Path, seed: int = 0, epochs: int = 30, lr: float = 1e-3, batch_size: int = 10,
                     verbose: int = 0) -> dict:
    """Member 4: GaussianNoise 0.2 -> GRU 256 -> Dropout 0.1 -> GRU 128 -> Dropout 0.1 -> Dense 1.

    Streaming (``return_sequences=True`` on whole trajectories, as :func:`cmapss.train` trains the
    LSTM), target RUL/125 (folded back into the head), Adam ``lr`` cosine over ``epochs``, batch
    10 engines, best validation epoch kept."""
    import keras

    L = keras.layers
    _seed(seed)
    data = cmapss_split()
    model = keras.Sequential([keras.Input((None, 14)), L.GaussianNoise(0.2), L.GRU(256, return_sequences=True), L.Dropout(0.1),
                              L.GRU(128, return_sequences=True), L.Dropout(0.1), L.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="mse", weighted_metrics=[])
    best = _keep_best(model, _stream_fit(model, data, cmapss.train_targets(data["fit"]), batch_size),
                      _stream_validate(model, data), epochs, lr, verbose, "gru256x128")
    cmapss._scale_head(model, RUL_CAP)
    save_plain(model, out)
    _write_scaler(out.with_suffix(".scaler.json"), data["scaler"])
    return {"config": dict(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed), "best_epoch": best["epoch"],
            "validation": {"rmse": best["rmse"], "phm08": best["phm08"]}, "test": _stream_test(model, data)}


def train_uncapped_rul(out: Path, seed: int = 0, epochs: int = 40, lr: float = 3e-3, batch_size: int = 10,
                       verbose: int = 0) -> dict:
    """Member 7: a large-output regression head. LSTM 64 -> LSTM 32 -> Dense 1 streaming on whole
    trajectories with the *uncapped* RUL (cycles left, 0..361 in FD001's training engines) as target.

    Trained on RUL/100 and the 100 is folded into the Dense head, so the saved model outputs
    cycles directly (order 100, head weights ~100x those of a unit-scale head) and nothing scales
    the output outside the model. Validation: RMSE at the test-like cuts against the true RUL."""
    _seed(seed)
    data = cmapss_split()
    model = cmapss.build_model(14, units=(64, 32), dropout=0.1, noise=0.2, lr=lr)
    targets = [np.arange(len(s) - 1, -1, -1).astype(np.float32) for s in data["fit"]]
    best = _keep_best(model, _stream_fit(model, data, targets, batch_size, LARGE_SCALE),
                      _stream_validate(model, data, LARGE_SCALE), epochs, lr, verbose, "uncapped")
    cmapss._scale_head(model, LARGE_SCALE)
    save_plain(model, out)
    _write_scaler(out.with_suffix(".scaler.json"), data["scaler"])
    x_val, _, w = cmapss.pad(data["val"])
    y_val = model.predict(x_val, verbose=0)[:, :, 0][w > 0]
    return {"config": dict(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, target_scale=LARGE_SCALE),
            "best_epoch": best["epoch"], "validation": {"rmse": best["rmse"], "phm08": best["phm08"]},
            "test": _stream_test(model, data),
            "output_range_validation": [float(y_val.min()), float(y_val.max())]}


def train_conv_gru_window(out: Path, seed: int = 0, epochs: int = 20, lr: float = 2e-3, batch_size: int = 256,
                          verbose: int = 0) -> dict:
    """Member 5: Input (30, 14) -> Conv1D(32, 5, relu, valid) -> GRU 48 -> Dropout 0.2 -> Dense 1.

    A window model (the Conv1D looks across timesteps, so the converter unrolls it over the 30
    cycles). Trained like :func:`cmapss.train_window_model`: stride-1 windows of the 80 training
    engines, target capped RUL/125 (folded back), best epoch on the validation cuts."""
    import keras

    L = keras.layers
    _seed(seed)
    data = cmapss_split()
    x, y = cmapss.windows(data["fit"], WINDOW)
    x_val, rul = window_validation(data["val"])
    model = keras.Sequential([keras.Input((WINDOW, 14)), L.GaussianNoise(0.2), L.Conv1D(32, 5, activation="relu"),
                              L.GRU(48), L.Dropout(0.2), L.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="mse")

    def fit_epoch():
        return float(model.fit(x, y / RUL_CAP, batch_size=batch_size, epochs=1, verbose=0, shuffle=True).history["loss"][0])

    def validate():
        return cmapss.scores(model.predict(x_val, verbose=0, batch_size=1024)[:, 0] * RUL_CAP, rul)

    best = _keep_best(model, fit_epoch, validate, epochs, lr, verbose, "conv1d_gru")
    cmapss._scale_head(model, RUL_CAP)
    save_plain(model, out)
    _write_scaler(out.with_suffix(".scaler.json"), data["scaler"])
    test = cmapss.scores(model.predict(window_test(data), verbose=0)[:, 0], data["truth"])
    return {"config": dict(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed), "best_epoch": best["epoch"],
            "validation": {"rmse": best["rmse"], "phm08": best["phm08"]}, "test": test, "train_windows": int(len(x))}


def fail_labels(sequences: list, window: int = WINDOW, within: int = FAIL_WITHIN) -> tuple:
    """Stride-1 windows of run-to-failure engines and 1.0 where the engine fails within ``within``
    cycles of the window's last one (true RUL <= ``within``)."""
    x, rul = cmapss.windows(sequences, window, cap=10**6)
    return x, (rul <= within).astype(np.float32)


def _auc(score: np.ndarray, label: np.ndarray) -> float:
    """Area under the ROC curve (the Mann-Whitney statistic, ties counted half)."""
    from .cmapss_autoencoder import rank

    positive = label > 0.5
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return float("nan")
    ranks = rank(score)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def train_fail30_classifier(out: Path, seed: int = 0, epochs: int = 15, lr: float = 2e-3, batch_size: int = 256,
                            verbose: int = 0) -> dict:
    """Member 8: "fails within 30 cycles" on 30-cycle windows: LSTM 32 -> Dropout 0.2 -> Dense 1 sigmoid.

    Many-to-one (converted with ``--window 30``), binary cross-entropy on every stride-1 window of
    the 80 training engines (label: true RUL at the window's last cycle <= 30; ~15 % positive),
    Adam cosine, the epoch with the lowest validation log-loss (every window of the 20 validation
    engines) kept. Scored by accuracy at 0.5 and AUC on the validation windows."""
    import keras

    L = keras.layers
    _seed(seed)
    data = cmapss_split()
    x, y = fail_labels(data["fit"])
    x_val, y_val = fail_labels(data["val"])
    model = keras.Sequential([keras.Input((WINDOW, 14)), L.GaussianNoise(0.1), L.LSTM(32), L.Dropout(0.2),
                              L.Dense(1, activation="sigmoid")])
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="binary_crossentropy")

    def fit_epoch():
        return float(model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0, shuffle=True).history["loss"][0])

    def validate():
        p = np.clip(model.predict(x_val, verbose=0, batch_size=1024)[:, 0].astype(np.float64), 1e-7, 1 - 1e-7)
        loss = float(-np.mean(y_val * np.log(p) + (1 - y_val) * np.log(1 - p)))
        return {"log_loss": loss, "accuracy": float(np.mean((p > 0.5) == (y_val > 0.5))), "auc": _auc(p, y_val)}

    best = _keep_best(model, fit_epoch, validate, epochs, lr, verbose, "fail30", key="log_loss")
    save_plain(model, out)
    _write_scaler(out.with_suffix(".scaler.json"), data["scaler"])
    p_test = model.predict(window_test(data), verbose=0)[:, 0]
    label_test = (data["truth"] <= FAIL_WITHIN).astype(np.float32)
    return {"config": dict(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, fail_within=FAIL_WITHIN),
            "best_epoch": best["epoch"], "positive_share": float(y.mean()),
            "validation": {k: best[k] for k in ("log_loss", "accuracy", "auc")},
            "test": {"accuracy": float(np.mean((p_test > 0.5) == (label_test > 0.5))), "auc": _auc(p_test, label_test),
                     "engines": int(len(label_test)), "positives": int(label_test.sum())}}


def train_tfkeras_gru(out: Path, seed: int = 0, epochs: int = 30, lr: float = 3e-3, batch_size: int = 10,
                      verbose: int = 0) -> dict:
    """Member 11: a legacy Keras 2 model, written with ``tf_keras`` as HDF5: GaussianNoise 0.2 ->
    GRU 64 -> GRU 32 (both ``reset_after=False``, Keras 2's original GRU) -> Dense 1.

    Streaming on whole trajectories exactly like :func:`train_gru_stream` (capped RUL/125,
    folded back), trained in tf_keras itself."""
    import tensorflow as tf
    import tf_keras

    L = tf_keras.layers
    tf_keras.utils.set_random_seed(seed)
    try:
        tf.config.experimental.enable_op_determinism()
    except Exception:  # pragma: no cover
        pass
    data = cmapss_split()
    model = tf_keras.Sequential([L.InputLayer(input_shape=(None, 14)), L.GaussianNoise(0.2),
                                 L.GRU(64, return_sequences=True, reset_after=False),
                                 L.GRU(32, return_sequences=True, reset_after=False), L.Dense(1)])
    model.compile(optimizer=tf_keras.optimizers.Adam(lr), loss="mse", weighted_metrics=[])
    x, y, weight = cmapss.pad(data["fit"], cmapss.train_targets(data["fit"]))
    validate = _stream_validate(model, data)

    best = {"rmse": np.inf, "epoch": 0}
    for epoch in range(epochs):
        tf_keras.backend.set_value(model.optimizer.learning_rate, cmapss._cosine(lr, epoch, epochs))
        history = model.fit(x, y / RUL_CAP, sample_weight=weight, batch_size=batch_size, epochs=1, verbose=0, shuffle=True)
        result = validate()
        if result["rmse"] < best["rmse"]:
            best = dict(result, epoch=epoch + 1, weights=model.get_weights())
        if verbose:
            print(f"tf_keras gru epoch {epoch + 1}/{epochs} loss {history.history['loss'][0]:.5f} "
                  f"val RMSE {result['rmse']:.2f} (best {best['rmse']:.2f} @ {best['epoch']})", flush=True)
    model.set_weights(best.pop("weights"))
    head = model.layers[-1]
    kernel, bias = head.get_weights()
    head.set_weights([kernel * RUL_CAP, bias * RUL_CAP])
    model.save(str(out), save_format="h5", include_optimizer=False)
    _write_scaler(out.with_suffix(".scaler.json"), data["scaler"])
    return {"config": dict(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed), "best_epoch": best["epoch"],
            "validation": {"rmse": best["rmse"], "phm08": best["phm08"]}, "test": _stream_test(model, data)}


# ---------------------------------------------------------------- the manifest


def _recipe_function(spec: str):
    import importlib

    module, _, function = spec.partition(":")
    return getattr(importlib.import_module(module), function)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_manifest(directory: Path = ZOO_DIR, trained: dict | None = None) -> dict:
    """``zoo.json``: every member with its files (paths relative to the repository root, sizes,
    hashes), recipe, data, use and output; training results from ``trained`` or the previous
    manifest."""
    path = directory / MANIFEST
    previous = {m["name"]: m for m in json.loads(path.read_text())["models"]} if path.exists() else {}
    models = []
    for spec in MEMBERS:
        entry = {k: v for k, v in spec.items() if k not in ("train_seconds",)}
        entry["licence"] = TEXT_LICENCE if spec["data"] == "stdlib_text" else CMAPSS_LICENCE
        entry["data_description"] = (
            "CPython standard library source files (edgelstm.recipes.zoo_text.TRAIN_FILES; held out: HELD_OUT_FILES)"
            if spec["data"] == "stdlib_text" else CMAPSS_DATA if not spec.get("reused") else
            "NASA C-MAPSS FD001 training engines (see the recipe's docstring for which)")
        entry["measured_on"] = ("held-out stdlib files (zoo_text.HELD_OUT_FILES)" if spec["data"] == "stdlib_text"
                                else "the 100 FD001 test engines (test_FD001.txt), seen by no member")
        files = {}
        for key in ("file", "scaler", "weights", "state_io"):
            if spec.get(key):
                f = ROOT / spec[key]
                if f.exists():
                    files[key] = {"path": spec[key], "bytes": f.stat().st_size, "sha256": _sha256(f)}
        entry["files"] = files
        result = (trained or {}).get(spec["name"]) or previous.get(spec["name"], {}).get("training")
        if spec.get("reused") and not result:
            result = {"train_seconds": spec.get("train_seconds"), "source": "the recipe's own record"}
        entry["training"] = result
        models.append(entry)
    manifest = {
        "description": "the int8 fidelity zoo: real-data models of every kind edgelstm converts; "
                       "measured by bench/int8_fidelity.py",
        "recipes": "python -m edgelstm.recipes.zoo (new members); reused members name their own recipe",
        "cmapss_split": {"function": "edgelstm.recipes.cmapss.validation_split", "fold": 0,
                         "train_units": [i + 1 for i in cmapss.validation_split(100)[0]],
                         "selection_units": [i + 1 for i in cmapss.validation_split(100)[1]]},
        "models": models,
    }
    directory.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="train the int8 fidelity zoo's new members into examples/zoo/")
    parser.add_argument("--only", help="comma-separated member names (default: every member not reused)")
    parser.add_argument("--out", type=Path, default=ZOO_DIR, help="directory (default examples/zoo)")
    parser.add_argument("--manifest-only", action="store_true", help="only rewrite zoo.json")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    trained = {}
    if not args.manifest_only:
        names = args.only.split(",") if args.only else [m["name"] for m in MEMBERS if not m.get("reused")]
        args.out.mkdir(parents=True, exist_ok=True)
        for name in names:
            spec = member(name)
            if spec.get("reused"):
                raise SystemExit(f"{name} is reused from examples/ (its own recipe: {spec['recipe']})")
            started = time.perf_counter()
            result = _recipe_function(spec["recipe"])(args.out / Path(spec["file"]).name, verbose=int(args.verbose))
            result["train_seconds"] = round(time.perf_counter() - started, 1)
            trained[name] = result
            print(json.dumps({name: result}), flush=True)
    write_manifest(args.out, trained)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
