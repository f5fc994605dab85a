"""edgelstm: LSTM models from the workstation to small Linux devices.

``edgelstm.load(bundle)`` opens a converted bundle for streaming on the device. Importing
this package imports numpy only; the runtime imports one interpreter when a bundle is
loaded, and never TensorFlow, Keras or onnx unless it is told to use ``tensorflow.lite``.
"""

__version__ = "0.1.0"


def load(bundle, **options):
    """Open a bundle for streaming; see :func:`edgelstm.runtime.stream.load`."""
    from .runtime.stream import load as _load

    return _load(bundle, **options)
