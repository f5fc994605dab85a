"""The zoo's token model (see :mod:`edgelstm.recipes.zoo`): a character-level next-character LSTM
trained on CPython's standard library source.

Text: the ``.py`` files in :data:`TRAIN_FILES` (about 480 KB) and, for measuring only,
:data:`HELD_OUT_FILES` (about 60 KB), read at recipe / bench time from the standard library of
the interpreter that runs it (``sysconfig.get_paths()["stdlib"]``). No text is stored in this
repository; ``zoo.json`` records the Python version and each file's sha256 at training time
(:func:`text_sources`), and the bench warns when the local files differ.

Tokens: one id per character: 1 = newline, 2..96 = printable ASCII 32..126, 0 = anything else
(tabs, non-ASCII); vocabulary 97. Model: Embedding(97, 32) -> LSTM 128 (return_sequences) ->
Dense 97 softmax, so it streams one character per step and outputs the next character's
distribution at every step.

Training: non-overlapping 100-character chunks of the training text, sparse categorical
cross-entropy, Adam 3e-3 with a cosine decay over ``epochs`` (12), batch 64, the last epoch kept;
reported in bits per character on the held-out files (streamed from a zero state in chunks of
500 characters, as the bench measures them).
"""

from __future__ import annotations

import hashlib
import sys
import sysconfig
from pathlib import Path

import numpy as np

VOCABULARY = 97
TRAIN_FILES = ("argparse.py", "difflib.py", "configparser.py", "dataclasses.py", "statistics.py", "ftplib.py",
               "fractions.py", "calendar.py", "pprint.py", "heapq.py")
HELD_OUT_FILES = ("textwrap.py", "shlex.py", "csv.py", "string.py")
CHUNK = 100  # training chunk length
EVAL_CHUNK = 500  # held-out streams: 500 characters each, every one from a zero state


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def encode(text: str) -> np.ndarray:
    """Characters to ids (see the module docstring)."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
    ids = np.where((codes >= 32) & (codes <= 126), codes - 30, 0)
    ids[codes == 10] = 1
    return ids.astype(np.int32)


def decode(ids) -> str:
    return "".join("\n" if i == 1 else chr(int(i) + 30) if 2 <= i <= 96 else "\ufffd" for i in ids)


def read_files(names) -> np.ndarray:
    """The named stdlib files, encoded and concatenated (in the given order)."""
    return np.concatenate([encode((stdlib_dir() / name).read_text(encoding="utf-8")) for name in names])


def text_sources() -> dict:
    """Where the text came from: the Python version and each file's sha256."""
    def digest(name):
        return hashlib.sha256((stdlib_dir() / name).read_bytes()).hexdigest()

    return {"python": sys.version.split()[0], "stdlib": str(stdlib_dir()),
            "train_files": {n: digest(n) for n in TRAIN_FILES}, "held_out_files": {n: digest(n) for n in HELD_OUT_FILES}}


def chunks(ids: np.ndarray, length: int, limit: int | None = None, stride: int | None = None) -> np.ndarray:
    """Consecutive ``length``-id chunks ``(count, length)`` (at most ``limit``, evenly spread)."""
    stride = stride or length
    starts = np.arange(0, len(ids) - length + 1, stride)
    if limit and len(starts) > limit:
        starts = starts[np.linspace(0, len(starts) - 1, limit).astype(int)]
    return np.stack([ids[s:s + length] for s in starts])


def calibration_tokens(count: int = 80, length: int = 200) -> np.ndarray:
    """Token sequences from the training files for the converter's calibration: ``(count, length)``."""
    return chunks(read_files(TRAIN_FILES), length, limit=count)


def held_out_tokens(count: int = 26, length: int = EVAL_CHUNK) -> np.ndarray:
    """Held-out token streams (never trained on): ``(count, length)``, 13,000 characters by default."""
    return chunks(read_files(HELD_OUT_FILES), length, limit=count)


def bits_per_char(probabilities: np.ndarray, next_ids: np.ndarray) -> float:
    p = np.take_along_axis(probabilities.reshape(-1, probabilities.shape[-1]), next_ids.reshape(-1, 1), axis=1)
    return float(-np.mean(np.log2(np.clip(p, 1e-12, 1.0))))


def train_char_lstm(out: Path, seed: int = 0, epochs: int = 12, lr: float = 3e-3, batch_size: int = 64,
                    verbose: int = 0) -> dict:
    """Member 10 (see the module docstring)."""
    import keras

    from .zoo import _seed, save_plain

    L = keras.layers
    _seed(seed)
    ids = read_files(TRAIN_FILES)
    data = chunks(ids, CHUNK + 1, stride=CHUNK)
    x, y = data[:, :-1], data[:, 1:]
    model = keras.Sequential([keras.Input((None,), dtype="int32"), L.Embedding(VOCABULARY, 32),
                              L.LSTM(128, return_sequences=True), L.Dense(VOCABULARY, activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy")
    for epoch in range(epochs):
        model.optimizer.learning_rate.assign(0.5 * lr * (1.0 + np.cos(np.pi * epoch / epochs)) + 1e-5)
        history = model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0, shuffle=True)
        if verbose:
            print(f"char lstm epoch {epoch + 1}/{epochs} loss {history.history['loss'][0]:.4f} nats/char", flush=True)
    save_plain(model, out)
    held = held_out_tokens(length=EVAL_CHUNK + 1)
    probabilities = model.predict(held[:, :-1], verbose=0)
    top1 = float(np.mean(np.argmax(probabilities, axis=-1) == held[:, 1:]))
    return {"config": dict(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, chunk=CHUNK),
            "train_characters": int(len(ids)), "train_loss_nats": float(history.history["loss"][0]),
            "held_out": {"bits_per_char": bits_per_char(probabilities, held[:, 1:]), "top1_accuracy": top1,
                         "characters": int(held[:, 1:].size)},
            "text": text_sources()}
