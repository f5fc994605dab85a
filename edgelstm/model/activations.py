"""Activation functions by name, in numpy, exactly as Keras computes them.

Names are the framework-neutral vocabulary of the network description. Two of Keras'
functions changed between versions, so the description keeps them apart:

- ``hard_sigmoid`` (Keras 3): ``relu6(x + 3) / 6``, slope 1/6.
- ``hard_sigmoid_keras2`` (Keras 2 / tf-keras): ``clip(0.2 x + 0.5, 0, 1)``, slope 1/5.

This module imports nothing but numpy: the runtime's numpy backend uses it too.
"""

from __future__ import annotations

import math

import numpy as np

_SQRT_HALF = 1.0 / math.sqrt(2.0)


def _erf(x: np.ndarray) -> np.ndarray:
    """Vectorised erf in float64 (numpy has none; math.erf is exact to double precision)."""
    return np.vectorize(math.erf, otypes=[np.float64])(x)


def sigmoid(x):
    with np.errstate(over="ignore"):  # exp(-x) overflows to inf for x < -88 in float32: 1 / inf is the right 0
        return 1.0 / (1.0 + np.exp(-x))


def _hard_sigmoid(slope: float):
    def f(x):
        return np.clip(slope * x + 0.5, 0.0, 1.0)

    return f


def _gelu(x):
    x64 = np.asarray(x, dtype=np.float64)
    return (0.5 * x64 * (1.0 + _erf(x64 * _SQRT_HALF))).astype(np.asarray(x).dtype)


def _softmax(x):
    z = x - np.max(x, axis=-1, keepdims=True)
    e = np.exp(z)
    return e / np.sum(e, axis=-1, keepdims=True)


FUNCTIONS = {
    "linear": lambda x: x,
    "relu": lambda x: np.maximum(x, 0.0),
    "sigmoid": sigmoid,
    "tanh": np.tanh,
    "hard_sigmoid": _hard_sigmoid(1.0 / 6.0),
    "hard_sigmoid_keras2": _hard_sigmoid(0.2),
    "swish": lambda x: x * sigmoid(x),
    "gelu": _gelu,
    "softmax": _softmax,
}

#: Activations an LSTM may use for its cell/output (``activation``) and gates (``recurrent_activation``).
LSTM_ACTIVATIONS = ("tanh", "sigmoid", "hard_sigmoid", "hard_sigmoid_keras2", "relu", "linear")
#: Activations a Dense layer may use.
DENSE_ACTIVATIONS = ("linear", "relu", "sigmoid", "tanh", "swish", "gelu", "softmax")


def apply(name: str, x: np.ndarray) -> np.ndarray:
    """Apply the named activation; the name must be one of :data:`FUNCTIONS`."""
    return FUNCTIONS[name](x)
