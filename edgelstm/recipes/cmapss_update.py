"""The learning loop's C-MAPSS recipe: which FD001 training engines play which part.

The 100 run-to-failure training engines are split once, with a fixed seed, into

- 40 **base** engines: what the workstation had when the first model was trained
  (:func:`train_base`: the recipe's LSTM 64/32 member, its scaler fitted on these engines only);
- 40 **field** engines: machines in service, played through the simulator, the bridge and the
  int8 runtime to failure, their readings logged by the bridge (the device side of the loop);
- 20 **gate** engines: held out for the update's decision (:func:`part_dataset`).

The FD001 test set (100 engines cut before failure, truth in ``RUL_FD001.txt``) scores the
models before and after, and is never used to choose anything.
"""

from __future__ import annotations

import numpy as np

from . import cmapss

SPLIT_SEED = 2026
BASE, FIELD, GATE = 40, 40, 20


def split(n: int = 100, seed: int = SPLIT_SEED) -> dict:
    """Engine indices (0-based, into the training set) of each part."""
    order = np.random.default_rng(seed).permutation(n)
    return {"base": sorted(order[:BASE].tolist()), "field": sorted(order[BASE:BASE + FIELD].tolist()),
            "gate": sorted(order[BASE + FIELD:BASE + FIELD + GATE].tolist())}


def train_base(epochs: int = 40, seed: int = 0, verbose: int = 0, split_seed: int = SPLIT_SEED) -> tuple:
    """The first model, trained on the base engines only: ``(keras model outputting cycles, scaler)``.

    The recipe's member configuration (LSTM 64 -> LSTM 32 -> Dense 1, GaussianNoise 0.2, dropout
    0.1, Adam 2e-3 with a cosine decay, target RUL / 125), a fixed number of epochs (no engine
    is left to choose one on), the head scaled to cycles."""
    import keras

    from edgelstm.runtime.normalization import Normalization

    data = cmapss.load()
    parts = split(len(data["train"].sequences), split_seed)
    raw = [data["train"].sequences[i] for i in parts["base"]]
    scaler = Normalization.fit("zscore", np.concatenate(raw))
    sequences = [scaler.apply(s) for s in raw]
    x, y, weight = cmapss.pad(sequences, cmapss.train_targets(sequences))
    keras.utils.set_random_seed(seed)
    member = cmapss.MEMBER
    model = cmapss.build_model(x.shape[-1], units=member["units"], dropout=member["dropout"], noise=member["noise"],
                               lr=member["lr"])
    for epoch in range(epochs):
        model.optimizer.learning_rate.assign(cmapss._cosine(member["lr"], epoch, epochs))
        history = model.fit(x, y / cmapss.RUL_CAP, sample_weight=weight, batch_size=member["batch_size"], epochs=1,
                            verbose=0, shuffle=True)
        if verbose:
            print(f"base epoch {epoch + 1}/{epochs} loss {history.history['loss'][0]:.5f}", flush=True)
    cmapss._scale_head(model, cmapss.RUL_CAP)
    return model, scaler


def part_dataset(part: str, split_seed: int = SPLIT_SEED):
    """One part's engines as an ``edgelstm dataset`` (raw readings, capped RUL per cycle): ``gate``
    decides the update; ``base`` is what the first model was trained on (replayed in the fine-tune
    so that it does not forget them)."""
    from edgelstm.convert.calibration_data import CMAPSS_FD001_SENSORS
    from edgelstm.learn.dataset import Dataset

    data = cmapss.load()
    engines = split(len(data["train"].sequences), split_seed)[part]
    sequences = [data["train"].sequences[i] for i in engines]
    return Dataset(features=list(CMAPSS_FD001_SENSORS), sequences=sequences, targets=cmapss.train_targets(sequences),
                   devices=[f"{part}{i}" for i in engines], report={"source": "C-MAPSS FD001 training engines",
                                                                   "engines": engines})


def field_engines(split_seed: int = SPLIT_SEED) -> list:
    data = cmapss.load()
    return [data["train"].sequences[i] for i in split(len(data["train"].sequences), split_seed)["field"]]
