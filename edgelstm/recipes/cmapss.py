"""C-MAPSS FD001 remaining-useful-life recipe: data, targets, a streamable LSTM, scoring.

Follows the protocol most published FD001 results use: the 14 non-constant sensors,
z-score normalisation fitted on the training engines, a piecewise-linear RUL target
capped at 125 cycles, and the test score taken at each test engine's last cycle against
``RUL_FD001.txt`` (RMSE and the PHM08 score).

The model is trained on whole trajectories with an output at every cycle
(``return_sequences=True``), which is exactly what streaming computes: stepping one cycle
at a time from an engine's first cycle gives what the model was trained to give. Engines
are end-padded to one length and padded steps get zero loss weight; a causal LSTM's
outputs at real steps never see the padding, so no Masking layer is needed.

Run ``python -m edgelstm.recipes.cmapss --out model.keras`` to train.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ..calibration import CMAPSS_FD001_SENSORS, load_cmapss
from ..normalization import Normalization

RUL_CAP = 125
DATA_DIR = Path(__file__).resolve().parents[2] / "calibration" / "cmapss_fd001"


def data_dir() -> Path:
    if DATA_DIR.is_dir():
        return DATA_DIR
    installed = Path(__file__).resolve().parents[1] / "_calibration" / "cmapss_fd001"
    return installed


def train_targets(sequences: list, cap: int = RUL_CAP) -> list:
    """Piecewise-linear RUL per cycle of run-to-failure engines: min(cap, cycles left)."""
    return [np.minimum(cap, np.arange(len(s) - 1, -1, -1)).astype(np.float32) for s in sequences]


def test_truth(directory: Path | None = None) -> np.ndarray:
    return np.loadtxt((directory or data_dir()) / "RUL_FD001.txt", dtype=np.float32).reshape(-1)


def scores(predicted: np.ndarray, true: np.ndarray) -> dict:
    """RMSE and the PHM08 score (late predictions penalised harder than early ones)."""
    d = np.asarray(predicted, np.float64) - np.asarray(true, np.float64)
    phm = np.where(d < 0, np.exp(-d / 13.0) - 1.0, np.exp(d / 10.0) - 1.0).sum()
    return {"rmse": float(np.sqrt(np.mean(d**2))), "phm08": float(phm), "engines": int(len(d))}


def load(directory: Path | None = None) -> dict:
    directory = directory or data_dir()
    train = load_cmapss(directory / "train_FD001.txt", CMAPSS_FD001_SENSORS)
    test = load_cmapss(directory / "test_FD001.txt", CMAPSS_FD001_SENSORS)
    scaler = Normalization.fit("zscore", np.concatenate(train.sequences))
    return {"train": train, "test": test, "scaler": scaler, "truth": test_truth(directory)}


def pad(sequences: list, targets: list | None = None) -> tuple:
    length = max(len(s) for s in sequences)
    x = np.zeros((len(sequences), length, sequences[0].shape[1]), np.float32)
    y = np.zeros((len(sequences), length, 1), np.float32)
    weight = np.zeros((len(sequences), length), np.float32)
    for i, s in enumerate(sequences):
        x[i, : len(s)] = s
        weight[i, : len(s)] = 1.0
        if targets is not None:
            y[i, : len(s), 0] = targets[i]
    return x, y, weight


def build_model(n_features: int, units=(64, 32), dropout: float = 0.1):
    import keras

    layers = [keras.Input((None, n_features))]
    for u in units:
        layers.append(keras.layers.LSTM(u, return_sequences=True))
        if dropout:
            layers.append(keras.layers.Dropout(dropout))
    layers.append(keras.layers.Dense(1))
    model = keras.Sequential(layers)
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="mse", weighted_metrics=[])
    return model


def train(epochs: int = 60, seed: int = 0, units=(64, 32), verbose: int = 0) -> tuple:
    """Train on all 100 training engines; returns ``(model, data)``."""
    import keras

    keras.utils.set_random_seed(seed)
    data = load()
    train_set = [data["scaler"].apply(s) for s in data["train"].sequences]
    x, y, weight = pad(train_set, train_targets(train_set))
    model = build_model(x.shape[-1], units=units)
    # Train on RUL / cap (a well-scaled target), then fold the scale into the last Dense so the
    # saved model outputs cycles directly.
    model.fit(x, y / RUL_CAP, sample_weight=weight, batch_size=10, epochs=epochs, verbose=verbose, shuffle=True)
    head = model.layers[-1]
    kernel, bias = head.get_weights()
    head.set_weights([kernel * RUL_CAP, bias * RUL_CAP])
    return model, data


def evaluate_last_cycle(predict_sequence, data: dict) -> dict:
    """Score ``predict_sequence(normalised (T, F)) -> (T,)`` on each test engine's last cycle."""
    last = np.array([float(predict_sequence(data["scaler"].apply(s))[-1]) for s in data["test"].sequences])
    return scores(last, data["truth"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="train the C-MAPSS FD001 streaming LSTM")
    parser.add_argument("--out", type=Path, required=True, help=".keras file to write; a .scaler.json is written beside it")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    model, data = train(epochs=args.epochs, seed=args.seed, verbose=2)
    model.save(args.out)
    scaler_path = args.out.with_suffix(".scaler.json")
    scaler_path.write_text(json.dumps(data["scaler"].to_json(), indent=2) + "\n")
    result = evaluate_last_cycle(lambda s: model.predict(s[None], verbose=0)[0, :, 0], data)
    print(json.dumps({"model": str(args.out), "scaler": str(scaler_path), "test": result}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
