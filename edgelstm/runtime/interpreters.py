"""Find a TFLite interpreter and onnxruntime without importing anything heavier than needed.

Preference for TFLite: LiteRT (``ai_edge_litert``), then ``tflite_runtime`` (deprecated
upstream, numpy<2 only), then ``tensorflow.lite`` when only TensorFlow is installed.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import warnings

TFLITE_MODULES = (
    ("litert", "ai_edge_litert.interpreter"),
    ("tflite_runtime", "tflite_runtime.interpreter"),
    ("tensorflow", "tensorflow.lite.python.interpreter"),  # tf.lite.Interpreter itself is gone from the 2.21 API
)


def tflite_interpreter_module(preferred: str | None = None):
    """Return ``(name, module)`` of the first importable TFLite interpreter.

    ``preferred`` restricts the search to one of ``litert``, ``tflite_runtime``, ``tensorflow``.
    """
    errors = []
    for name, module_name in TFLITE_MODULES:
        if preferred and name != preferred:
            continue
        if name == "tensorflow":
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = importlib.import_module(module_name)
        except ImportError as exc:
            errors.append(f"{module_name}: {exc}")
            continue
        return name, module
    raise ImportError(
        "no TFLite interpreter installed (tried " + "; ".join(errors) + "); "
        'install one with: pip install "edgelstm[runtime]"'
    )


def available_backends() -> list:
    """Names of the backends that can be imported here, best first."""
    names = []
    for name, module_name in TFLITE_MODULES:
        if importlib.util.find_spec(module_name.split(".")[0]) is not None:
            names.append(name)
    if importlib.util.find_spec("onnxruntime") is not None:
        names.append("onnxruntime")
    names.append("numpy")
    return names
